#!/usr/bin/env bash
# Load benchmarks (not part of the test suite): Caddy with the module vs
# plain Caddy, and vs the same SQL run directly, on loopback with wrk.
#   bash bench/run.sh                 # everything, 10s runs, 2 A/B rounds
#   BENCH_ARGS='-d 5s -only a,e' bash bench/run.sh
#   BENCH_OLD=<commit> bash bench/run.sh   # also scenarios o and r: this build vs Caddy built from <commit>
#                                          (r: with the database a network hop away)
#   BENCH_DB=<name>                        # the bench database (default rocketchat_voip_bench)
#   BENCH_ARGS='-ports 18300 -pick median' # other loopback ports; report the median round
#   BENCH_ARGS='-only r -db-delay 5ms -remote-conns 1,16 -remote-db-concurrency 0'  # closes with the database 5 ms away each way (-db-delay 0: local, no proxy)
# Prints a Markdown table (see the README's performance section).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT_DIR"
ensure_go
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing wrk"; apt-get update -qq >&2; apt-get install -y -qq wrk >&2
  else
    die "wrk is needed (apt-get install wrk)"
  fi
fi
ensure_mysql
say "building"
go build -o "$BIN_DIR/caddy" ./cmd/caddy
go build -o "$BIN_DIR/bench-upstream" ./bench/cmd/upstream
go build -o "$BIN_DIR/bench-seed" ./bench/cmd/seed
go build -o "$BIN_DIR/bench-directsql" ./bench/cmd/directsql
go build -o "$BIN_DIR/bench-run" ./bench/cmd/bench
go build -o "$BIN_DIR/bench-delayproxy" ./bench/cmd/delayproxy
OLD_ARGS=()
if [ -n "${BENCH_OLD:-}" ]; then
  say "building Caddy with the module as of $BENCH_OLD"
  rm -rf "$TMP_DIR/old-src" && mkdir -p "$TMP_DIR/old-src"
  git archive "$BENCH_OLD" | tar -x -C "$TMP_DIR/old-src"
  (cd "$TMP_DIR/old-src" && go build -o "$BIN_DIR/caddy-old" ./cmd/caddy)
  OLD_ARGS=(-old "$BIN_DIR/caddy-old")
fi
BENCH_DB=${BENCH_DB:-rocketchat_voip_bench}
dbtool createdb "$ROCKETCHAT_VOIP_TEST_DSN" "$BENCH_DB"
DSN=$(dbtool withdb "$ROCKETCHAT_VOIP_TEST_DSN" "$BENCH_DB")
"$BIN_DIR/caddy" rocketchat-voip migrate --dsn "$DSN" >&2
say "running (each scenario: alternating rounds, the best round of each side is reported)"
"$BIN_DIR/bench-run" -bin "$BIN_DIR" -dsn "$DSN" "${OLD_ARGS[@]}" ${BENCH_ARGS:-}
