# Shared by scripts/*.sh: find Go and a MySQL-compatible server.
# Sourced, not run. Sets ROCKETCHAT_VOIP_TEST_DSN to a server-level DSN
# (no database) that the tests and the demo use.

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP_DIR="$ROOT_DIR/.tmp"
BIN_DIR="$TMP_DIR/bin"
THROWAWAY_PORT=${ROCKETCHAT_VOIP_THROWAWAY_PORT:-3307}
mkdir -p "$BIN_DIR"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_go() {
  if ! command -v go >/dev/null 2>&1; then
    [ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1 || die "Go 1.26+ is needed (https://go.dev/dl/); 'go' is not on PATH"
}

dbtool() {
  if [ ! -x "$BIN_DIR/dbtool" ] || [ -n "$(find "$ROOT_DIR/internal/tools/dbtool" -newer "$BIN_DIR/dbtool" -name '*.go' 2>/dev/null)" ]; then
    (cd "$ROOT_DIR" && go build -o "$BIN_DIR/dbtool" ./internal/tools/dbtool) || die "building dbtool failed"
  fi
  "$BIN_DIR/dbtool" "$@"
}

# ensure_mysql finds a server, in this order:
#  1. $ROCKETCHAT_VOIP_TEST_DSN, if set (it must answer);
#  2. root with no password at 127.0.0.1:3306;
#  3. a throwaway MariaDB of this repo's on 127.0.0.1:$THROWAWAY_PORT, started
#     now if need be from the installed mariadbd (installed with apt-get
#     first when missing and this is root on Debian/Ubuntu).
ensure_mysql() {
  if [ -n "${ROCKETCHAT_VOIP_TEST_DSN:-}" ]; then
    dbtool wait "$ROCKETCHAT_VOIP_TEST_DSN" 15 || die "ROCKETCHAT_VOIP_TEST_DSN is set but its server does not answer"
    say "MySQL: using ROCKETCHAT_VOIP_TEST_DSN"
    return
  fi
  if dbtool wait "root@tcp(127.0.0.1:3306)/" 1 2>/dev/null; then
    export ROCKETCHAT_VOIP_TEST_DSN="root@tcp(127.0.0.1:3306)/"
    say "MySQL: found a server at 127.0.0.1:3306"
    return
  fi
  local dsn="root@tcp(127.0.0.1:$THROWAWAY_PORT)/"
  if dbtool wait "$dsn" 1 2>/dev/null; then
    export ROCKETCHAT_VOIP_TEST_DSN="$dsn"
    say "MySQL: reusing the throwaway server at 127.0.0.1:$THROWAWAY_PORT"
    return
  fi
  start_throwaway_mariadb
  dbtool wait "$dsn" 60 || die "the throwaway MariaDB did not come up; see $TMP_DIR/mariadb/error.log"
  export ROCKETCHAT_VOIP_TEST_DSN="$dsn"
}

# ensure_oracle_mysql is ensure_mysql for Oracle MySQL:
#  1. $ROCKETCHAT_VOIP_MYSQL_DSN, if set (it must answer);
#  2. the project's own MySQL on 127.0.0.1:$MYSQL_PORT, started now if need
#     be (scripts/mysql-server.sh builds and caches its chroot).
MYSQL_PORT=${ROCKETCHAT_VOIP_MYSQL_PORT:-3320}
ensure_oracle_mysql() {
  local dsn=${ROCKETCHAT_VOIP_MYSQL_DSN:-"root@tcp(127.0.0.1:$MYSQL_PORT)/"}
  if [ -z "${ROCKETCHAT_VOIP_MYSQL_DSN:-}" ] && ! dbtool wait "$dsn" 1 2>/dev/null; then
    bash "$ROOT_DIR/scripts/mysql-server.sh" start "$MYSQL_PORT" || die "could not start MySQL on 127.0.0.1:$MYSQL_PORT"
  fi
  dbtool wait "$dsn" 30 || die "MySQL does not answer at $dsn"
  export ROCKETCHAT_VOIP_TEST_DSN="$dsn"
  say "MySQL: $(dbtool query "$dsn" 'SELECT VERSION() AS v' | sed -n 's/^ *v: //p') at ${dsn#*@}"
}

# ensure_tidb is ensure_mysql for TiDB:
#  1. $ROCKETCHAT_VOIP_TIDB_DSN, if set (it must answer);
#  2. the project's own TiDB on 127.0.0.1:$TIDB_PORT, started now if need be
#     (scripts/tidb-server.sh builds it once and caches the binary).
TIDB_PORT=${ROCKETCHAT_VOIP_TIDB_PORT:-4100}
ensure_tidb() {
  local dsn=${ROCKETCHAT_VOIP_TIDB_DSN:-"root@tcp(127.0.0.1:$TIDB_PORT)/"}
  if [ -z "${ROCKETCHAT_VOIP_TIDB_DSN:-}" ] && ! dbtool wait "$dsn" 1 2>/dev/null; then
    bash "$ROOT_DIR/scripts/tidb-server.sh" start "$TIDB_PORT" || die "could not start TiDB on 127.0.0.1:$TIDB_PORT"
  fi
  dbtool wait "$dsn" 120 || die "TiDB does not answer at $dsn"
  export ROCKETCHAT_VOIP_TEST_DSN="$dsn"
  say "TiDB: $(dbtool query "$dsn" 'SELECT VERSION() AS v' | sed -n 's/^ *v: //p') at ${dsn#*@}"
}

find_mariadbd() {
  for b in mariadbd mysqld /usr/sbin/mariadbd /usr/sbin/mysqld /usr/libexec/mariadbd; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

start_throwaway_mariadb() {
  local mariadbd
  if ! mariadbd=$(find_mariadbd); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "MySQL: no server and no mariadbd; installing mariadb-server with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2 && apt-get install -y -qq mariadb-server >&2 || die "apt-get install mariadb-server failed"
      mariadbd=$(find_mariadbd) || die "mariadb-server installed but no mariadbd found"
    else
      die "no MySQL server found. Either start one and set ROCKETCHAT_VOIP_TEST_DSN (e.g. 'root@tcp(127.0.0.1:3306)/'), or install MariaDB ('sudo apt-get install mariadb-server') and run this again to start a throwaway one"
    fi
  fi
  local dir="$TMP_DIR/mariadb" install_db user
  install_db=$(command -v mariadb-install-db || command -v mysql_install_db) || die "mariadb-install-db not found next to $mariadbd"
  user=$(id -un)
  if [ ! -d "$dir/data/mysql" ]; then
    say "MySQL: initialising a throwaway MariaDB in $dir"
    rm -rf "$dir" && mkdir -p "$dir"
    "$install_db" --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
      --skip-test-db --user="$user" >"$dir/install.log" 2>&1 || die "mariadb-install-db failed; see $dir/install.log"
  fi
  say "MySQL: starting a throwaway MariaDB on 127.0.0.1:$THROWAWAY_PORT (stop it with: kill \$(cat $dir/mariadb.pid))"
  nohup "$mariadbd" --no-defaults --datadir="$dir/data" --socket="$dir/mariadb.sock" --port="$THROWAWAY_PORT" \
    --bind-address=127.0.0.1 --user="$user" --pid-file="$dir/mariadb.pid" --log-error="$dir/error.log" \
    --innodb-buffer-pool-size=256M --max-connections=500 >/dev/null 2>&1 &
}

# ensure_promtool finds promtool, which tests the alert rules in
# examples/monitoring; as root on Debian/Ubuntu it installs it with apt-get
# (the prometheus package) when missing. Otherwise the Go test that runs it
# skips, except under CI=true, where it fails.
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "promtool: not found; installing prometheus (which has it) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends prometheus >&2 || die "apt-get install prometheus failed"
    command -v promtool >/dev/null 2>&1 || die "prometheus installed but no promtool found"
  else
    say "promtool: not found; the alert rules' tests will skip (install Debian's 'prometheus' package to run them)"
  fi
}
