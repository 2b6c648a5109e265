// Command seed fills a migrated database for the benchmarks: an agent who
// may close rooms (token "bench-agent-token"), a user who may not
// ("bench-viewer-token"), a visitor ("bench-visitor-token"), -rooms open
// voip rooms named BENCH0000000... without a call, and -call-rooms named
// CALL0000000... whose call has PBX events (AgentConnect, Hold, Unhold), as
// a real voip room's has, with nothing else in the tables.
package main

import (
	"database/sql"
	"flag"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

func main() {
	dsn := flag.String("dsn", "", "database DSN")
	rooms := flag.Int("rooms", 100000, "open rooms without a call to create")
	callRooms := flag.Int("call-rooms", 50000, "open rooms with a call and its PBX events to create")
	reopen := flag.Bool("reopen", false, "only reopen the bench rooms closed by an earlier run and delete their messages and events, so that every close run starts from the same tables")
	flag.Parse()
	cfg, err := mysql.ParseDSN(*dsn)
	if err != nil {
		log.Fatal(err)
	}
	cfg.ParseTime = true
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		log.Fatal(err)
	}
	if *reopen {
		exec(db, "DELETE FROM messages")
		exec(db, "DELETE FROM room_events")
		exec(db, `UPDATE rooms SET open = TRUE, closed_at = NULL, closer = NULL, closed_by_id = NULL,
  closed_by_username = NULL, call_duration = NULL, call_waiting_time = NULL, call_total_hold_time = NULL,
  visitor_status = NULL, msgs = 0, lm = NULL, last_message_id = NULL
WHERE (id LIKE 'BENCH%' OR id LIKE 'CALL%') AND open = FALSE`)
		return
	}
	now := time.Now().UTC()
	for _, q := range []string{"messages", "room_events", "pbx_events", "rooms", "livechat_visitors", "user_roles", "user_login_tokens", "users"} {
		exec(db, "DELETE FROM "+q)
	}
	exec(db, "INSERT INTO users (id, username, name) VALUES ('bench-agent', 'agent', 'Agent'), ('bench-viewer', 'viewer', 'Viewer')")
	exec(db, "INSERT INTO user_login_tokens (user_id, hashed_token, created_at) VALUES (?, ?, ?), (?, ?, ?)",
		"bench-agent", store.HashLoginToken("bench-agent-token"), now, "bench-viewer", store.HashLoginToken("bench-viewer-token"), now)
	exec(db, "INSERT INTO user_roles (user_id, role) VALUES ('bench-agent', 'livechat-agent'), ('bench-agent', 'user'), ('bench-viewer', 'user')")
	exec(db, "INSERT INTO livechat_visitors (id, token, username) VALUES ('bench-visitor', 'bench-visitor-token', 'guest-1')")
	for start := 0; start < *rooms; start += 1000 {
		var q strings.Builder
		var args []any
		q.WriteString("INSERT INTO rooms (id, t, open, ts, visitor_id, visitor_token, visitor_username, updated_at) VALUES ")
		for i := start; i < min(start+1000, *rooms); i++ {
			if i > start {
				q.WriteByte(',')
			}
			q.WriteString("(?, 'v', TRUE, ?, 'bench-visitor', 'bench-visitor-token', 'guest-1', ?)")
			args = append(args, RoomID(i), now, now)
		}
		exec(db, q.String(), args...)
	}
	for start := 0; start < *callRooms; start += 1000 {
		var rq, eq strings.Builder
		var rargs, eargs []any
		rq.WriteString("INSERT INTO rooms (id, t, open, ts, visitor_id, visitor_token, visitor_username, call_unique_id, updated_at) VALUES ")
		eq.WriteString("INSERT INTO pbx_events (id, unique_id, event, call_unique_id, hold_time, ts) VALUES ")
		for i := start; i < min(start+1000, *callRooms); i++ {
			if i > start {
				rq.WriteByte(',')
				eq.WriteByte(',')
			}
			id := CallRoomID(i)
			rq.WriteString("(?, 'v', TRUE, ?, 'bench-visitor', 'bench-visitor-token', 'guest-1', ?, ?)")
			rargs = append(rargs, id, now, id, now)
			eq.WriteString("(?, ?, 'AgentConnect', ?, '12', ?), (?, ?, 'Hold', ?, NULL, ?), (?, ?, 'Unhold', ?, NULL, ?)")
			for j, ts := range []time.Time{now.Add(time.Second), now.Add(time.Minute), now.Add(2 * time.Minute)} {
				eid := fmt.Sprintf("%s-%d", id, j)
				eargs = append(eargs, eid, eid, id, ts)
			}
		}
		exec(db, rq.String(), rargs...)
		exec(db, eq.String(), eargs...)
	}
	exec(db, "INSERT INTO rooms (id, t, open, ts, visitor_id, visitor_token, updated_at) VALUES ('CLOSED', 'v', FALSE, ?, 'bench-visitor', 'bench-visitor-token', ?)", now, now)
	fmt.Printf("seeded %d rooms and %d rooms with a call\n", *rooms, *callRooms)
}

// RoomID is the id of bench room i (the wrk scripts build the same ids).
func RoomID(i int) string { return fmt.Sprintf("BENCH%07d", i) }

// CallRoomID is the id of bench room i with a call (also its call id).
func CallRoomID(i int) string { return fmt.Sprintf("CALL%07d", i) }

func exec(db *sql.DB, q string, args ...any) {
	if _, err := db.Exec(q, args...); err != nil {
		log.Fatalf("%s: %v", q, err)
	}
}
