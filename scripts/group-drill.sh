#!/usr/bin/env bash
# The Group Replication drill, kept out of the normal suite (the Galera one
# is scripts/cluster-drill.sh): a three-member single-primary MySQL group on
# loopback (the project's MySQL, scripts/mysql-server.sh; members on
# 3321-3323, group communication on 3331-3333), a gateway whose DSN lists a
# secondary first, and systemtest/group_test.go judging: closes through the
# secondary-first DSN; the primary SIGKILLed under load; closes again within
# 1 s of the election; every answer within db_timeout; the old primary
# rejoining as a secondary; rows identical on every member; each room
# closed at most once.
#
#   bash scripts/group-drill.sh              # build the group, run the drill, stop it
#   bash scripts/group-drill.sh start|stop   # just the group
#   bash scripts/group-drill.sh kill N | rejoin N | primary   # used by the drill
#
# Never touches the servers on 3306-3308.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"

MYSQL="bash $ROOT_DIR/scripts/mysql-server.sh"
GROUP_NAME=6f1e0c2a-22d5-4b7e-9a41-0c0ffee02222

port() { echo $((3320 + $1)); }
xport() { echo $((3330 + $1)); }
sql() { local n=$1; shift; $MYSQL client "$(port "$n")" "$@"; }

start_member() {
  local n=$1 weight=50
  # Member 3 weighs more, so the election after member 1 dies picks the
  # member the drill's DSN (2, 1, 3) lists last, not the one it tries first.
  [ "$n" = 3 ] && weight=70
  # Start-on-boot off: the drill says when a member joins, one at a time.
  $MYSQL start "$(port "$n")" --server-id="$n" --report-host=127.0.0.1 --report-port="$(port "$n")" \
    --group-replication-member-weight="$weight" \
    --gtid-mode=ON --enforce-gtid-consistency=ON --performance-schema=ON \
    --plugin-load-add=group_replication.so --group-replication-group-name="$GROUP_NAME" \
    --group-replication-local-address="127.0.0.1:$(xport "$n")" \
    --group-replication-group-seeds="127.0.0.1:$(xport 1),127.0.0.1:$(xport 2),127.0.0.1:$(xport 3)" \
    --group-replication-start-on-boot=OFF --group-replication-member-expel-timeout=0
}

# state N prints member N's own MEMBER_STATE and MEMBER_ROLE.
state() {
  sql "$1" -N -e "SELECT MEMBER_STATE, MEMBER_ROLE FROM performance_schema.replication_group_members WHERE MEMBER_ID = @@server_uuid" 2>/dev/null || true
}

wait_online() {
  local n=$1
  for _ in $(seq 1 240); do
    case "$(state "$n")" in ONLINE*) return 0 ;; ERROR*) break ;; esac
    sleep 0.25
  done
  die "member $n did not come ONLINE; see $($MYSQL errlog "$(port "$n")")"
}

join() {
  local n=$1
  sql "$n" -e "CHANGE REPLICATION SOURCE TO SOURCE_USER='root', SOURCE_PASSWORD='' FOR CHANNEL 'group_replication_recovery'; START GROUP_REPLICATION"
  wait_online "$n"
}

cmd_start() {
  cmd_stop
  for n in 1 2 3; do $MYSQL wipe "$(port "$n")"; start_member "$n"; done
  say "bootstrapping the group on member 1"
  sql 1 -e "SET GLOBAL group_replication_bootstrap_group = ON; START GROUP_REPLICATION; SET GLOBAL group_replication_bootstrap_group = OFF"
  wait_online 1
  for n in 2 3; do
    say "member $n joins"
    join "$n"
  done
  say "group up: primary 127.0.0.1:$(port 1), secondaries :$(port 2), :$(port 3)"
}

cmd_stop() { for n in 1 2 3; do $MYSQL stop "$(port "$n")"; done; }

# rejoin N: a member that was killed starts again and rejoins by distributed
# recovery, once the group has expelled it (a member the group still lists
# cannot join again).
cmd_rejoin() {
  local n=$1 listed
  for _ in $(seq 1 120); do
    listed=0
    for m in 1 2 3; do
      [ "$m" = "$n" ] && continue
      [ -n "$(sql "$m" -N -e "SELECT 1 FROM performance_schema.replication_group_members WHERE MEMBER_PORT = $(port "$n")" 2>/dev/null)" ] && listed=1
    done
    [ "$listed" = 0 ] && break
    sleep 0.25
  done
  start_member "$n"
  join "$n"
  say "member $n is back: $(state "$n")"
}

# primary prints the port of the primary as the survivors see it.
cmd_primary() {
  for n in 1 2 3; do
    sql "$n" -N -e "SELECT MEMBER_PORT FROM performance_schema.replication_group_members WHERE MEMBER_ROLE = 'PRIMARY' AND MEMBER_STATE = 'ONLINE'" 2>/dev/null && return 0
  done
  return 1
}

cmd_run() {
  ensure_go
  cmd_start
  trap cmd_stop EXIT
  export ROCKETCHAT_VOIP_REQUIRE_DB=1
  export ROCKETCHAT_VOIP_GROUP="root@tcp(127.0.0.1:$(port 1))/,root@tcp(127.0.0.1:$(port 2))/,root@tcp(127.0.0.1:$(port 3))/"
  export ROCKETCHAT_VOIP_GROUP_CTL="bash $ROOT_DIR/scripts/group-drill.sh"
  go test -count=1 -v -timeout 20m -run 'TestGroupReplicationDrill' ./systemtest 2>&1 | grep -v '^{"level'
}

case "${1:-run}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) $MYSQL kill "$(port "$2")" ;;
  rejoin) cmd_rejoin "$2" ;;
  primary) cmd_primary ;;
  run) cmd_run ;;
  *) die "usage: $0 [run|start|stop|kill N|rejoin N|primary]" ;;
esac
