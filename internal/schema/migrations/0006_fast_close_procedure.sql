-- 0006: a close in one round trip for credentials that closed a room on
-- this gateway recently (internal/store, "the fast close").
-- engines: MariaDB MySQL
--
-- The procedure closes the room only when every condition of a success
-- holds, as the gateway expects them from the last close by the same
-- credentials, and otherwise changes nothing and SIGNALs 45000 'not-fast':
-- the gateway then takes its ordinary path (a read, then 0005's procedure),
-- which decides the exact answer in Go. No error is decided here; the
-- conditions are today's success, read as the ordinary path reads it:
--   - the login token of p_user_id hashed as p_hashed_token, byte for byte
--     (store.Verify), not expired: a personal access token, or created
--     after p_created_after (NULL: login_expiration 0);
--   - the user's username and name are the ones the gateway expects (they
--     go into the message and the outbox payload), '' standing for NULL;
--   - some role of the user grants inbound-voip-calls, and, unless
--     p_bypass_rate_limit is NULL (no rate limit, so it changes nothing),
--     api-bypass-rate-limit is granted exactly when p_bypass_rate_limit;
--   - the visitor with p_visitor_token and its open voip room p_rid, byte
--     for byte (store's decodeRoom);
--   - the values the close derives from the room can be written here as
--     Go writes them: the visitor's id and username need no escaping in
--     JSON; the room's and PBX events' times are within 200 years of
--     p_now (Go's durations end at 292); the first AgentConnect's
--     hold_time is NULL or plain decimal seconds with at most 3 decimals,
--     which Go's float parsing turns into the same milliseconds.
-- What the close writes is 0005's three statements with the room's values
-- copied or derived as the store derives them (callMetrics: the call's
-- waiting time from the first AgentConnect in (ts, id) order, its hold
-- time from Hold/Unhold paired by position, a trailing Hold until now);
-- the outbox payload is Go's JSON with the visitor and the duration put
-- in its place. TestFastCloseWritesTheSameRows holds both paths' rows
-- equal.
--
-- As in 0005: any error rolls the whole transaction back before it reaches
-- the client; p_time_left_us (NULL: no bound) is what was left of
-- db_timeout, and a CALL that outlasts it rolls back (SIGNAL 'timed-out');
-- SQL SECURITY INVOKER; strings wider than their columns and utf8mb4_bin
-- like them; an "already exists" error counts as done; and the procedure
-- is created under the module's session sql_mode
-- (dbconnect.SessionSQLMode), which it keeps whoever calls it.

SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DELIMITER $$
CREATE PROCEDURE rocketchat_voip_fast_close(
  IN p_user_id            VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_hashed_token       VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_created_after      DATETIME(6),
  IN p_agent_username     VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_agent_name         VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_bypass_rate_limit  BOOLEAN,
  IN p_rid                VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_visitor_token      VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_now                DATETIME(6),
  IN p_message_id         VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_tags               LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_message_type       VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_msg                LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_payload_head       LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_payload_middle     LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_payload_tail       LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_time_left_us       BIGINT
)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
  DECLARE v_deadline DATETIME(6) DEFAULT SYSDATE(6) + INTERVAL p_time_left_us MICROSECOND;
  DECLARE v_found INT DEFAULT 0;
  DECLARE v_visitor_id VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
  DECLARE v_visitor_username VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
  DECLARE v_call VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
  DECLARE v_ts DATETIME(6);
  DECLARE v_duration BIGINT;
  DECLARE v_waiting BIGINT DEFAULT NULL;
  DECLARE v_hold BIGINT DEFAULT 0;
  DECLARE v_connect_hold VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
  DECLARE v_has_connect INT DEFAULT 0;
  DECLARE v_events INT DEFAULT 0;
  DECLARE v_first_ts, v_last_ts, v_hold_first, v_hold_last DATETIME(6);
  DECLARE EXIT HANDLER FOR SQLEXCEPTION
  BEGIN
    ROLLBACK;
    RESIGNAL;
  END;

  START TRANSACTION;

  IF NOT EXISTS (SELECT 1 FROM user_login_tokens t LEFT JOIN users u ON u.id = t.user_id
    WHERE t.user_id = p_user_id AND t.hashed_token = p_hashed_token
      AND BINARY t.user_id = BINARY p_user_id AND BINARY t.hashed_token = BINARY p_hashed_token
      AND (BINARY t.type = BINARY 'personalAccessToken' OR p_created_after IS NULL OR t.created_at > p_created_after)
      AND BINARY COALESCE(u.username, '') = BINARY p_agent_username AND BINARY COALESCE(u.name, '') = BINARY p_agent_name
      AND EXISTS (SELECT 1 FROM user_roles ur JOIN permission_roles pr ON pr.role = ur.role
          WHERE ur.user_id = t.user_id AND pr.permission = 'inbound-voip-calls')
      AND (p_bypass_rate_limit IS NULL OR p_bypass_rate_limit = EXISTS (SELECT 1 FROM user_roles ur JOIN permission_roles pr ON pr.role = ur.role
          WHERE ur.user_id = t.user_id AND pr.permission = 'api-bypass-rate-limit'))) THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'not-fast';
  END IF;

  -- A plain read, as the ordinary path's: a lock here would take the
  -- visitor's row too, and serialise every close of that visitor's rooms.
  -- A close that wins between this read and the UPDATE leaves the room
  -- not open, and the UPDATE matches nothing.
  SELECT COUNT(*), MAX(v.id), MAX(v.username), MAX(r.ts), MAX(r.call_unique_id)
    INTO v_found, v_visitor_id, v_visitor_username, v_ts, v_call
  FROM livechat_visitors v JOIN rooms r ON r.id = p_rid AND r.t = 'v' AND r.visitor_token = v.token
  WHERE v.token = p_visitor_token AND BINARY v.token = BINARY p_visitor_token AND BINARY r.id = BINARY p_rid
    AND r.open = TRUE;

  IF v_found <> 1 OR LENGTH(p_rid) = 0
     OR v_visitor_id REGEXP '[^-0-9A-Za-z_.@+:]'
     OR COALESCE(v_visitor_username REGEXP '[^-0-9A-Za-z_.@+:]', FALSE)
     OR NOT COALESCE(v_ts BETWEEN p_now - INTERVAL 200 YEAR AND p_now + INTERVAL 200 YEAR, FALSE) THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'not-fast';
  END IF;

  IF LENGTH(v_call) > 0 THEN
    -- Most calls have at most one AgentConnect and one Hold/Unhold pair:
    -- for them one plain aggregate over the call's index gives everything
    -- (the pair's hold is its last time less its first, a lone Hold lasts
    -- until now). Only a call with more is numbered by window functions,
    -- which cost a temporary table and a sort per close.
    SELECT COUNT(*), MIN(p.ts), MAX(p.ts),
      COALESCE(SUM(BINARY p.event = BINARY 'AgentConnect'), 0),
      MAX(CASE WHEN BINARY p.event = BINARY 'AgentConnect' THEN p.hold_time END),
      MIN(CASE WHEN BINARY p.event <> BINARY 'AgentConnect' THEN p.ts END),
      MAX(CASE WHEN BINARY p.event <> BINARY 'AgentConnect' THEN p.ts END)
      INTO v_events, v_first_ts, v_last_ts, v_has_connect, v_connect_hold, v_hold_first, v_hold_last
    FROM pbx_events p
    WHERE (p.call_unique_id = v_call OR p.call_unique_id_fallback = v_call)
      AND p.event IN ('AgentConnect', 'Hold', 'Unhold');
    IF v_has_connect <= 1 AND v_events - v_has_connect <= 2 THEN
      SET v_hold = CASE v_events - v_has_connect
        WHEN 0 THEN 0
        WHEN 1 THEN TIMESTAMPDIFF(MICROSECOND, v_hold_first, p_now) DIV 1000
        ELSE TIMESTAMPDIFF(MICROSECOND, v_hold_first, v_hold_last) DIV 1000 END;
    ELSE
    -- One pass over the call's events: AgentConnect (byte for byte) and
    -- the others (Hold, Unhold, and whatever the collation took for them)
    -- each numbered in (ts, id) order; the first AgentConnect's hold time,
    -- the holds paired by position, and the range of every event's time.
    SELECT COUNT(*), MIN(e.ts), MAX(e.ts),
      MAX(CASE WHEN e.is_connect AND e.n = 1 THEN 1 ELSE 0 END),
      MAX(CASE WHEN e.is_connect AND e.n = 1 THEN e.hold_time END),
      COALESCE(SUM(CASE WHEN NOT e.is_connect AND e.n % 2 = 1
        THEN TIMESTAMPDIFF(MICROSECOND, e.ts, COALESCE(e.next_ts, p_now)) DIV 1000 END), 0)
      INTO v_events, v_first_ts, v_last_ts, v_has_connect, v_connect_hold, v_hold
    FROM (SELECT p.ts, p.hold_time, BINARY p.event = BINARY 'AgentConnect' AS is_connect,
            ROW_NUMBER() OVER w AS n, LEAD(p.ts) OVER w AS next_ts
          FROM pbx_events p
          WHERE (p.call_unique_id = v_call OR p.call_unique_id_fallback = v_call)
            AND p.event IN ('AgentConnect', 'Hold', 'Unhold')
          WINDOW w AS (PARTITION BY BINARY p.event = BINARY 'AgentConnect' ORDER BY p.ts, BINARY p.id)) e;
    END IF;
    IF v_events > 0 AND NOT (v_first_ts >= p_now - INTERVAL 200 YEAR AND v_last_ts <= p_now + INTERVAL 200 YEAR) THEN
      SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'not-fast';
    END IF;
    IF v_has_connect = 1 AND v_connect_hold IS NOT NULL THEN
      IF v_connect_hold REGEXP '[^0-9.]' OR NOT v_connect_hold REGEXP '^[0-9]{1,9}([.][0-9]{1,3})?$' THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'not-fast';
      END IF;
      SET v_waiting = CAST(v_connect_hold AS DECIMAL(13,3)) * 1000;
    END IF;
  END IF;

  SET v_duration = TIMESTAMPDIFF(MICROSECOND, v_ts, p_now) DIV 1000;

  UPDATE rooms SET open = FALSE, closed_at = p_now, closer = 'visitor',
  closed_by_id = v_visitor_id, closed_by_username = v_visitor_username, call_duration = v_duration, call_waiting_time = v_waiting,
  call_total_hold_time = v_hold, visitor_status = 'offline', updated_at = p_now,
  msgs = msgs + 1, lm = p_now, last_message_id = p_message_id, tags = COALESCE(p_tags, tags)
WHERE id = p_rid AND t = 'v' AND open = TRUE;

  IF ROW_COUNT() <> 1 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'not-fast';
  END IF;

  INSERT INTO messages (id, rid, t, msg, groupable, user_id, username, name, ts, updated_at)
VALUES (p_message_id, p_rid, p_message_type, p_msg, FALSE, p_user_id, NULLIF(p_agent_username, BINARY ''), NULLIF(p_agent_name, BINARY ''), p_now, p_now);

  INSERT INTO room_events (rid, type, payload, created_at) VALUES (p_rid, 'room.closed',
    CONCAT(p_payload_head, v_visitor_id,
      IF(LENGTH(v_visitor_username) > 0, CONCAT('","username":"', v_visitor_username), ''),
      p_payload_middle, v_duration, p_payload_tail),
    p_now);

  IF SYSDATE(6) > v_deadline THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'timed-out';
  END IF;

  COMMIT;
END$$
DELIMITER ;
