package systemtest

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

const body503 = `{"success":false,"error":"service-unavailable"}`

func TestDatabaseDown(t *testing.T) {
	e, proxy := newProxiedEnv(t, "db_timeout 1s")
	before := e.snapshot(t)
	proxy.Down()
	for i := 0; i < 3; i++ {
		start := time.Now()
		got := e.post(t, closeBody(e.roomID, e.visitor.Token))
		expect(t, got, 503, body503)
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("503 after %v, want within db_timeout", took)
		}
		// Other traffic still reaches the upstream.
		if got := e.do(t, http.MethodGet, "/api/info", nil, ""); got.status != 200 || got.header.Get("X-Upstream") != "yes" {
			t.Fatalf("pass-through while the database is down: %d %s", got.status, got.body)
		}
	}
	e.expectUnchanged(t, before)
	proxy.Up()
	// The pool recovers without a restart.
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := e.post(t, closeBody(e.roomID, e.visitor.Token))
		if got.status == 200 {
			expect(t, got, 200, `{"rid":"ROOM1","success":true}`)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after the database came back: %d %s", got.status, got.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.expectNothingUpstream(t)
}

func TestDatabaseHangs(t *testing.T) {
	e, proxy := newProxiedEnv(t, "db_timeout 500ms")
	before := e.snapshot(t)
	proxy.Freeze()
	start := time.Now()
	got := e.post(t, closeBody(e.roomID, e.visitor.Token))
	took := time.Since(start)
	expect(t, got, 503, body503)
	if took < 400*time.Millisecond || took > 3*time.Second {
		t.Fatalf("answered after %v, want about db_timeout (500ms)", took)
	}
	proxy.Up()
	e.expectUnchanged(t, before)
}

// TestRowLockedPastTimeout: a close that waits on a row lock past
// db_timeout answers 503 and leaves nothing behind, on either write path
// (the procedure is told the time left and rolls back, rather than commit
// once the lock is granted to a gateway that gave up).
//
// The "fast" case is a recent closer's: its one CALL of the fast close's
// procedure waits for the lock, and rolls back past the time it was given.
func TestRowLockedPastTimeout(t *testing.T) {
	t.Run("portable", func(t *testing.T) { rowLockedPastTimeout(t, envOptions{portable: true}) })
	t.Run("procedure", func(t *testing.T) { rowLockedPastTimeout(t, envOptions{ordinary: true}) })
	t.Run("fast", func(t *testing.T) { rowLockedPastTimeout(t, envOptions{}) })
}

func rowLockedPastTimeout(t *testing.T, o envOptions) {
	o.extra = []string{"db_timeout 700ms"}
	e, _ := startEnv(t, o)
	if !o.portable && !e.procedurePath(t) {
		t.Skipf("%s has no procedure path", e.engine(t))
	}
	if !o.portable && !o.ordinary {
		e.db.AddRoom(t, "WARM", e.visitor, time.Now().UTC(), nil)
		expect(t, e.post(t, closeBody("WARM", e.visitor.Token)), 200, `{"rid":"WARM","success":true}`)
	}
	before := e.snapshot(t)
	ctx := context.Background()
	holder, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.ExecContext(ctx, "UPDATE rooms SET queue = 'held' WHERE id = ?", e.roomID); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := e.post(t, closeBody(e.roomID, e.visitor.Token))
	took := time.Since(start)
	expect(t, got, 503, body503)
	if took > 3*time.Second {
		t.Fatalf("answered after %v", took)
	}
	// The lock holder's commit is not disturbed and nothing of the close landed.
	if err := holder.Commit(); err != nil {
		t.Fatalf("the lock holder could not commit: %v", err)
	}
	var queue string
	e.db.QueryRow("SELECT queue FROM rooms WHERE id = ?", e.roomID).Scan(&queue)
	if queue != "held" {
		t.Fatalf("holder's write lost: queue=%q", queue)
	}
	after := e.snapshot(t)
	if after.messages != before.messages || after.events != before.events || !e.room(t, e.roomID).open {
		t.Fatalf("half-written close: %+v", after)
	}
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
}

// TestStallAtTransactionEdges: a server that stalls at BEGIN or at COMMIT
// (as Galera does while it evicts a dead node), or at the CALL that commits
// where closes are written by the procedure, still gets every request
// answered within db_timeout, with 503; the connection is dropped, not
// reused; and a retry afterwards sees what really happened.
func TestStallAtTransactionEdges(t *testing.T) {
	const timeout = 500 * time.Millisecond
	const slack = 400 * time.Millisecond // generous for a loaded CI machine; the README reports what is measured
	type stallCase struct {
		name      string
		portable  bool   // the gateway writes by the portable transaction
		fast      bool   // a recent closer's close: one CALL of the fast close's procedure
		freeze    []byte // the bytes a client sends that start the stall
		deliver   bool   // they reach the server before the stall
		thaw      func(*testdb.Proxy)
		retry     int
		retryBody string
	}
	query := func(q string) []byte { return append([]byte{0x03}, q...) } // COM_QUERY
	// The CALL's execution is the one packet that carries its message type.
	call := []byte(store.MessageTypeEnded)
	dropLink := func(p *testdb.Proxy) { p.Down(); p.Up() }
	thawed := func(p *testdb.Proxy) { p.Up() }
	closedOK, roomClosed := `{"rid":"ROOM1","success":true}`, `{"success":false,"error":"room-closed"}`
	cases := []stallCase{
		// COMMIT never reaches the server and the connection dies: the close
		// did not happen, and a retry closes the room.
		{"COMMIT held, then the link drops", true, false, query("COMMIT"), false, dropLink, 200, closedOK},
		// COMMIT reaches the server, its answer is lost: the close landed
		// although the client got 503; a retry answers room-closed.
		{"COMMIT applied, answer lost", true, false, query("COMMIT"), true, thawed, 400, roomClosed},
		{"BEGIN held", true, false, query("START TRANSACTION"), false, dropLink, 200, closedOK},
	}
	if testServerHasProcedures(t, testdb.New(t)) {
		// One CALL is the whole write, and commits: held, nothing happened;
		// applied with its answer lost, the close landed.
		cases = append(cases,
			stallCase{"CALL held, then the link drops", false, false, call, false, dropLink, 200, closedOK},
			stallCase{"CALL applied, answer lost", false, false, call, true, thawed, 400, roomClosed},
			stallCase{"fast CALL held, then the link drops", false, true, call, false, dropLink, 200, closedOK},
			stallCase{"fast CALL applied, answer lost", false, true, call, true, thawed, 400, roomClosed},
		)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, proxy := startEnv(t, envOptions{extra: []string{fmt.Sprintf("db_timeout %s", timeout)}, proxied: true,
				portable: c.portable, ordinary: !c.portable && !c.fast})
			written := 0 // messages and outbox rows each
			if c.fast {
				e.db.AddRoom(t, "WARM", e.visitor, time.Now().UTC(), nil)
				expect(t, e.post(t, closeBody("WARM", e.visitor.Token)), 200, `{"rid":"WARM","success":true}`)
				written = 1
			}
			proxy.FreezeWhenSent(c.freeze, c.deliver)
			start := time.Now()
			got := e.post(t, closeBody(e.roomID, e.visitor.Token))
			took := time.Since(start)
			expect(t, got, 503, body503)
			t.Logf("answered in %v (db_timeout %v)", took, timeout)
			if took > timeout+slack {
				t.Fatalf("answered after %v, want within db_timeout %v", took, timeout)
			}
			c.thaw(proxy)
			if c.deliver {
				// The held COMMIT was applied; wait until it is visible.
				deadline := time.Now().Add(5 * time.Second)
				for e.room(t, e.roomID).open && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
			}
			expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), c.retry, c.retryBody)
			if e.room(t, e.roomID).open {
				t.Fatal("the room is still open")
			}
			if n := e.db.Count(t, "messages"); n != written+1 {
				t.Fatalf("%d messages, want exactly %d", n, written+1)
			}
			if n := e.db.Count(t, "room_events"); n != written+1 {
				t.Fatalf("%d outbox rows, want exactly %d", n, written+1)
			}
		})
	}
}

// TestCloseSlotsBoundTheDatabaseWork: with db_concurrency 1, a close
// stuck on a row lock holds the only slot; a close of another, free room
// waits for that slot rather than joining the pile-up in the database, and
// goes through once the stuck close gives up at its db_timeout.
func TestCloseSlotsBoundTheDatabaseWork(t *testing.T) {
	e := newEnv(t, "db_timeout 2500ms", "db_concurrency 1", "rate_limit off")
	e.db.AddRoom(t, "FREE", e.visitor, time.Now().UTC(), nil)
	ctx := context.Background()
	holder, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	if _, err := holder.ExecContext(ctx, "UPDATE rooms SET queue = 'held' WHERE id = ?", e.roomID); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		response
		err error
		at  time.Time
	}
	stuck := make(chan answer, 1)
	go func() {
		r, err := e.tryPost(closeBody(e.roomID, e.visitor.Token))
		stuck <- answer{r, err, time.Now()}
	}()
	// The stuck close has the slot once its UPDATE waits for the row lock.
	// The free close is sent when it has waited a second, so that the free
	// close, which waits within its own db_timeout, has a second of it left
	// when the stuck one gives up.
	for deadline := time.Now().Add(5 * time.Second); closeWaitedSeconds(t, e.db) < 1; time.Sleep(20 * time.Millisecond) {
		select {
		case s := <-stuck:
			t.Fatalf("the close of the locked room was answered before it waited a second for the lock: %d %s %v", s.status, s.body, s.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the close of the locked room never waited for the lock")
		}
	}
	freeSent := time.Now()
	free := e.post(t, closeBody("FREE", e.visitor.Token))
	freeAt := time.Now()
	s := <-stuck
	if s.err != nil {
		t.Fatal(s.err)
	}
	expect(t, s.response, 503, body503)
	expect(t, free, 200, `{"rid":"FREE","success":true}`)
	if !freeSent.Before(s.at) {
		t.Fatal("the free room's close was sent after the stuck one gave up: nothing tested the slot")
	}
	if freeAt.Before(s.at) {
		t.Fatal("the free room's close did not wait for the only slot")
	}
	if !e.room(t, e.roomID).open {
		t.Fatal("the room whose close timed out was closed")
	}
}

// closeWaitedSeconds is how many whole seconds the room close's UPDATE
// running on db's database has been waiting (-1: none is running). The
// process list says, not information_schema.INNODB_TRX, whose server-wide
// cache stays stale while anyone reads it more often than every 100 ms.
func closeWaitedSeconds(t *testing.T, db *testdb.DB) int {
	t.Helper()
	var secs sql.NullInt64
	if err := db.QueryRow("SELECT MAX(TIME) FROM information_schema.PROCESSLIST WHERE DB = ? AND INFO LIKE 'UPDATE rooms SET open = FALSE%'", db.Name).Scan(&secs); err != nil {
		t.Fatal(err)
	}
	if !secs.Valid {
		return -1
	}
	return int(secs.Int64)
}
