#!/usr/bin/env bash
# TiDB for the tests: its server built from its Go module at one pinned
# commit, cached, and run on its embedded storage (unistore: one process,
# TiDB's own SQL layer, optimizer and pessimistic transactions).
#
#   bash scripts/tidb-server.sh build            # prints the binary's path (about 10 min cold on 2 cores)
#   bash scripts/tidb-server.sh start PORT       # 127.0.0.1:PORT, root without password; data under the cache
#   bash scripts/tidb-server.sh stop PORT
#
# ROCKETCHAT_VOIP_TIDB_CACHE moves the cache (default $HOME/.cache/tidb).
set -euo pipefail

# github.com/pingcap/tidb and its parser module, at the same commit (2025-11-26).
TIDB_VERSION=v1.1.0-beta.0.20251126154744-e4e814fdc0af
PARSER_VERSION=v0.0.0-20251126154744-e4e814fdc0af
CACHE=${ROCKETCHAT_VOIP_TIDB_CACHE:-${TIDB_CACHE:-$HOME/.cache/tidb}}
BIN=$CACHE/tidb-server-$PARSER_VERSION

tsay() { printf '==> %s\n' "$*" >&2; }
tdie() { printf 'error: %s\n' "$*" >&2; exit 1; }

moddir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }

build() {
  [ -x "$BIN" ] && return 0
  command -v go >/dev/null || tdie "building TiDB needs Go on PATH"
  mkdir -p "$CACHE"
  local work src parser
  work=$(mktemp -d)
  # A RETURN trap stays set after the function returns: clear it as it
  # runs, or it would fire again when the caller returns, with work unset.
  trap 'rm -rf "$work"; trap - RETURN' RETURN
  src=$(moddir "github.com/pingcap/tidb@$TIDB_VERSION") && [ -n "$src" ] || tdie "go mod download of TiDB failed"
  parser=$(moddir "github.com/pingcap/tidb/pkg/parser@$PARSER_VERSION") && [ -n "$parser" ] || tdie "go mod download of TiDB's parser failed"
  # TiDB's go.mod replaces its parser with ./pkg/parser, which its module
  # zip leaves out, and `go install pkg@version` refuses replace directives:
  # build in a writable copy with the parser laid in.
  cp -r "$src" "$work/src" && chmod -R u+w "$work/src"
  cp -r "$parser" "$work/src/pkg/parser" && chmod -R u+w "$work/src/pkg/parser"
  tsay "building tidb-server into $CACHE (once; about 10 minutes on 2 cores)"
  (cd "$work/src" && go build -o "$BIN.partial" ./cmd/tidb-server) >&2 || tdie "building tidb-server failed"
  mv "$BIN.partial" "$BIN"
}

start() {
  local port=$1 dir=$CACHE/data-$1
  build
  mkdir -p "$dir"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then return 0; fi
  # The status port is the SQL port + 10000 (4100 -> 14100).
  nohup "$BIN" -store unistore -path "$dir/store" -host 127.0.0.1 -P "$port" -status $((port + 10000)) \
    -log-file "$dir/tidb.log" >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  tsay "TiDB starting on 127.0.0.1:$port (log: $dir/tidb.log; stop it with: bash scripts/tidb-server.sh stop $port)"
}

stop() {
  local dir=$CACHE/data-$1
  [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  build) build; echo "$BIN" ;;
  start) [ $# -ge 2 ] || tdie "usage: $0 start PORT"; start "$2" ;;
  stop) [ $# -ge 2 ] || tdie "usage: $0 stop PORT"; stop "$2" ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
