-- Demo data: an agent who may close voip rooms, one who may not, a visitor
-- and an open voip room with PBX events. Re-running it resets the room.
-- Tokens (never store these in real deployments; they are hashed below):
--   demo-agent   X-Auth-Token demo-agent-token
--   demo-viewer  X-Auth-Token demo-viewer-token
INSERT IGNORE INTO users (id, username, name) VALUES
  ('demo-agent', 'agent.smith', 'Agent Smith'),
  ('demo-viewer', 'viewer', 'Just Viewing');
-- base64(sha256(token)): 'echo -n TOKEN | caddy rocketchat-voip hash-token'
REPLACE INTO user_login_tokens (user_id, hashed_token, type, created_at) VALUES
  ('demo-agent', 'uD4+GR8qz+LDwn8gecXBPqhAnpq78xtnHUIdgLvIR8k=', 'resume', UTC_TIMESTAMP(3)),
  ('demo-viewer', '2yxGCj3YEqJ7Kn9g0TIDIsJ6w7KLO5CxHAXsx7S8yFY=', 'resume', UTC_TIMESTAMP(3));
INSERT IGNORE INTO user_roles (user_id, role) VALUES
  ('demo-agent', 'user'), ('demo-agent', 'livechat-agent'), ('demo-viewer', 'user');
INSERT IGNORE INTO livechat_visitors (id, token, username, name) VALUES
  ('demo-visitor', 'demo-visitor-token', 'guest-1', 'A Caller');
DELETE FROM messages WHERE rid = 'demo-room';
DELETE FROM room_events WHERE rid = 'demo-room';
DELETE FROM pbx_events WHERE call_unique_id = 'demo-call';
REPLACE INTO rooms (id, t, name, open, ts, visitor_id, visitor_token, visitor_username, visitor_status,
  served_by_id, served_by_username, queue, direction, call_unique_id, msgs, updated_at)
VALUES ('demo-room', 'v', 'guest-1', TRUE, UTC_TIMESTAMP(3) - INTERVAL 5 MINUTE, 'demo-visitor', 'demo-visitor-token',
  'guest-1', 'online', 'demo-agent', 'agent.smith', '80000', 'inbound', 'demo-call', 0, UTC_TIMESTAMP(3));
INSERT INTO pbx_events (id, unique_id, event, call_unique_id, hold_time, ts) VALUES
  ('demo-ev-1', 'demo-ev-1', 'AgentConnect', 'demo-call', '7', UTC_TIMESTAMP(3) - INTERVAL 290 SECOND),
  ('demo-ev-2', 'demo-ev-2', 'Hold', 'demo-call', NULL, UTC_TIMESTAMP(3) - INTERVAL 120 SECOND),
  ('demo-ev-3', 'demo-ev-3', 'Unhold', 'demo-call', NULL, UTC_TIMESTAMP(3) - INTERVAL 90 SECOND);
