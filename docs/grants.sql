-- The gateway's grants: least privilege for the Caddy process that runs the
-- rocketchat_voip handler and the rocketchat_voip_outbox app.
--
-- Run this file with the gateway's database as the default one, after
-- 'caddy rocketchat-voip migrate' (the procedure must exist to be granted),
-- as a user that may grant (root, or the migrator if it holds GRANT OPTION):
--
--   mysql -D rocketchat < docs/grants.sql
--
-- Change 'voip_gateway'@'%' to your gateway's account first. The tests
-- (scripts/setup-guide.sh, the least-privilege system test) run this very
-- file, with that account name replaced by theirs.
--
-- TiDB has no stored procedures: leave out the EXECUTE line there.

-- What the handler reads: the schema version, the agent's login token,
-- user and roles, the visitor, the room and the call's PBX events.
GRANT SELECT ON rocketchat_voip_schema_migrations TO 'voip_gateway'@'%';
GRANT SELECT ON users TO 'voip_gateway'@'%';
GRANT SELECT ON user_login_tokens TO 'voip_gateway'@'%';
GRANT SELECT ON user_roles TO 'voip_gateway'@'%';
GRANT SELECT ON permission_roles TO 'voip_gateway'@'%';
GRANT SELECT ON livechat_visitors TO 'voip_gateway'@'%';
GRANT SELECT ON pbx_events TO 'voip_gateway'@'%';
GRANT SELECT ON sync_state TO 'voip_gateway'@'%';

-- What a close writes: the room closed, the wrap-up message, the outbox
-- event; on MariaDB and MySQL in one CALL of the close's procedure, which
-- runs with the caller's privileges (SQL SECURITY INVOKER).
GRANT SELECT, UPDATE ON rooms TO 'voip_gateway'@'%';
GRANT INSERT ON messages TO 'voip_gateway'@'%';
GRANT EXECUTE ON PROCEDURE rocketchat_voip_close_room TO 'voip_gateway'@'%';
-- A close by credentials that closed a room recently, in one CALL
-- (migration 0006); without it those closes take two round trips.
GRANT EXECUTE ON PROCEDURE rocketchat_voip_fast_close TO 'voip_gateway'@'%';

-- room_events: the handler inserts; the outbox app reads, claims, marks
-- delivered or parked (UPDATE) and purges delivered events past their
-- retention (DELETE), remembering how far it purged in room_events_purge.
GRANT SELECT, INSERT, UPDATE, DELETE ON room_events TO 'voip_gateway'@'%';
GRANT SELECT, INSERT, UPDATE ON room_events_purge TO 'voip_gateway'@'%';
