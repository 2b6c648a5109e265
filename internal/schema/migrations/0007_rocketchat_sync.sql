-- 0007: state of the rocketchat_voip_sync app, which keeps the tables of 0001 in step with a
-- Rocket.Chat MongoDB and writes the edge's closes back to it (docs/sync.md).
--
-- sync_state: one row per source. phase is 'snapshot' (a full read in progress: snapshot_coll and
-- snapshot_after say where it resumes) or 'poll' (following). cursors is the poller's checkpoint
-- (JSON: per collection, the last _updatedAt and _id applied). caught_up_at is the last time, on
-- this server's clock, that a poll reached the present; reconciled_at the start, on this server's
-- clock, of the last complete pass over every user's tokens and every id set: a token revoked in
-- Rocket.Chat before that instant is gone from user_login_tokens. The gateway's freshness is the
-- older of the two.
CREATE TABLE IF NOT EXISTS sync_state (
  source         VARCHAR(64)  NOT NULL,
  phase          VARCHAR(16)  NOT NULL DEFAULT 'snapshot',
  snapshot_coll  VARCHAR(64)  NULL,
  snapshot_after VARCHAR(255) NULL,
  snapshot_started_at DATETIME(3) NULL,
  cursors        TEXT         NULL,
  caught_up_at   DATETIME(3)  NULL,
  reconciled_at  DATETIME(3)  NULL,
  last_error     VARCHAR(255) NULL,
  updated_at     DATETIME(3)  NOT NULL,
  PRIMARY KEY (source)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- sync_lease: the one gateway that runs the sync (owner) until lease_until, on this server's clock.
CREATE TABLE IF NOT EXISTS sync_lease (
  name        VARCHAR(64)  NOT NULL,
  owner       VARCHAR(128) NOT NULL,
  lease_until DATETIME(3)  NOT NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- rocketchat_writeback: the delivery state, to Rocket.Chat's MongoDB, of each room.closed event of
-- room_events, beside (and independent of) the webhook's delivery columns. state is 'pending',
-- 'done', 'conflict' (Rocket.Chat had closed the room first: its close is recorded in rc_closed_at,
-- rc_closer, and left as it is) or 'parked' (too many failed attempts, or the room is not in
-- Rocket.Chat).
CREATE TABLE IF NOT EXISTS rocketchat_writeback (
  event_id        BIGINT       NOT NULL,
  rid             VARCHAR(64)  NOT NULL,
  state           VARCHAR(16)  NOT NULL DEFAULT 'pending',
  attempts        INT          NOT NULL DEFAULT 0,
  next_attempt_at DATETIME(3)  NOT NULL,
  last_error      VARCHAR(255) NULL,
  rc_closed_at    DATETIME(3)  NULL,
  rc_closer       VARCHAR(16)  NULL,
  updated_at      DATETIME(3)  NOT NULL,
  PRIMARY KEY (event_id),
  KEY rocketchat_writeback_due (state, next_attempt_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
