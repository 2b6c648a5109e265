package systemtest

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// roomsOf lists each room's event ids in id order.
func roomsOf(t *testing.T, db *testdb.DB) map[string][]int64 {
	t.Helper()
	rows, err := db.Query("SELECT rid, id FROM room_events ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	rooms := map[string][]int64{}
	for rows.Next() {
		var rid string
		var id int64
		if err := rows.Scan(&rid, &id); err != nil {
			t.Fatal(err)
		}
		rooms[rid] = append(rooms[rid], id)
	}
	return rooms
}

// TestOutboxKeepsRoomOrderAcrossRetries: 40 rooms of 15 events each, and a
// receiver that fails half of the attempts. No attempt of an event reaches
// the receiver before every earlier event of its room was accepted, and
// each event is delivered once.
func TestOutboxKeepsRoomOrderAcrossRetries(t *testing.T) {
	rc := startReceiver(t)
	rc.failRate.Store(50)
	db := testdb.New(t)
	db.SeedEvents(t, 600, "CONCAT('R', s.n % 40)", "", "")
	testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, "backoff 10ms 100ms\n\t\tmax_attempts 1000\n\t\tbatch 16"), "\trespond ok")
	got := rc.waitFor(t, eventIDs(t, db), 60*time.Second)
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %d delivered %d times", id, n)
		}
	}
	rc.checkNoAttemptOvertakes(t, roomsOf(t, db))
	rc.checkOrderAndSignatures(t)
	if n := db.Count(t, "room_events WHERE attempts > 0"); n < 100 {
		t.Errorf("only %d events failed an attempt: the test did not test retries", n)
	}
}

// TestOutboxNextOfARoomGoesAtOnce: an event waiting behind an earlier one of
// its room is deferred out of the claims' way (until backoff_max, an hour
// here) and made due again the moment the earlier one is delivered, so 30
// rooms of 10 events each drain in seconds.
func TestOutboxNextOfARoomGoesAtOnce(t *testing.T) {
	rc := startReceiver(t)
	db := testdb.New(t)
	db.SeedEvents(t, 300, "CONCAT('R', s.n % 30)", "", "")
	testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, "backoff 1s 1h"), "\trespond ok")
	rc.waitFor(t, eventIDs(t, db), 30*time.Second)
	rc.checkNoAttemptOvertakes(t, roomsOf(t, db))
	if n := db.Count(t, "room_events WHERE attempts > 0"); n != 0 {
		t.Errorf("%d events failed an attempt", n)
	}
}

// TestOutboxWaitsForTheEarliestRetry: with poll_interval at a minute, a
// failed attempt is retried when its backoff (200 ms) ends, not at the next
// poll.
func TestOutboxWaitsForTheEarliestRetry(t *testing.T) {
	rc := startReceiver(t)
	rc.failFirst.Store(true)
	db := testdb.New(t)
	db.SeedEvents(t, 20, "CONCAT('R', s.n)", "", "")
	started := time.Now()
	testcaddy.Start(t, strings.Replace(outboxGlobals(db.DSN, rc.URL, "backoff 200ms 200ms"), "poll_interval 20ms", "poll_interval 1m", 1), "\trespond ok")
	rc.waitFor(t, eventIDs(t, db), 30*time.Second)
	t.Logf("20 events, each failing its first attempt, delivered %v after the start", time.Since(started).Round(10*time.Millisecond))
	if n := db.Count(t, "room_events WHERE attempts = 1 AND delivery_state = 'delivered'"); n != 20 {
		t.Errorf("%d events delivered at their second attempt, want 20", n)
	}
}

// TestOutboxRetention: delivered events older than retain are purged, the
// recent ones and the parked ones (however old) kept; 'outbox replay
// --from' then says that it asks for purged events, and replays the rest.
func TestOutboxRetention(t *testing.T) {
	rc := startReceiver(t)
	db := testdb.New(t)
	db.SeedEvents(t, 3000, "CONCAT('D', s.n)", "delivery_state, delivered_at", "'delivered', NOW(3) - INTERVAL 8 DAY")
	db.SeedEvents(t, 50, "CONCAT('K', s.n)", "delivery_state, attempts, parked_at", "'parked', 10, NOW(3) - INTERVAL 30 DAY")
	db.SeedEvents(t, 100, "CONCAT('Y', s.n)", "delivery_state, delivered_at", "'delivered', NOW(3) - INTERVAL 1 DAY")
	testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, "retain 7d"), "\trespond ok")
	for deadline := time.Now().Add(30 * time.Second); db.Count(t, "room_events WHERE rid LIKE 'D%'") > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 3000 old delivered events left after 30 s", db.Count(t, "room_events WHERE rid LIKE 'D%'"))
		}
	}
	if n := db.Count(t, "room_events WHERE delivery_state = 'parked'"); n != 50 {
		t.Errorf("%d parked events kept, want 50", n)
	}
	if n := db.Count(t, "room_events WHERE rid LIKE 'Y%' AND delivery_state = 'delivered'"); n != 100 {
		t.Errorf("%d recent delivered events kept, want 100", n)
	}
	out, err := exec.Command(testcaddy.Binary(t), "rocketchat-voip", "outbox", "replay", "--from", "1", "--dsn", db.DSN).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "150 event(s) will be delivered again") ||
		!strings.Contains(string(out), "events from id 1 up to 3000 that were delivered longer ago than the outbox's retain were purged") {
		t.Fatalf("replay --from 1 over purged events: %v\n%s", err, out)
	}
	rc.waitFor(t, eventIDs(t, db), 30*time.Second)
	// From past the purge there is nothing to warn of.
	out, err = exec.Command(testcaddy.Binary(t), "rocketchat-voip", "outbox", "replay", "--from", "3001", "--dsn", db.DSN).CombinedOutput()
	if err != nil || strings.Contains(string(out), "purged") {
		t.Fatalf("replay --from 3001: %v\n%s", err, out)
	}
}

// TestOutboxRetainOff keeps delivered events however old.
func TestOutboxRetainOff(t *testing.T) {
	rc := startReceiver(t)
	db := testdb.New(t)
	db.SeedEvents(t, 500, "CONCAT('D', s.n)", "delivery_state, delivered_at", "'delivered', NOW(3) - INTERVAL 80 DAY")
	db.SeedEvents(t, 1, "'CANARY'", "", "")
	testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, "retain off"), "\trespond ok")
	rc.waitFor(t, eventIDs(t, db)[500:], 30*time.Second) // the app runs
	time.Sleep(time.Second)                              // a purge would have started with it
	if n := db.Count(t, "room_events WHERE delivery_state = 'delivered'"); n != 501 {
		t.Errorf("%d delivered events kept, want 501", n)
	}
}

// TestOutboxCatchesUpABacklog: 20,000 events (5,000 rooms of 4) pending when
// the receiver comes back are delivered once each, in each room's order.
// The rate is logged; the README's figure comes from the benchmark.
func TestOutboxCatchesUpABacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	rc := startReceiver(t)
	db := testdb.New(t)
	db.SeedEvents(t, 20000, "CONCAT('R', s.n % 5000)", "attempts, next_attempt_at", "2, NOW(3) - INTERVAL 1 SECOND")
	ids := eventIDs(t, db)
	started := time.Now()
	testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, ""), "\trespond ok")
	got := rc.waitFor(t, ids, 120*time.Second)
	took := time.Since(started)
	t.Logf("%d events drained in %v: %.0f events/s", len(ids), took.Round(10*time.Millisecond), float64(len(ids))/took.Seconds())
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %d delivered %d times", id, n)
		}
	}
	rc.checkNoAttemptOvertakes(t, roomsOf(t, db))
}
