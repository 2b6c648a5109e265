#!/usr/bin/env bash
# The whole test suite: unit, Caddyfile, and integration tests that run Caddy
# with the module against a real MariaDB/MySQL and a real upstream.
# Finds or starts a database server first (see scripts/lib.sh): MariaDB or
# any server by default, Oracle MySQL with --mysql. Extra arguments go to
# 'go test'.
#
#   bash scripts/test.sh [--mysql] [go test flags…]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
ensure_go
if [ "${1:-}" = --mysql ]; then
  shift
  ensure_oracle_mysql
else
  ensure_mysql
fi
ensure_promtool
say "installing the conformance oracle (Rocket.Chat's validator and REST client)"
bash conformance/testdata/rocketchat/setup.sh
# A test that needs MySQL fails, never skips, when it is missing.
export ROCKETCHAT_VOIP_REQUIRE_DB=1
say "go vet ./..."
go vet ./...
say "go test ./..."
go test -count=1 "$@" ./...
