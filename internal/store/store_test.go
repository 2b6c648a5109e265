package store_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

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
