#!/usr/bin/env bash
# The hostile-load test, kept out of the normal suite: $CLIENTS connections
# (default 1000) with made-up credentials, each trickling a body near
# max_body ($BODY bytes, default 1048000) over $OVER (default 15s), while an
# agent closes 40 rooms at 4/s. Reports the gateway's peak RSS, both groups'
# answers and the gateway's error lines. The gateway runs the module's
# defaults (rate_limit off, so that the agent's 40 closes are not limited);
# FLOOD_GLOBALS adds Caddy global options (e.g. the edge example's
# 'servers { timeouts { ... } }'). FLOOD_OLD=<commit> runs the same flood
# against Caddy built from that commit first.
#   CLIENTS=3000 bash scripts/flood.sh
#   CLIENTS=1000 CHUNKED=0.5 bash scripts/flood.sh   # half the bodies without Content-Length
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
ensure_go
ensure_mysql
PORT=${FLOOD_PORT:-18600}
CLIENTS=${CLIENTS:-1000}
say "building"
go build -o "$BIN_DIR/caddy" ./cmd/caddy
go build -o "$BIN_DIR/bench-upstream" ./bench/cmd/upstream
go build -o "$BIN_DIR/bench-seed" ./bench/cmd/seed
go build -o "$BIN_DIR/bench-flood" ./bench/cmd/flood
builds=("$BIN_DIR/caddy")
if [ -n "${FLOOD_OLD:-}" ]; then
  say "building Caddy with the module as of $FLOOD_OLD"
  rm -rf "$TMP_DIR/old-src" && mkdir -p "$TMP_DIR/old-src"
  git archive "$FLOOD_OLD" | tar -x -C "$TMP_DIR/old-src"
  (cd "$TMP_DIR/old-src" && go build -o "$BIN_DIR/caddy-old" ./cmd/caddy)
  builds=("$BIN_DIR/caddy-old" "${builds[@]}")
fi
dbtool createdb "$ROCKETCHAT_VOIP_TEST_DSN" rocketchat_voip_flood
DSN=$(dbtool withdb "$ROCKETCHAT_VOIP_TEST_DSN" rocketchat_voip_flood)
"${builds[0]}" rocketchat-voip migrate --dsn "$DSN" >&2
"$BIN_DIR/bench-seed" -dsn "$DSN" -rooms 2000 -call-rooms 0 >&2

# Both ends of every connection need a descriptor.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((CLIENTS + 1000)) ] || die "ulimit -n is $(ulimit -n); $CLIENTS clients need more (raise the hard limit)"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$BIN_DIR/bench-upstream" -listen "127.0.0.1:$((PORT + 1))" &
pids+=($!)
dir="$TMP_DIR/flood" && mkdir -p "$dir"
first=0
for bin in "${builds[@]}"; do
  "$bin" rocketchat-voip migrate --dsn "$DSN" >&2
  "$BIN_DIR/bench-seed" -dsn "$DSN" -reopen >&2
  cat >"$dir/Caddyfile" <<CADDY
{
	admin off
	auto_https off
	persist_config off
	log {
		output file $dir/caddy.log
		format json
		level INFO
	}
	${FLOOD_GLOBALS:-}
}
http://127.0.0.1:$PORT {
	rocketchat_voip {
		dsn "$DSN"
		rate_limit off
	}
	reverse_proxy 127.0.0.1:$((PORT + 1))
}
CADDY
  : >"$dir/caddy.log"
  "$bin" run --config "$dir/Caddyfile" --adapter caddyfile 2>>"$dir/caddy.stderr" &
  caddy_pid=$!
  pids+=($caddy_pid)
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  say "flood against $(basename "$bin") (pid $caddy_pid)"
  "$BIN_DIR/bench-flood" -addr "127.0.0.1:$PORT" -clients "$CLIENTS" -body "${BODY:-1048000}" -over "${OVER:-15s}" \
    -chunked "${CHUNKED:-0}" -first "$first" -pid "$caddy_pid" -log "$dir/caddy.log" ${FLOOD_ARGS:-}
  kill "$caddy_pid" 2>/dev/null || true; wait "$caddy_pid" 2>/dev/null || true
  first=$((first + 100))
done
