-- 0005: the close's three writes in one stored procedure, so that a close is
-- its read and one CALL (internal/store, "the procedure path").
-- engines: MariaDB MySQL
--
-- TiDB has no stored procedures, and Vitess refuses a procedure that changes
-- the transaction state; there this migration is recorded and runs nothing,
-- and the gateway closes rooms with the portable transaction.
--
-- The procedure holds no rule. Go computes every value (checks, PBX metrics,
-- ids, bodies) and passes it in; the three statements are internal/store's
-- closeRoomSQL, insertMessageSQL and insertEventSQL with each ? named after
-- what it is (TestProcedureRunsTheStoreStatements holds them equal, and
-- TestWritePathsWriteTheSameRows the rows they write).
--
-- Its outcome: a room that another close won first (the UPDATE matches no
-- row) is SIGNAL 45000 'room-closed'; any error rolls the whole transaction
-- back before it reaches the client (a lock wait timeout alone would roll
-- back only its statement), so a deadlock or certification failure leaves
-- nothing behind and the gateway runs the CALL again.
--
-- p_time_left_us is what was left of the gateway's db_timeout when it sent
-- the CALL. A gateway that gives up closes its connection, which the server
-- does not notice while the statement waits for a row lock; without the
-- check before COMMIT the close would land after the client was told 503.
-- With it, a CALL that outlasts its time rolls back (SIGNAL 'timed-out'),
-- and only one answered as late as the COMMIT itself is of unknown outcome,
-- as on the portable path. The budget is counted on the server's own clock
-- (SYSDATE, the time now, not the statement's start), so clocks need not
-- agree; NULL means no bound.
--
-- SQL SECURITY INVOKER: it runs with the gateway user's privileges (the
-- UPDATE and INSERTs it makes anyway), plus EXECUTE on the procedure; no
-- dependency on the user that created it. Strings are declared wider than
-- their columns and utf8mb4_bin like them, so comparisons use the indexes
-- whatever the database's default collation.
-- An "already exists" error counts as done, so the file runs twice.
--
-- A procedure runs with the sql_mode it was created under, not the
-- caller's; the SET makes that the module's own session mode
-- (dbconnect.SessionSQLMode), so that a value too long for its column is an
-- error here as on the portable path, however the file is applied.

SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DELIMITER $$
CREATE PROCEDURE rocketchat_voip_close_room(
  IN p_rid                  VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_now                  DATETIME(6),
  IN p_closed_by_id         VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_closed_by_username   VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_call_duration        BIGINT,
  IN p_call_waiting_time    BIGINT,
  IN p_call_total_hold_time BIGINT,
  IN p_message_id           VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_tags                 LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_message_type         VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_msg                  LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_agent_id             VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_agent_username       VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_agent_name           VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_payload              LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_time_left_us         BIGINT
)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
  DECLARE v_deadline DATETIME(6) DEFAULT SYSDATE(6) + INTERVAL p_time_left_us MICROSECOND;
  DECLARE EXIT HANDLER FOR SQLEXCEPTION
  BEGIN
    ROLLBACK;
    RESIGNAL;
  END;

  START TRANSACTION;

  UPDATE rooms SET open = FALSE, closed_at = p_now, closer = 'visitor',
  closed_by_id = p_closed_by_id, closed_by_username = p_closed_by_username, call_duration = p_call_duration, call_waiting_time = p_call_waiting_time,
  call_total_hold_time = p_call_total_hold_time, visitor_status = 'offline', updated_at = p_now,
  msgs = msgs + 1, lm = p_now, last_message_id = p_message_id, tags = COALESCE(p_tags, tags)
WHERE id = p_rid AND t = 'v' AND open = TRUE;

  IF ROW_COUNT() = 0 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'room-closed';
  END IF;

  INSERT INTO messages (id, rid, t, msg, groupable, user_id, username, name, ts, updated_at)
VALUES (p_message_id, p_rid, p_message_type, p_msg, FALSE, p_agent_id, p_agent_username, p_agent_name, p_now, p_now);

  INSERT INTO room_events (rid, type, payload, created_at) VALUES (p_rid, 'room.closed', p_payload, p_now);

  IF SYSDATE(6) > v_deadline THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'timed-out';
  END IF;

  COMMIT;
END$$
DELIMITER ;
