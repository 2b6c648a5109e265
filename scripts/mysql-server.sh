#!/usr/bin/env bash
# Oracle MySQL for the tests, on a machine that has none: Debian's
# mysql-server-core (unstable's, MySQL 9.7 when written) in a chroot of the
# project's own, so it runs beside a MariaDB without touching it. The
# chroot is built once (debootstrap, installed with apt-get if missing;
# needs root and the Debian mirror) and kept in
# ${ROCKETCHAT_VOIP_MYSQL_CHROOT:-$HOME/.cache/rocketchat-voip/mysql-chroot}.
#
#   bash scripts/mysql-server.sh start PORT [mysqld options…]  # 127.0.0.1:PORT, root without password
#   bash scripts/mysql-server.sh stop PORT | kill PORT         # kill is SIGKILL, for drills
#   bash scripts/mysql-server.sh wipe PORT                     # stop and delete its data
#   bash scripts/mysql-server.sh sql PORT 'SELECT 1'
#   bash scripts/mysql-server.sh client PORT [mysql client options…]
#   bash scripts/mysql-server.sh build | version               # the chroot; the server's version
#   bash scripts/mysql-server.sh errlog PORT                   # where its error log is
#
# Each port keeps its data in the chroot under /srv/rcvoip/PORT (data,
# error.log, mysqld.pid, mysqld.sock), so a second start is fast too.
set -euo pipefail

CHROOT=${ROCKETCHAT_VOIP_MYSQL_CHROOT:-$HOME/.cache/rocketchat-voip/mysql-chroot}
MIRROR=${ROCKETCHAT_VOIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}

msay() { printf '==> %s\n' "$*" >&2; }
mdie() { printf 'error: %s\n' "$*" >&2; exit 1; }

build_chroot() {
  [ -x "$CHROOT/usr/sbin/mysqld" ] && return 0
  [ "$(id -u)" = 0 ] || mdie "building the MySQL chroot needs root (or set ROCKETCHAT_VOIP_TEST_DSN to a MySQL server)"
  if ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || mdie "debootstrap is missing and there is no apt-get to install it"
    msay "installing debootstrap with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
  fi
  local tmp="$CHROOT.partial"
  msay "building a Debian unstable chroot with mysql-server-core in $CHROOT (once; about a minute)"
  rm -rf "$tmp" && mkdir -p "$(dirname "$CHROOT")"
  debootstrap --variant=minbase sid "$tmp" "$MIRROR" >"$tmp.log" 2>&1 || mdie "debootstrap failed; see $tmp.log"
  # No service starts inside the chroot while packages install.
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d" && chmod +x "$tmp/usr/sbin/policy-rc.d"
  chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    mysql-server-core mysql-client-core >>"$tmp.log" 2>&1 || mdie "installing mysql-server-core failed; see $tmp.log"
  chroot "$tmp" getent passwd mysql >/dev/null || chroot "$tmp" useradd -r -s /bin/false mysql
  chroot "$tmp" apt-get clean
  rm -f "$tmp.log"
  # Renamed last, so an interrupted build is never taken for a finished one.
  mv "$tmp" "$CHROOT"
}

dir_of() { echo "/srv/rcvoip/$1"; } # inside the chroot

# client runs the chroot's mysql client on PORT's socket.
client() {
  local port=$1; shift
  chroot "$CHROOT" /usr/bin/mysql -uroot --socket="$(dir_of "$port")/mysqld.sock" "$@"
}

cmd_start() {
  local port=$1; shift
  [ "$(id -u)" = 0 ] || mdie "MySQL runs in a chroot, which needs root; or point ROCKETCHAT_VOIP_MYSQL_DSN at a MySQL server"
  build_chroot
  local dir; dir=$(dir_of "$port")
  if client "$port" -e 'SELECT 1' >/dev/null 2>&1; then
    msay "MySQL already running on 127.0.0.1:$port"
    return 0
  fi
  mkdir -p "$CHROOT$dir"
  chroot "$CHROOT" chown mysql:mysql "$dir"
  if [ ! -d "$CHROOT$dir/data/mysql" ]; then
    rm -rf "$CHROOT$dir/data"
    # root over TCP from loopback, without a password, as the tests expect.
    printf "CREATE USER IF NOT EXISTS 'root'@'%%';\nGRANT ALL ON *.* TO 'root'@'%%' WITH GRANT OPTION;\n" >"$CHROOT$dir/init.sql"
    chroot "$CHROOT" /usr/sbin/mysqld --no-defaults --user=mysql --datadir="$dir/data" --initialize-insecure \
      --init-file="$dir/init.sql" --log-error="$dir/init.log" ||
      { tail -20 "$CHROOT$dir/init.log" >&2; rm -rf "$CHROOT$dir/data"; mdie "mysqld --initialize failed on port $port"; }
  fi
  rm -f "$CHROOT$dir/mysqld.pid"
  chroot "$CHROOT" chown -R mysql:mysql "$dir"
  chroot "$CHROOT" /usr/sbin/mysqld --no-defaults --user=mysql --datadir="$dir/data" \
    --port="$port" --bind-address=127.0.0.1 --mysqlx=OFF --skip-name-resolve \
    --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/error.log" \
    --innodb-buffer-pool-size=128M --performance-schema=OFF --max-connections=500 \
    --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 --secure-file-priv="" "$@" >/dev/null 2>&1 &
  local pid=$! # chroot execs mysqld, so this is the server
  for _ in $(seq 1 240); do
    kill -0 "$pid" 2>/dev/null || break
    if client "$port" -e 'SELECT 1' >/dev/null 2>&1; then
      msay "MySQL $(cmd_version) on 127.0.0.1:$port (stop it with: bash scripts/mysql-server.sh stop $port)"
      return 0
    fi
    sleep 0.25
  done
  tail -30 "$CHROOT$dir/error.log" >&2
  mdie "MySQL did not start on port $port"
}

pid_of() { cat "$CHROOT$(dir_of "$1")/mysqld.pid" 2>/dev/null; }

cmd_stop() {
  local port=$1 pid
  pid=$(pid_of "$port") || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 240); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_kill() {
  local port=$1 pid
  pid=$(pid_of "$port") || mdie "no MySQL on port $port"
  kill -KILL "$pid"
  rm -f "$CHROOT$(dir_of "$port")/mysqld.pid"
}

cmd_version() { chroot "$CHROOT" /usr/sbin/mysqld --version | sed -n 's/.*Ver \([^ ]*\).*/\1/p'; }

case "${1:-}" in
  start) shift; cmd_start "${1:?port}" "${@:2}" ;;
  stop) cmd_stop "${2:?port}" ;;
  kill) cmd_kill "${2:?port}" ;;
  wipe) cmd_stop "${2:?port}"; rm -rf "$CHROOT$(dir_of "$2")" ;;
  sql) port=${2:?port}; shift 2; client "$port" -e "$*" ;;
  client) port=${2:?port}; shift 2; client "$port" "$@" ;;
  version) build_chroot; cmd_version ;;
  errlog) echo "$CHROOT$(dir_of "${2:?port}")/error.log" ;;
  build) build_chroot ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
esac
