-- The grants of an account that only the rocketchat_voip_outbox app uses,
-- for an outbox with a DSN of its own: the schema version, and the outbox's
-- two tables. It cannot read tokens, users, roles or rooms. (The handler's
-- account, docs/grants.sql, also holds these, for one DSN shared by both.)
--
-- Run it as docs/grants.sql is run, after changing 'voip_outbox'@'%' to
-- the outbox's account:
--
--   mysql -D rocketchat < docs/grants-outbox.sql
--
-- The least-privilege system test runs this very file.

GRANT SELECT ON rocketchat_voip_schema_migrations TO 'voip_outbox'@'%';
-- Read and claim pending events, mark them delivered or parked, purge the
-- delivered ones past their retention (and remember how far it purged).
GRANT SELECT, UPDATE, DELETE ON room_events TO 'voip_outbox'@'%';
GRANT SELECT, INSERT, UPDATE ON room_events_purge TO 'voip_outbox'@'%';
