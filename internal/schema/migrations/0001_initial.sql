-- 0001: the tables of docs/contract.md ("The MySQL schema"), with Rocket.Chat's default permission rows.
-- Ids, tokens and hashes compare byte for byte (utf8mb4_bin), as they do in Rocket.Chat's MongoDB.
-- Every statement is idempotent so a migration that was interrupted can simply run again.

CREATE TABLE IF NOT EXISTS users (
  id       VARCHAR(64)  NOT NULL,
  username VARCHAR(255) NULL,
  name     VARCHAR(255) NULL,
  type     VARCHAR(32)  NOT NULL DEFAULT 'user',
  active   BOOLEAN      NOT NULL DEFAULT TRUE,
  PRIMARY KEY (id),
  UNIQUE KEY users_username (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS user_login_tokens (
  user_id      VARCHAR(64)  NOT NULL,
  hashed_token CHAR(44)     NOT NULL,
  type         VARCHAR(32)  NOT NULL DEFAULT 'resume',
  created_at   DATETIME(3)  NOT NULL,
  name         VARCHAR(255) NULL,
  PRIMARY KEY (user_id, hashed_token)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS user_roles (
  user_id VARCHAR(64) NOT NULL,
  role    VARCHAR(64) NOT NULL,
  PRIMARY KEY (user_id, role)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS permission_roles (
  permission VARCHAR(64) NOT NULL,
  role       VARCHAR(64) NOT NULL,
  PRIMARY KEY (permission, role)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS livechat_visitors (
  id       VARCHAR(64)  NOT NULL,
  token    VARCHAR(255) NOT NULL,
  username VARCHAR(255) NULL,
  name     VARCHAR(255) NULL,
  PRIMARY KEY (id),
  UNIQUE KEY livechat_visitors_token (token)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS rooms (
  id                   VARCHAR(64)  NOT NULL,
  t                    CHAR(1)      NOT NULL,
  name                 VARCHAR(255) NULL,
  open                 BOOLEAN      NOT NULL DEFAULT TRUE,
  ts                   DATETIME(3)  NOT NULL,
  visitor_id           VARCHAR(64)  NULL,
  visitor_token        VARCHAR(255) NULL,
  visitor_username     VARCHAR(255) NULL,
  visitor_status       VARCHAR(16)  NULL,
  served_by_id         VARCHAR(64)  NULL,
  served_by_username   VARCHAR(255) NULL,
  queue                VARCHAR(255) NULL,
  direction            VARCHAR(16)  NULL,
  call_unique_id       VARCHAR(255) NULL,
  msgs                 INT          NOT NULL DEFAULT 0,
  lm                   DATETIME(3)  NULL,
  last_message_id      VARCHAR(64)  NULL,
  tags                 JSON         NULL,
  closed_at            DATETIME(3)  NULL,
  closer               VARCHAR(16)  NULL,
  closed_by_id         VARCHAR(64)  NULL,
  closed_by_username   VARCHAR(255) NULL,
  call_duration        BIGINT       NULL,
  call_waiting_time    BIGINT       NULL,
  call_total_hold_time BIGINT       NULL,
  updated_at           DATETIME(3)  NOT NULL,
  PRIMARY KEY (id),
  KEY rooms_visitor_token_t (visitor_token, t)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS messages (
  id         VARCHAR(64)  NOT NULL,
  rid        VARCHAR(64)  NOT NULL,
  t          VARCHAR(64)  NULL,
  msg        TEXT         NOT NULL,
  groupable  BOOLEAN      NULL,
  user_id    VARCHAR(64)  NULL,
  username   VARCHAR(255) NULL,
  name       VARCHAR(255) NULL,
  ts         DATETIME(3)  NOT NULL,
  updated_at DATETIME(3)  NOT NULL,
  PRIMARY KEY (id),
  KEY messages_rid_ts (rid, ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS pbx_events (
  id                      VARCHAR(64)  NOT NULL,
  unique_id               VARCHAR(255) NOT NULL,
  event                   VARCHAR(64)  NOT NULL,
  call_unique_id          VARCHAR(255) NULL,
  call_unique_id_fallback VARCHAR(255) NULL,
  hold_time               VARCHAR(32)  NULL,
  ts                      DATETIME(3)  NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY pbx_events_unique_id (unique_id),
  KEY pbx_events_call_unique_id_event (call_unique_id, event),
  KEY pbx_events_call_unique_id_fallback_event (call_unique_id_fallback, event)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS room_events (
  id         BIGINT      NOT NULL AUTO_INCREMENT,
  rid        VARCHAR(64) NOT NULL,
  type       VARCHAR(64) NOT NULL,
  payload    JSON        NOT NULL,
  created_at DATETIME(3) NOT NULL,
  PRIMARY KEY (id),
  KEY room_events_rid (rid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT IGNORE INTO permission_roles (permission, role) VALUES
  ('inbound-voip-calls', 'livechat-agent'),
  ('api-bypass-rate-limit', 'admin'),
  ('api-bypass-rate-limit', 'bot'),
  ('api-bypass-rate-limit', 'app');
