package outbox

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// Claim takes, in id order, the first deliverable event of each room: due,
// not under a live lease, and with nothing of its room pending or parked
// before it. On a real database: the rules are SQL.
func TestClaim(t *testing.T) {
	db := testdb.New(t)
	ctx := context.Background()
	st := newTestStore(t, db)
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	created := now.Add(-time.Minute)
	for _, r := range []struct {
		id          int64
		rid, state  string
		nextAttempt any // NULL: due
		claimedBy   any
		claimUntil  any
	}{
		{1, "R1", "pending", nil, nil, nil},                               // claimed
		{2, "R1", "pending", nil, nil, nil},                               // behind 1
		{3, "R2", "delivered", nil, nil, nil},                             // done
		{4, "R2", "pending", nil, nil, nil},                               // claimed: 3 is delivered
		{5, "R3", "parked", nil, nil, nil},                                // parked
		{6, "R3", "pending", nil, nil, nil},                               // behind a parked event
		{7, "R4", "pending", now.Add(time.Second), nil, nil},              // not due yet
		{8, "R4", "pending", nil, nil, nil},                               // behind 7
		{9, "R5", "pending", nil, "other-1", now.Add(10 * time.Second)},   // another's live lease
		{10, "R6", "pending", nil, "other-2", now.Add(-time.Millisecond)}, // an expired lease: claimed
		{11, "R7", "pending", now, nil, nil},                              // due exactly now: claimed
		{12, "R8", "pending", now.Add(-time.Hour), nil, nil},              // due long ago: claimed
		{13, "R8", "delivered", nil, nil, nil},                            // a later delivered event holds nothing up
	} {
		db.Exec(t, `INSERT INTO room_events (id, rid, type, payload, created_at, delivery_state, next_attempt_at, claimed_by, claim_until, attempts)
VALUES (?, ?, 'room.closed', '{"n": 1}', ?, ?, ?, ?, ?, 2)`, r.id, r.rid, created, r.state, r.nextAttempt, r.claimedBy, r.claimUntil)
	}

	claimIDs := func(owner string, limit int) []int64 {
		t.Helper()
		events, _, err := st.Claim(ctx, owner, now, 30*time.Second, limit, scanFactor*limit, now.Add(5*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, e := range events {
			if e.Type != "room.closed" || string(e.Payload) != `{"n": 1}` || !e.CreatedAt.Equal(created) || e.Attempts != 2 {
				t.Errorf("event %d read back as %+v", e.ID, e)
			}
			ids = append(ids, e.ID)
		}
		return ids
	}

	if got, want := claimIDs("a-1", 2), []int64{1, 4}; !slices.Equal(got, want) {
		t.Fatalf("a claim of 2 took %v, want %v", got, want)
	}
	if got, want := claimIDs("b-1", 10), []int64{10, 11, 12}; !slices.Equal(got, want) {
		t.Fatalf("the next claim took %v, want %v (the first claim's events are leased)", got, want)
	}
	if got := claimIDs("c-1", 10); len(got) != 0 {
		t.Fatalf("a third claim took %v, want nothing", got)
	}
	if n := db.Count(t, "room_events WHERE claimed_by = 'a-1' AND claim_until = ?", now.Add(30*time.Second)); n != 2 {
		t.Fatalf("%d events leased to a-1 until now+lease, want 2", n)
	}
	// Past the leases, the events not yet recorded are claimable again.
	later, _, err := st.Claim(ctx, "d-1", now.Add(31*time.Second), 30*time.Second, 10, scanFactor*10, now.Add(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, e := range later {
		ids = append(ids, e.ID)
	}
	if want := []int64{1, 4, 7, 9, 10, 11, 12}; !slices.Equal(ids, want) {
		t.Fatalf("after the leases ran out a claim took %v, want %v", ids, want)
	}
}

// An event found blocked by the claim's scan, whose blocker is delivered
// (and its room woken) before the claim defers it, stays due: it is not
// deferred until the recheck with no wake to come.
func TestDeferSkipsABlockerDeliveredSinceTheScan(t *testing.T) {
	db := testdb.New(t)
	db.Exec(t, "INSERT INTO room_events (rid, type, payload, created_at) VALUES ('R', 'room.closed', '{}', NOW(3)), ('R', 'room.closed', '{}', NOW(3))")
	ctx := context.Background()
	st := newTestStore(t, db)
	// Another claimer delivers the first event between this claim's scan
	// and its writes.
	st.afterScan = func() {
		db.Exec(t, "UPDATE room_events SET delivery_state = 'delivered', delivered_at = NOW(3) WHERE rid = 'R' ORDER BY id LIMIT 1")
	}
	now := time.Now().UTC()
	recheck := now.Add(time.Hour)
	if _, _, err := st.Claim(ctx, "gw", now, time.Minute, 16, 32, recheck); err != nil {
		t.Fatal(err)
	}
	if n := db.Count(t, "room_events WHERE rid = 'R' AND delivery_state = 'pending' AND next_attempt_at IS NOT NULL"); n != 0 {
		t.Fatal("the second event was deferred to the recheck though nothing blocks it any more")
	}
	// Still blocked at the defer: deferred, as before.
	st.afterScan = nil
	db.Exec(t, "INSERT INTO room_events (rid, type, payload, created_at) VALUES ('Q', 'room.closed', '{}', NOW(3)), ('Q', 'room.closed', '{}', NOW(3))")
	if _, _, err := st.Claim(ctx, "gw", now, time.Minute, 16, 32, recheck); err != nil {
		t.Fatal(err)
	}
	if n := db.Count(t, "room_events WHERE rid = 'Q' AND claimed_by IS NULL AND next_attempt_at IS NOT NULL"); n != 1 {
		t.Fatal("an event behind a pending one of its room was not deferred")
	}
}

// newTestStore prepares the outbox's statements on db, closed when the
// test ends.
func newTestStore(t *testing.T, db *testdb.DB) *Store {
	t.Helper()
	st, err := NewStore(context.Background(), db.DB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
