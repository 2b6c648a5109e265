#!/usr/bin/env bash
# FerretDB v1.24.2, a MongoDB wire-protocol server in Go (used here on its SQLite backend), for the
# sync's tests: builds its cmd/ferretdb from the Go module (downloaded through the Go module proxy),
# keeps the binary in a cache directory and prints its path. About a minute the first time on two
# cores, then instant. FerretDB is never a dependency of the Caddy module: it is built on its own.
#
#   bin=$(bash scripts/ferretdb-server.sh)
#   "$bin" --handler=sqlite --sqlite-url=file:/tmp/ferret-data/ --listen-addr=127.0.0.1:27117 \
#     --telemetry=disable --log-level=error
#
# The sync's tests run this script themselves, or use ROCKETCHAT_VOIP_FERRETDB (a binary's path).
# FERRETDB_CACHE changes where the binary is kept (default: $HOME/.cache/ferretdb).
#
# What FerretDB is not: no change streams ($changeStream is refused), no transactions, and $pull
# removes only elements equal to the value given, never ones matching a condition.
set -euo pipefail
V=v1.24.2
cache=${FERRETDB_CACHE:-$HOME/.cache/ferretdb}
bin=$cache/ferretdb-$V
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # Outside any module, so that nothing here touches the project's go.mod or go.sum.
  dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$V" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [ -n "$dir" ] && [ -d "$dir" ] || { echo "error: go mod download github.com/FerretDB/FerretDB@$V failed" >&2; exit 1; }
  cp -r "$dir" "$work/src"
  chmod -R u+w "$work/src"
  # The module's zip leaves out this generated file, without which the binary panics at start.
  echo "$V" >"$work/src/build/version/version.txt"
  echo "building ferretdb $V (once)…" >&2
  (cd "$work/src" && GOFLAGS= go build -trimpath -o "$bin.tmp.$$" ./cmd/ferretdb) >&2
  mv "$bin.tmp.$$" "$bin"
fi
echo "$bin"
