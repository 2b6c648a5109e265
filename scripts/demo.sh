#!/usr/bin/env bash
# The main job, end to end on this machine: build Caddy with the module, find
# or start MariaDB/MySQL, migrate, seed demo data, start Caddy in front of a
# stand-in upstream, and close a voip room with curl, printing each response,
# the rows, and the outbox's delivery of the close to a webhook.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
ensure_go
command -v curl >/dev/null 2>&1 || die "curl is needed for the demo (apt-get install curl)"
ensure_mysql

LISTEN=${DEMO_LISTEN:-127.0.0.1:18088}
UPSTREAM=${DEMO_UPSTREAM:-127.0.0.1:18089}
DB_NAME=${DEMO_DB:-rocketchat_voip_demo}

say "building Caddy with the module (go build ./cmd/caddy; xcaddy gives the same binary)"
go build -o "$BIN_DIR/caddy" ./cmd/caddy
go build -o "$BIN_DIR/demo-upstream" ./examples/demo/upstream

dbtool createdb "$ROCKETCHAT_VOIP_TEST_DSN" "$DB_NAME"
export ROCKETCHAT_VOIP_DSN
ROCKETCHAT_VOIP_DSN=$(dbtool withdb "$ROCKETCHAT_VOIP_TEST_DSN" "$DB_NAME")
say "migrating database $DB_NAME"
"$BIN_DIR/caddy" rocketchat-voip migrate
say "seeding demo data (examples/demo/seed.sql)"
dbtool exec "$ROCKETCHAT_VOIP_DSN" examples/demo/seed.sql
"$BIN_DIR/caddy" rocketchat-voip check

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$BIN_DIR/demo-upstream" -listen "$UPSTREAM" 2>"$TMP_DIR/demo-upstream.log" &
pids+=($!)
DEMO_LISTEN=$LISTEN DEMO_UPSTREAM=$UPSTREAM "$BIN_DIR/caddy" run --config examples/demo/Caddyfile --adapter caddyfile \
  2>"$TMP_DIR/demo-caddy.log" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://$LISTEN/" && break; sleep 0.1; done
curl -s -o /dev/null "http://$LISTEN/" || { cat "$TMP_DIR/demo-caddy.log" >&2; die "Caddy did not start"; }

URL="http://$LISTEN/api/v1/voip/room.close"
show() {
  local title=$1; shift
  printf '\n--- %s\n$ curl %s\n' "$title" "$*"
  curl -sS -i "$@" | tr -d '\r' | grep -Ev '^(Date|Via|Server):'
  echo
}
show "pass-through: any other request reaches the upstream" "http://$LISTEN/api/info?x=1"
show "401: no credentials" -X POST "$URL" -H 'Content-Type: application/json' -d '{"rid":"demo-room","token":"demo-visitor-token"}'
show "400: body fails validation" -X POST "$URL" -H 'X-User-Id: demo-agent' -H 'X-Auth-Token: demo-agent-token' \
  -H 'Content-Type: application/json' -d '{"rid":"demo-room"}'
show "403: user without inbound-voip-calls" -X POST "$URL" -H 'X-User-Id: demo-viewer' -H 'X-Auth-Token: demo-viewer-token' \
  -H 'Content-Type: application/json' -d '{"rid":"demo-room","token":"demo-visitor-token"}'
show "400: unknown visitor token" -X POST "$URL" -H 'X-User-Id: demo-agent' -H 'X-Auth-Token: demo-agent-token' \
  -H 'Content-Type: application/json' -d '{"rid":"demo-room","token":"nobody"}'
show "200: the agent closes the room with a wrap-up comment and tags" -X POST "$URL" -H 'X-User-Id: demo-agent' \
  -H 'X-Auth-Token: demo-agent-token' -H 'Content-Type: application/json' \
  -d '{"rid":"demo-room","token":"demo-visitor-token","options":{"comment":"Customer satisfied","tags":["billing"]}}'
show "400: closing it again" -X POST "$URL" -H 'X-User-Id: demo-agent' -H 'X-Auth-Token: demo-agent-token' \
  -H 'Content-Type: application/json' -d '{"rid":"demo-room","token":"demo-visitor-token"}'

printf '\n--- the room, its wrap-up message and the outbox row in MySQL\n'
dbtool query "$ROCKETCHAT_VOIP_DSN" "SELECT id, open, closed_at, closer, closed_by_id, closed_by_username, call_duration,
  call_waiting_time, call_total_hold_time, visitor_status, msgs, last_message_id, tags FROM rooms WHERE id = 'demo-room'"
dbtool query "$ROCKETCHAT_VOIP_DSN" "SELECT id, t, msg, user_id, username, ts FROM messages WHERE rid = 'demo-room'"
dbtool query "$ROCKETCHAT_VOIP_DSN" "SELECT id, type, payload FROM room_events WHERE rid = 'demo-room'"

printf '\n--- the outbox app delivered the close to the webhook (the stand-in logs what it received)\n'
for _ in $(seq 50); do
  [ "$(dbtool query "$ROCKETCHAT_VOIP_DSN" "SELECT COUNT(*) FROM room_events WHERE rid = 'demo-room' AND delivery_state = 'pending'" | tr -d ' ')" = 0 ] && break
  sleep 0.1
done
dbtool query "$ROCKETCHAT_VOIP_DSN" "SELECT id, delivery_state, attempts, delivered_at FROM room_events WHERE rid = 'demo-room'"
grep 'webhook:' "$TMP_DIR/demo-upstream.log" | tail -1
"$BIN_DIR/caddy" rocketchat-voip outbox status

say "demo done; Caddy's log is in $TMP_DIR/demo-caddy.log"
