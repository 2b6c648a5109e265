package systemtest

import (
	"context"
	"net/http"
	"testing"
	"time"
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

func TestRowLockedPastTimeout(t *testing.T) {
	e := newEnv(t, "db_timeout 700ms")
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
