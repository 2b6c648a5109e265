package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

type fixture struct {
	db      *testdb.DB
	st      *store.Store
	visitor testdb.Visitor
	agent   store.Agent
}

// writePaths runs a test on each write path the test server has: the
// portable transaction everywhere, and the procedure where the engine has
// it.
func writePaths(t *testing.T, test func(t *testing.T, procedure bool)) {
	t.Run("portable", func(t *testing.T) { test(t, false) })
	t.Run("procedure", func(t *testing.T) {
		if !testServerHasProcedures(t) {
			t.Skip("the test server has no stored procedures: the portable path is the only one")
		}
		test(t, true)
	})
}

func testServerHasProcedures(t *testing.T) bool {
	db := testdb.New(t)
	engine, _, err := dbconnect.DetectEngine(context.Background(), db.DB)
	if err != nil {
		t.Fatal(err)
	}
	return engine.HasProcedures()
}

func newFixture(t *testing.T, procedure bool) *fixture {
	t.Helper()
	db := testdb.New(t)
	st, err := store.NewForTest(context.Background(), db.DB, procedure, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.WritePath().Procedure; got != procedure {
		t.Fatalf("write path %v, want procedure %v", st.WritePath(), procedure)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{db: db, st: st, visitor: db.AddVisitor(t, "visitor1")}
	a := db.AddUser(t, "agent1", "livechat-agent")
	f.agent = store.Agent{ID: a.ID, Username: a.Username, Name: a.Name}
	return f
}

func (f *fixture) close(rid, token string) (store.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	found, err := f.st.ReadRoom(ctx, rid, token)
	if err != nil {
		return store.Result{}, err
	}
	return f.st.CloseRoom(ctx, store.CloseRequest{Rid: rid, VisitorToken: token, Agent: f.agent, Comment: "done", Tags: []string{"a"}}, found)
}

func TestCloseRoomOutcomes(t *testing.T) { writePaths(t, closeRoomOutcomes) }

func closeRoomOutcomes(t *testing.T, procedure bool) {
	f := newFixture(t, procedure)
	opened := time.Now().UTC().Add(-time.Minute).Truncate(time.Millisecond)
	f.db.AddRoom(t, "ROOM1", f.visitor, opened, nil)
	other := f.db.AddVisitor(t, "visitor2")
	f.db.AddRoom(t, "ROOM2", other, opened, nil)

	cases := []struct {
		name, rid, token string
		want             error
	}{
		{"unknown visitor token", "ROOM1", "no-such-token", store.ErrInvalidToken},
		{"token differing only by a trailing space", "ROOM1", f.visitor.Token + " ", store.ErrInvalidToken},
		{"unknown room", "NOPE", f.visitor.Token, store.ErrInvalidRoom},
		{"empty room id", "", f.visitor.Token, store.ErrInvalidRoom},
		{"another visitor's room", "ROOM2", f.visitor.Token, store.ErrInvalidRoom},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := f.close(c.rid, c.token); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if n := f.db.Count(t, "messages") + f.db.Count(t, "room_events"); n != 0 {
				t.Fatalf("a refused close wrote %d rows", n)
			}
		})
	}

	res, err := f.close("ROOM1", f.visitor.Token)
	if err != nil {
		t.Fatal(err)
	}
	var (
		open           bool
		lastMessage    string
		closedAt       time.Time
		msgType, msg   string
		tags           sql.NullString
		callDurationMs int64
	)
	if err := f.db.QueryRow(`SELECT r.open, r.last_message_id, r.closed_at, r.call_duration, r.tags, m.t, m.msg
FROM rooms r JOIN messages m ON m.id = r.last_message_id WHERE r.id = 'ROOM1'`).Scan(&open, &lastMessage, &closedAt, &callDurationMs, &tags, &msgType, &msg); err != nil {
		t.Fatal(err)
	}
	if open || lastMessage != res.MessageID || !closedAt.Equal(res.ClosedAt) || callDurationMs != res.CallDuration ||
		tags.String != `["a"]` || msgType != store.MessageTypeWrapup || msg != "done" {
		t.Fatalf("rows after the close: open=%v last=%s closed=%v duration=%d tags=%s msg=%s %q; result %+v",
			open, lastMessage, closedAt, callDurationMs, tags.String, msgType, msg, res)
	}
	if n := f.db.Count(t, "room_events WHERE rid = 'ROOM1' AND type = 'room.closed'"); n != 1 {
		t.Fatalf("%d outbox rows, want 1", n)
	}
	if _, err := f.close("ROOM1", f.visitor.Token); !errors.Is(err, store.ErrRoomClosed) {
		t.Fatalf("second close: %v, want ErrRoomClosed", err)
	}
	if want := 1 + 4*btoi(!procedure); res.RoundTrips != want {
		t.Fatalf("the close took %d round trips, want %d", res.RoundTrips, want)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Exactly one of many concurrent closes of a room wins; the others get
// ErrRoomClosed and write nothing.
func TestCloseRoomConcurrentExactlyOnce(t *testing.T) { writePaths(t, closeRoomConcurrentExactlyOnce) }

func closeRoomConcurrentExactlyOnce(t *testing.T, procedure bool) {
	f := newFixture(t, procedure)
	f.db.AddRoom(t, "ROOM1", f.visitor, time.Now().UTC(), nil)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			_, err := f.close("ROOM1", f.visitor.Token)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	wins := 0
	for err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, store.ErrRoomClosed):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if wins != 1 || f.db.Count(t, "messages") != 1 || f.db.Count(t, "room_events") != 1 {
		t.Fatalf("%d wins, %d messages, %d outbox rows; want 1 each", wins, f.db.Count(t, "messages"), f.db.Count(t, "room_events"))
	}
}

// The procedure and the portable transaction write the same rows: two
// databases seeded alike, the same closes through each path with the same
// clock and message ids, then every row of the tables a close writes
// compared column by column.
func TestWritePathsWriteTheSameRows(t *testing.T) {
	if !testServerHasProcedures(t) {
		t.Skip("the test server has no stored procedures: the portable path is the only one")
	}
	opened := time.Date(2026, 3, 1, 10, 0, 0, 123e6, time.UTC)
	now := func() time.Time { return opened.Add(90*time.Second + 456*time.Millisecond) }
	dump := map[bool]map[string][][]string{}
	for _, procedure := range []bool{false, true} {
		db := testdb.New(t)
		ids := 0
		st, err := store.NewForTest(context.Background(), db.DB, procedure, now, func() string { ids++; return fmt.Sprintf("MSG%d", ids) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		v := db.AddVisitor(t, "visitor1")
		anonymous := testdb.Visitor{ID: "visitor2", Token: "vtok-visitor2"}
		db.Exec(t, "INSERT INTO livechat_visitors (id, token) VALUES (?, ?)", anonymous.ID, anonymous.Token) // no username
		db.AddRoom(t, "PLAIN", v, opened, nil)
		db.AddRoom(t, "CALL", v, opened, "call-1")
		db.AddRoom(t, "ANON", anonymous, opened, nil)
		for i, ev := range []string{"AgentConnect", "Hold", "Unhold", "Hold"} {
			db.Exec(t, "INSERT INTO pbx_events (id, unique_id, event, call_unique_id, hold_time, ts) VALUES (?, ?, ?, 'call-1', '2.5', ?)",
				fmt.Sprintf("p%d", i), fmt.Sprintf("u%d", i), ev, opened.Add(time.Duration(i+1)*10*time.Second))
		}
		agent := store.Agent{ID: "agent1", Username: "user.agent1", Name: "Agent One"}
		for _, c := range []struct {
			rid, token string
			req        store.CloseRequest
		}{
			{"PLAIN", v.Token, store.CloseRequest{Agent: agent}},
			{"CALL", v.Token, store.CloseRequest{Agent: agent, Comment: "wrapped up ✓ 'quoted'", Tags: []string{"a", "b"}}},
			{"ANON", anonymous.Token, store.CloseRequest{Agent: store.Agent{ID: "bot"}, Tags: []string{"x"}}},
		} {
			c.req.Rid, c.req.VisitorToken = c.rid, c.token
			found, err := st.ReadRoom(context.Background(), c.rid, c.token)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.CloseRoom(context.Background(), c.req, found); err != nil {
				t.Fatalf("procedure %v, closing %s: %v", procedure, c.rid, err)
			}
		}
		dump[procedure] = map[string][][]string{}
		for _, table := range []string{"rooms", "messages", "room_events"} {
			dump[procedure][table] = dumpTable(t, db, table)
		}
	}
	for table, portable := range dump[false] {
		procedure := dump[true][table]
		if len(portable) != len(procedure) {
			t.Fatalf("%s: %d rows by the portable path, %d by the procedure", table, len(portable), len(procedure))
		}
		for i := range portable {
			if !slices.Equal(portable[i], procedure[i]) {
				t.Errorf("%s row %d differs:\nportable  %q\nprocedure %q", table, i, portable[i], procedure[i])
			}
		}
	}
	if n := len(dump[true]["messages"]); n != 3 {
		t.Fatalf("%d messages, want 3", n)
	}
}

// dumpTable returns every row of table, ordered by its first column, each
// column as text ("NULL" for NULL).
func dumpTable(t *testing.T, db *testdb.DB, table string) [][]string {
	t.Helper()
	rows, err := db.Query("SELECT * FROM " + table + " ORDER BY 1")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out [][]string
	for rows.Next() {
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := make([]string, len(cols))
		for i, v := range vals {
			row[i] = cols[i] + "=" + string(v)
			if v == nil {
				row[i] = cols[i] + "=NULL"
			}
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// A write that fails half way (the message's INSERT after the room's
// UPDATE) leaves nothing behind, not even on the connection that made it:
// the pool has one connection, so the next query would see an open
// transaction's own UPDATE.
func TestFailedCloseRollsBackFully(t *testing.T) { writePaths(t, failedCloseRollsBackFully) }

func failedCloseRollsBackFully(t *testing.T, procedure bool) {
	db := testdb.New(t)
	db.SetMaxOpenConns(1)
	st, err := store.NewForTest(context.Background(), db.DB, procedure, nil, func() string { return "TAKEN" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	v := db.AddVisitor(t, "visitor1")
	db.AddRoom(t, "ROOM1", v, time.Now().UTC(), nil)
	db.Exec(t, "INSERT INTO messages (id, rid, t, msg, ts, updated_at) VALUES ('TAKEN', 'OTHER', 'x', '', NOW(3), NOW(3))")
	found, err := st.ReadRoom(context.Background(), "ROOM1", v.Token)
	if err != nil {
		t.Fatal(err)
	}
	_, err = st.CloseRoom(context.Background(), store.CloseRequest{Rid: "ROOM1", VisitorToken: v.Token, Agent: store.Agent{ID: "a"}}, found)
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1062 {
		t.Fatalf("closing with a message id taken: %v, want the duplicate key error", err)
	}
	var open bool
	if err := db.QueryRow("SELECT open FROM rooms WHERE id = 'ROOM1'").Scan(&open); err != nil || !open {
		t.Fatalf("after the failed close the room reads open=%v (%v) on the pool's one connection, want open", open, err)
	}
	if n := db.Count(t, "room_events"); n != 0 {
		t.Fatalf("%d outbox rows, want none", n)
	}
}

// A lock wait timeout inside the write (innodb_lock_wait_timeout rolls
// back only the statement) is rolled back whole and run again, and the
// close lands once.
func TestLockWaitIsRetried(t *testing.T) { writePaths(t, lockWaitIsRetried) }

func lockWaitIsRetried(t *testing.T, procedure bool) {
	db := testdb.New(t)
	cfg := db.Cfg.Clone()
	cfg.Params = map[string]string{"innodb_lock_wait_timeout": "1"}
	waiting, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { waiting.Close() })
	st, err := store.NewForTest(context.Background(), waiting, procedure, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	v := db.AddVisitor(t, "visitor1")
	db.AddRoom(t, "ROOM1", v, time.Now().UTC(), nil)
	found, err := st.ReadRoom(context.Background(), "ROOM1", v.Token)
	if err != nil {
		t.Fatal(err)
	}
	// Another transaction holds the room's row for longer than one lock
	// wait and shorter than two.
	holder, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec("SELECT id FROM rooms WHERE id = 'ROOM1' FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(1500*time.Millisecond, func() { holder.Rollback() }) //nolint:errcheck
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := st.CloseRoom(ctx, store.CloseRequest{Rid: "ROOM1", VisitorToken: v.Token, Agent: store.Agent{ID: "a"}}, found)
	if err != nil {
		t.Fatalf("close behind a lock held past one lock wait: %v", err)
	}
	if once := 1 + 4*btoi(!procedure); res.RoundTrips <= once {
		t.Fatalf("%d round trips, want more than one attempt's %d", res.RoundTrips, once)
	}
	if m, ev := db.Count(t, "messages"), db.Count(t, "room_events"); m != 1 || ev != 1 {
		t.Fatalf("%d messages, %d outbox rows; want 1 each", m, ev)
	}
}
