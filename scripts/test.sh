#!/usr/bin/env bash
# The whole test suite: unit, Caddyfile, and integration tests that run Caddy
# with the module against a real MariaDB/MySQL and a real upstream.
# Finds or starts a database server first (see scripts/lib.sh): MariaDB or
# any server by default, Oracle MySQL with --mysql, TiDB with --tidb (one
# test package at a time there: TiDB on unistore is one process, and the
# packages' tests would otherwise contend for its locks). Extra arguments go
# to 'go test'.
#
#   bash scripts/test.sh [--mysql|--tidb] [go test flags…]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
ensure_go
parallel=()
case "${1:-}" in
  --mysql) shift; ensure_oracle_mysql ;;
  --tidb) shift; ensure_tidb; parallel=(-p 1) ;;
  *) ensure_mysql ;;
esac
ensure_promtool
say "installing the conformance oracle (Rocket.Chat's validator and REST client)"
bash conformance/testdata/rocketchat/setup.sh
say "FerretDB for the sync's tests (built once from its Go module, then cached)"
ROCKETCHAT_VOIP_FERRETDB=$(bash scripts/ferretdb-server.sh)
export ROCKETCHAT_VOIP_FERRETDB
# A test that needs MySQL (or FerretDB) fails, never skips, when it is missing.
export ROCKETCHAT_VOIP_REQUIRE_DB=1

say "gofmt -l ."
unformatted=$(gofmt -l .)
[ -z "$unformatted" ] || die "gofmt: not formatted (run gofmt -w on them): $unformatted"
say "go vet ./..."
go vet ./...
# staticcheck at a pinned version, built once into $BIN_DIR; its exceptions,
# each with its reason, are in the staticcheck.conf files.
STATICCHECK_VERSION=v0.8.2
if ! "$BIN_DIR/staticcheck" -version 2>/dev/null | grep -qF "(${STATICCHECK_VERSION#v})"; then
  say "installing staticcheck $STATICCHECK_VERSION"
  GOBIN="$BIN_DIR" go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi
say "staticcheck ./..."
"$BIN_DIR/staticcheck" ./...
# Packages without system tests run once, under the race detector; the
# system tests (real Caddy, database and upstream, timing-sensitive under
# load) run without it.
say "go test -race (every package but systemtest/)"
go test -count=1 -race "${parallel[@]}" "$@" $(go list ./... | grep -v '/systemtest$')
say "go test ./systemtest/"
go test -count=1 "${parallel[@]}" "$@" ./systemtest/
