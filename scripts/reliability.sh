#!/usr/bin/env bash
# The long reliability runs, kept out of the normal suite: a soak of mixed
# traffic ($SOAK, default 10m) and a real MariaDB restart under load (needs
# mariadbd installed; the test starts a throwaway server of its own).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
ensure_go
ensure_mysql
export ROCKETCHAT_VOIP_REQUIRE_DB=1
export ROCKETCHAT_VOIP_SOAK="${SOAK:-10m}"
export ROCKETCHAT_VOIP_RESTART=1
go test -count=1 -v -timeout 60m -run 'TestSoak|TestMariaDBRestartUnderLoad' ./systemtest 2>&1 | grep -v '^{"level'
