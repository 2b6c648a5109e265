package outbox

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// nopObserver observes nothing.
type nopObserver struct{}

func (nopObserver) Delivered(Event)           {}
func (nopObserver) Failed(Event, error, bool) {}
func (nopObserver) Status(Status)             {}
func (nopObserver) Purged(int64)              {}
func (nopObserver) Error(string, error)       {}

// overlapReceiver counts the POSTs in flight at once. Each one waits until
// more than batch are in flight (another claim loop's batch has joined) or
// hold has passed, so that loops that run side by side are seen to.
type overlapReceiver struct {
	batch    int32
	hold     time.Duration
	inFlight atomic.Int32
	most     atomic.Int32
	mu       sync.Mutex
	seen     map[int64]int
	joined   chan struct{}
	once     sync.Once
}

func (rc *overlapReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var b Body
	if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	n := rc.inFlight.Add(1)
	defer rc.inFlight.Add(-1)
	for m := rc.most.Load(); n > m && !rc.most.CompareAndSwap(m, n); m = rc.most.Load() {
	}
	if n > rc.batch {
		rc.once.Do(func() { close(rc.joined) })
	}
	select {
	case <-rc.joined:
	case <-time.After(rc.hold):
	}
	rc.mu.Lock()
	rc.seen[b.ID]++
	rc.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// paceBacklog delivers a backlog of events (two per room) with Congestion
// answering one congested window or none, and returns the most POSTs seen in flight at once;
// every event must arrive exactly once.
func paceBacklog(t *testing.T, congested bool) int32 {
	const batch, events = 4, 40
	db := testdb.New(t)
	db.SeedEvents(t, events, "CONCAT('P', s.n % 20)", "", "")
	st := newTestStore(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc := &overlapReceiver{batch: batch, hold: 300 * time.Millisecond, seen: map[int64]int{}, joined: make(chan struct{})}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	var asked atomic.Int64
	d := NewDeliverer(st, Config{
		URL: srv.URL, Timeout: 5 * time.Second, MaxAttempts: 3, BackoffBase: time.Second, BackoffMax: time.Minute,
		Batch: batch, Lease: 30 * time.Second, PollInterval: 20 * time.Millisecond,
		Congestion: func() int {
			asked.Add(1)
			if congested {
				return 1
			}
			return 0
		},
	}, nopObserver{})
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	for deadline := time.Now().Add(60 * time.Second); db.Count(t, "room_events WHERE delivery_state = 'delivered'") < events; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events delivered in a minute", db.Count(t, "room_events WHERE delivery_state = 'delivered'"), events)
		}
	}
	cancel()
	<-done
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.seen) != events {
		t.Errorf("%d distinct events reached the receiver, want %d", len(rc.seen), events)
	}
	for id, n := range rc.seen {
		if n != 1 {
			t.Errorf("event %d delivered %d times", id, n)
		}
	}
	if asked.Load() == 0 {
		t.Error("Congestion was never asked during a catch-up")
	}
	return rc.most.Load()
}

// While the closes are congested, a catch-up is one claim loop: never more
// than a batch in flight.
func TestCatchUpKeepsToOneLoopWhileCongested(t *testing.T) {
	if most := paceBacklog(t, true); most > 4 {
		t.Fatalf("%d POSTs in flight at once while congested, want at most the batch (4)", most)
	}
}

// While the database has room, a catch-up runs more claim loops side by
// side, each room's events still in order and each delivered once.
func TestCatchUpTakesMoreLoopsWhileTheDatabaseHasRoom(t *testing.T) {
	if most := paceBacklog(t, false); most <= 4 {
		t.Fatalf("at most %d POSTs in flight at once, want more than one batch (4): no extra claim loop ran", most)
	}
}

// streamOf delivers events inserted one at a time, each after the one
// before it was delivered, with Congestion answering windows and a
// poll_interval of an hour, and returns how many of them arrived (the
// first, found by the first claim, always does).
func streamOf(t *testing.T, windows, events int) int {
	db := testdb.New(t)
	st := newTestStore(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	t.Cleanup(srv.Close)
	d := NewDeliverer(st, Config{
		URL: srv.URL, Timeout: 5 * time.Second, MaxAttempts: 3, BackoffBase: time.Second, BackoffMax: time.Minute,
		Batch: 4, Lease: 30 * time.Second, PollInterval: time.Hour,
		Congestion: func() int { return windows },
	}, nopObserver{})
	delivered := func() int { return db.Count(t, "room_events WHERE delivery_state = 'delivered'") }
	db.SeedEvents(t, 1, "'S'", "", "")
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for i := 1; i <= events; i++ {
		if i > 1 {
			db.SeedEvents(t, 1, "'S'", "", "")
		}
		// Long enough for a claim on any machine; an event left for the
		// poll_interval (an hour) does not arrive in it.
		for deadline := time.Now().Add(5 * time.Second); delivered() < i; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				return delivered()
			}
		}
	}
	return delivered()
}

// The steady stream of new events keeps pace through a brief congestion
// (one window, as a burst of closes makes): each event is claimed within a
// batch's time of the last, not a poll_interval. Sustained congestion
// makes it wait the poll_interval.
func TestStreamGivesWayOnlyToSustainedCongestion(t *testing.T) {
	if got := streamOf(t, 1, 5); got != 5 {
		t.Errorf("through one congested window: %d of 5 streamed events delivered, want all", got)
	}
	if got := streamOf(t, yieldWindows, 3); got != 1 {
		t.Errorf("through sustained congestion: %d of 3 streamed events delivered before the poll_interval, want only the first", got)
	}
}
