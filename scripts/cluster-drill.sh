#!/usr/bin/env bash
# The cluster drill, kept out of the normal suite: a three-node MariaDB
# Galera cluster on loopback (Debian's galera-4 and mariadb-server, installed
# if missing; each node with its own ports and datadir under .tmp/galera),
# three gateways (one per node) and one naming all three, and
# systemtest/cluster_test.go judging: exactly-once under cross-node
# conflicts; a node SIGKILLed under load and rejoined by IST; every answer
# within db_timeout; rows identical on every node afterwards.
#
#   bash scripts/cluster-drill.sh            # build the cluster, run the drill, stop it
#   bash scripts/cluster-drill.sh start|stop # just the cluster
#   bash scripts/cluster-drill.sh kill N | restart N   # used by the drill
#
# Never touches the server on 3306: nodes listen on 3311-3313.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"

GALERA_DIR="$TMP_DIR/galera"
PROVIDER=${GALERA_PROVIDER:-/usr/lib/galera/libgalera_smm.so}
# As root, the nodes run as mysql: rsync SST's daemon, started as root,
# would drop to nobody and could not write the joiner's datadir.
USER_NAME=$(id -un)
if [ "$USER_NAME" = root ] && id mysql >/dev/null 2>&1; then USER_NAME=mysql; fi

port() { echo $((3310 + $1)); }
gport() { echo $((4570 + $1)); }

ensure_packages() {
  local missing=()
  [ -f "$PROVIDER" ] || missing+=(galera-4)
  find_mariadbd >/dev/null || missing+=(mariadb-server)
  command -v rsync >/dev/null || missing+=(rsync)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "install ${missing[*]} (Debian: apt-get install ${missing[*]})"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2
  fi
}

write_config() {
  local n=$1 dir="$GALERA_DIR/node$1"
  mkdir -p "$dir"
  cat >"$dir/my.cnf" <<EOF
[mysqld]
datadir=$dir/data
socket=$dir/mysqld.sock
pid-file=$dir/mysqld.pid
log-error=$dir/error.log
port=$(port "$n")
bind-address=127.0.0.1
skip-name-resolve
user=$USER_NAME
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
innodb_buffer_pool_size=128M
innodb_flush_log_at_trx_commit=2
max_connections=400
wsrep_on=ON
wsrep_provider=$PROVIDER
wsrep_cluster_name=rcvoip_drill
wsrep_cluster_address=gcomm://127.0.0.1:$(gport 1),127.0.0.1:$(gport 2),127.0.0.1:$(gport 3)
wsrep_node_name=node$n
wsrep_node_address=127.0.0.1
# Evict a silent node after about a second (Galera's default is 5 s, during
# which every node holds its commits): on loopback nothing is slow but a
# dead node, and the drill judges the gateway, not Galera's patience.
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:$(gport "$n");ist.recv_addr=127.0.0.1:$((4580 + n));gcache.size=256M;evs.keepalive_period=PT0.3S;evs.inactive_check_period=PT0.3S;evs.suspect_timeout=PT1S;evs.inactive_timeout=PT3S;evs.install_timeout=PT3S"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:$((4590 + n))
EOF
}

mariadbd_bin() { find_mariadbd || die "mariadbd not found"; }

wait_node() {
  local n=$1
  for _ in $(seq 1 90); do
    if dbtool wait "root@tcp(127.0.0.1:$(port "$n"))/" 1 2>/dev/null; then return 0; fi
    sleep 1
  done
  die "node $n did not come up; see $GALERA_DIR/node$n/error.log"
}

start_node() {
  local n=$1 extra=${2:-}
  nohup "$(mariadbd_bin)" --defaults-file="$GALERA_DIR/node$n/my.cnf" $extra >/dev/null 2>&1 &
}

cmd_start() {
  ensure_packages
  cmd_stop 2>/dev/null || true
  rm -rf "$GALERA_DIR"
  for n in 1 2 3; do write_config "$n"; done
  chown -R "$USER_NAME" "$GALERA_DIR"
  say "initialising node 1"
  mariadb-install-db --defaults-file="$GALERA_DIR/node1/my.cnf" --user="$USER_NAME" --skip-test-db >"$GALERA_DIR/node1/install.log" 2>&1 ||
    die "mariadb-install-db failed; see $GALERA_DIR/node1/install.log"
  # mariadb-install-db leaves root socket-only: let the drill in over TCP,
  # before the others join (they copy node 1 by SST).
  start_node 1 "--wsrep-new-cluster"
  for _ in $(seq 1 60); do [ -S "$GALERA_DIR/node1/mysqld.sock" ] && break; sleep 1; done
  mariadb --socket="$GALERA_DIR/node1/mysqld.sock" -uroot -e \
    "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" ||
    die "could not create root@127.0.0.1 on node 1"
  wait_node 1
  for n in 2 3; do
    say "starting node $n (SST from node 1)"
    mkdir -p "$GALERA_DIR/node$n/data" && chown "$USER_NAME" "$GALERA_DIR/node$n/data"
    start_node "$n"
    wait_node "$n"
  done
  say "cluster up: 127.0.0.1:$(port 1), :$(port 2), :$(port 3)"
}

cmd_stop() {
  for n in 1 2 3; do
    local pidf="$GALERA_DIR/node$n/mysqld.pid"
    [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
  done
  for n in 1 2 3; do
    local pidf="$GALERA_DIR/node$n/mysqld.pid"
    for _ in $(seq 1 60); do [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null || break; sleep 1; done
  done
}

cmd_kill() {
  local n=$1
  kill -9 "$(cat "$GALERA_DIR/node$n/mysqld.pid")"
  rm -f "$GALERA_DIR/node$n/mysqld.pid"
}

# restart N: rejoin by IST, from the position the node recovers from its
# own InnoDB state.
cmd_restart() {
  local n=$1 pos
  "$(mariadbd_bin)" --defaults-file="$GALERA_DIR/node$n/my.cnf" --wsrep-recover \
    --log-error="$GALERA_DIR/node$n/recover.log" >/dev/null 2>&1 || true
  pos=$(sed -n 's/.*WSREP: Recovered position: //p' "$GALERA_DIR/node$n/recover.log" | tail -1)
  [ -n "$pos" ] || die "no recovered position for node $n; see $GALERA_DIR/node$n/recover.log"
  start_node "$n" "--wsrep-start-position=$pos"
  wait_node "$n"
  grep -q "IST received" "$GALERA_DIR/node$n/error.log" && say "node $n rejoined by IST" || say "node $n rejoined (see its error.log for how)"
}

cmd_run() {
  ensure_go
  cmd_start
  trap cmd_stop EXIT
  export ROCKETCHAT_VOIP_REQUIRE_DB=1
  export ROCKETCHAT_VOIP_CLUSTER="root@tcp(127.0.0.1:$(port 1))/,root@tcp(127.0.0.1:$(port 2))/,root@tcp(127.0.0.1:$(port 3))/"
  export ROCKETCHAT_VOIP_CLUSTER_CTL="bash $ROOT_DIR/scripts/cluster-drill.sh"
  go test -count=1 -v -timeout 20m -run 'TestCluster' ./systemtest 2>&1 | grep -v '^{"level'
}

case "${1:-run}" in
  start) ensure_go; cmd_start ;;
  stop) cmd_stop ;;
  kill) cmd_kill "$2" ;;
  restart) ensure_go; cmd_restart "$2" ;;
  run) cmd_run ;;
  *) die "usage: $0 [run|start|stop|kill N|restart N]" ;;
esac
