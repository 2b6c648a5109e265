-- Delivery state of the room_events outbox, kept by the rocketchat_voip_outbox
-- app: pending → delivered, or parked after too many failed attempts. A claim
-- (claimed_by, claim_until) is a lease: a gateway that dies mid-batch loses it
-- when claim_until passes. Each statement is idempotent (the migration runner
-- takes "duplicate column" and "duplicate key name" as already done), so the
-- file can run twice and on several nodes at once.
ALTER TABLE room_events ADD COLUMN delivery_state VARCHAR(16) NOT NULL DEFAULT 'pending';
ALTER TABLE room_events ADD COLUMN attempts INT NOT NULL DEFAULT 0;
ALTER TABLE room_events ADD COLUMN next_attempt_at DATETIME(3) NULL;
ALTER TABLE room_events ADD COLUMN claimed_by VARCHAR(64) NULL;
ALTER TABLE room_events ADD COLUMN claim_until DATETIME(3) NULL;
ALTER TABLE room_events ADD COLUMN delivered_at DATETIME(3) NULL;
ALTER TABLE room_events ADD COLUMN parked_at DATETIME(3) NULL;
ALTER TABLE room_events ADD COLUMN last_error VARCHAR(255) NULL;
CREATE INDEX room_events_delivery ON room_events (delivery_state, id);
CREATE INDEX room_events_rid_delivery ON room_events (rid, delivery_state, id);
CREATE INDEX room_events_claimed_by ON room_events (claimed_by);
