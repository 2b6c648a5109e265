#!/usr/bin/env bash
# Follows docs/setup.md as written, on a fresh database: runs every block
# marked runnable there (```sh runnable), in order, in one shell, from a
# scratch directory holding the files the guide reads (docs/*.sql,
# examples/demo/seed.sql) and the guide's Caddyfile (its ```caddyfile
# runnable block). Then checks what the guide says each step prints, and
# drops the database and the two users it created.
#
#   bash scripts/setup-guide.sh
#
# The server is the one the tests use (scripts/lib.sh: $ROCKETCHAT_VOIP_TEST_DSN,
# or root on 127.0.0.1:3306); the 'mysql' client must be installed.
# CADDY_BIN names a built Caddy with the module (default: go build ./cmd/caddy).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
command -v mysql >/dev/null 2>&1 || die "the setup guide uses the 'mysql' client (apt-get install mariadb-client)"
command -v curl >/dev/null 2>&1 || die "the setup guide uses curl"
if [ -z "${CADDY_BIN:-}" ]; then
  ensure_go
  ensure_mysql
  go build -o "$BIN_DIR/caddy" ./cmd/caddy
  CADDY_BIN=$BIN_DIR/caddy
fi
: "${ROCKETCHAT_VOIP_TEST_DSN:=root@tcp(127.0.0.1:3306)/}"

# The guide's settings (its step 0), for the test server and names of its own.
[[ $ROCKETCHAT_VOIP_TEST_DSN =~ ^([^:@]*)(:([^@]*))?@tcp\(([^:\)]+):([0-9]+)\) ]] ||
  die "ROCKETCHAT_VOIP_TEST_DSN must look like user[:password]@tcp(host:port)/: $ROCKETCHAT_VOIP_TEST_DSN"
admin_user=${BASH_REMATCH[1]} admin_pw=${BASH_REMATCH[3]}
suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
export DB=rcvoip_setup_$suffix DB_HOST=${BASH_REMATCH[4]} DB_PORT=${BASH_REMATCH[5]}
export MYSQL_PWD=$admin_pw # read by the mysql client, so ADMIN needs no -p
export ADMIN="mysql -h $DB_HOST -P $DB_PORT -u $admin_user"
export MIGRATOR=rcvoip_mig_$suffix MIGRATOR_PW=mig-$suffix GATEWAY=rcvoip_gw_$suffix GATEWAY_PW=gw-$suffix
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export LISTEN=127.0.0.1:$(free_port) ROCKETCHAT=127.0.0.1:$(free_port) CADDY_ADMIN=127.0.0.1:$(free_port)

work=$(mktemp -d)
mkdir -p "$work/docs" "$work/examples/demo" "$work/bin"
cp docs/grants.sql docs/grants-migrator.sql "$work/docs/"
cp examples/demo/seed.sql "$work/examples/demo/"
ln -s "$(cd "$(dirname "$CADDY_BIN")" && pwd)/$(basename "$CADDY_BIN")" "$work/bin/caddy"
export PATH="$work/bin:$PATH"
# Caddy's autosave.json and storage go to the scratch directory, not $HOME's.
export XDG_CONFIG_HOME=$work/config XDG_DATA_HOME=$work/data
cleanup() {
  (cd "$work" && caddy stop >/dev/null 2>&1) || true
  $ADMIN -e "DROP DATABASE IF EXISTS $DB; DROP USER IF EXISTS '$MIGRATOR'@'%', '$GATEWAY'@'%';" || true
  rm -rf "$work"
}
trap cleanup EXIT

# blocks <lang>: the guide's blocks fenced as '```<lang> runnable', in order.
blocks() { awk -v open="\`\`\`$1 runnable" '$0 == open { on = 1; next } on && /^```/ { on = 0; next } on' docs/setup.md; }
blocks caddyfile >"$work/Caddyfile"
blocks sh >"$work/guide.sh"
[ -s "$work/Caddyfile" ] && [ -s "$work/guide.sh" ] || die "docs/setup.md has no runnable blocks"

say "following docs/setup.md on database $DB"
out=$(cd "$work" && bash -euo pipefail guide.sh 2>&1) || { printf '%s\n' "$out" >&2; die "a step of docs/setup.md failed"; }
printf '%s\n' "$out"

expect() { grep -qF -- "$1" <<<"$out" || die "docs/setup.md: expected $2 ($1)"; }
expect "applied migrations [1 2 3 4 5 6 7], schema at version 7" "step 3 to migrate"
expect "ok (schema version 7)" "step 5's check to pass"
expect '{"status":"error","message":"You must be logged in to do this."}' "step 6's 401 from the module"
expect '{"rid":"demo-room","success":true}' "step 7's close"
open=$($ADMIN -N -D "$DB" -e "SELECT open FROM rooms WHERE id = 'demo-room'")
[ "$open" = 0 ] || die "the room is still open after step 7's close (open=$open)"
say "docs/setup.md works as written"
