-- 0004: the outbox's cost bounded by its batch, not its backlog.
-- room_events_due orders the pending events by when they are due, so that
-- finding the next ones to deliver reads about a batch's worth of entries
-- however many wait in backoff, and the earliest future attempt is the first
-- entry after now. room_events_purge remembers the highest id the retention
-- purge has deleted, so that 'outbox replay --from' can say when it asks for
-- purged events. Both statements are idempotent ("duplicate key name" counts
-- as done; IF NOT EXISTS).
CREATE INDEX room_events_due ON room_events (delivery_state, next_attempt_at, id);
CREATE TABLE IF NOT EXISTS room_events_purge (
  singleton  TINYINT     NOT NULL,
  through_id BIGINT      NOT NULL,
  purged_at  DATETIME(3) NOT NULL,
  PRIMARY KEY (singleton)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
