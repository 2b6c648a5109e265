package rcsync_test

import (
	"context"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/rcsync"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

func TestFreshness(t *testing.T) {
	db := testdb.New(t)
	ctx := context.Background()
	f := rcsync.NewFreshness(db.DB, "rocketchat", time.Hour)
	f.Refresh(ctx)
	if f.Stale(time.Nanosecond) {
		t.Fatal("a database no sync feeds counts as stale")
	}
	db.Exec(t, `INSERT INTO sync_state (source, phase, updated_at) VALUES ('rocketchat', 'snapshot', NOW(3))`)
	f.Refresh(ctx)
	if !f.Stale(24 * time.Hour) {
		t.Fatal("a sync before its first complete snapshot is not stale")
	}
	// Caught up a second ago, but the last reconciliation began 30 minutes
	// ago: a token revoked since may still be in MySQL.
	db.Exec(t, `UPDATE sync_state SET phase = 'poll', caught_up_at = NOW(3) - INTERVAL 1 SECOND, reconciled_at = NOW(3) - INTERVAL 30 MINUTE`)
	f.Refresh(ctx)
	age, synced, known := f.Staleness()
	if !synced || !known || age < 30*time.Minute || age > time.Hour {
		t.Fatalf("staleness %v synced %v known %v", age, synced, known)
	}
	if f.Stale(time.Hour) || !f.Stale(10*time.Minute) {
		t.Fatalf("Stale(1h) %v, Stale(10m) %v at %v", f.Stale(time.Hour), f.Stale(10*time.Minute), age)
	}
	// The other source of staleness: the poll.
	db.Exec(t, `UPDATE sync_state SET caught_up_at = NOW(3) - INTERVAL 2 HOUR, reconciled_at = NOW(3)`)
	f.Refresh(ctx)
	if !f.Stale(time.Hour) {
		t.Fatal("a poll two hours old is not stale past an hour")
	}
}

// Start reads in the background; a request that waits for the first read
// sees its result, not the unread default.
func TestFreshnessFirstReadIsWaitedFor(t *testing.T) {
	db := testdb.New(t)
	db.Exec(t, `INSERT INTO sync_state (source, phase, updated_at) VALUES ('rocketchat', 'snapshot', NOW(3))`)
	f := rcsync.NewFreshness(db.DB, "rocketchat", time.Hour)
	f.Start()
	defer f.Stop()
	if !f.WaitFirstRead(context.Background(), 10*time.Second) {
		t.Fatal("the first read did not end")
	}
	if !f.Stale(24 * time.Hour) {
		t.Fatal("after the first read, a sync mid-snapshot is not stale")
	}
}
