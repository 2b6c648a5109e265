package dblimit

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fill takes every slot the limiter gives, then releases them all, each
// with the given time per round trip: one full round of demand.
func fill(t *testing.T, l *Limiter, perRoundTrip time.Duration) {
	t.Helper()
	n := l.Limit()
	for range n {
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		l.Release(3*perRoundTrip, 3)
	}
}

// rounds runs n rounds of fill.
func rounds(t *testing.T, l *Limiter, n int, perRoundTrip time.Duration) {
	t.Helper()
	for range n {
		fill(t, l, perRoundTrip)
	}
}

func expectLimit(t *testing.T, l *Limiter, want int, after string) {
	t.Helper()
	if got := l.Limit(); got != want {
		t.Fatalf("limit %d after %s, want %d", got, after, want)
	}
}

func TestLimitRisesWhileRoundTripsStayFast(t *testing.T) {
	l := New(2, 10)
	var seen []int
	l.OnChange = func(n int) { seen = append(seen, n) }
	rounds(t, l, 100, time.Millisecond)
	expectLimit(t, l, 10, "fast rounds at full demand (the ceiling)")
	if fmt.Sprint(seen) != "[3 4 5 6 7 8 9 10]" {
		t.Fatalf("OnChange saw %v, want each step from 3 to 10", seen)
	}
	// Round trips three times slower than the fastest: the database queues.
	rounds(t, l, 100, 3*time.Millisecond)
	expectLimit(t, l, 2, "slow rounds (the floor)")
}

func TestLimitStaysWithoutDemand(t *testing.T) {
	l := New(4, 64)
	for range 200 {
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		l.Release(time.Millisecond, 1) // one request at a time never reaches the limit
	}
	expectLimit(t, l, 4, "one request at a time")
}

func TestFixedWhenCeilingIsFloor(t *testing.T) {
	l := New(8, 8)
	rounds(t, l, 50, time.Millisecond)
	expectLimit(t, l, 8, "fast rounds with the ceiling at the floor")
}

func TestFailureHalvesDownToFloor(t *testing.T) {
	l := New(3, 40)
	rounds(t, l, 200, time.Millisecond)
	expectLimit(t, l, 40, "fast rounds")
	for _, want := range []int{20, 10, 5, 3, 3} {
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		l.ReleaseFailed()
		expectLimit(t, l, want, "a failure")
	}
}

func TestWaitersGoInArrivalOrderAndGiveUpAtTheirDeadline(t *testing.T) {
	l := New(1, 1)
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 3)
	var wg sync.WaitGroup
	wait := func(name string, ctx context.Context) {
		defer wg.Done()
		if err := l.Acquire(ctx); err != nil {
			order <- name + ":" + err.Error()
			return
		}
		order <- name
		l.Release(time.Millisecond, 1)
	}
	wg.Add(3)
	go wait("first", context.Background())
	waitForWaiters(t, l, 1)
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	go wait("impatient", short)
	waitForWaiters(t, l, 2)
	go wait("third", context.Background())
	waitForWaiters(t, l, 3)
	if got := <-order; got != "impatient:"+context.DeadlineExceeded.Error() {
		t.Fatalf("got %q, want the impatient waiter to give up first", got)
	}
	l.Release(time.Millisecond, 1)
	wg.Wait()
	if a, b := <-order, <-order; a != "first" || b != "third" {
		t.Fatalf("slots went to %q then %q, want first then third", a, b)
	}
}

// Requests that wait ahead get the free slots before every request that
// waited longer without, in arrival order among themselves; one that gives
// up leaves its place.
func TestAheadGoesFirst(t *testing.T) {
	l := New(1, 1)
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 4)
	var wg sync.WaitGroup
	wait := func(name string, ctx context.Context, acquire func(context.Context) error) {
		defer wg.Done()
		if err := acquire(ctx); err != nil {
			order <- name + ":" + err.Error()
			return
		}
		order <- name
		l.Release(time.Millisecond, 1)
	}
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	wg.Add(4)
	go wait("unknown", context.Background(), l.Acquire)
	waitForWaiters(t, l, 1)
	go wait("known, impatient", short, l.AcquireAhead)
	waitForWaiters(t, l, 2)
	go wait("known 1", context.Background(), l.AcquireAhead)
	waitForWaiters(t, l, 3)
	go wait("known 2", context.Background(), l.AcquireAhead)
	waitForWaiters(t, l, 4)
	if got := <-order; got != "known, impatient:"+context.DeadlineExceeded.Error() {
		t.Fatalf("got %q, want the impatient waiter to give up first", got)
	}
	l.Release(time.Millisecond, 1)
	wg.Wait()
	if a, b, c := <-order, <-order, <-order; a != "known 1" || b != "known 2" || c != "unknown" {
		t.Fatalf("slots went to %q, %q, %q; want known 1, known 2, unknown", a, b, c)
	}
}

func waitForWaiters(t *testing.T, l *Limiter, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if l.Waiting() == n {
			return
		}
	}
	t.Fatalf("never saw %d waiters", n)
}

// TestNeverMoreThanTheLimit runs many requests with mixed outcomes and
// cancellations and checks that no more hold a slot at once than the
// ceiling allows, and that every slot comes back.
func TestNeverMoreThanTheLimit(t *testing.T) {
	l := New(2, 6)
	var holding, most atomic.Int32
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			for j := range 200 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+(i+j)%3)*time.Millisecond)
				err := l.Acquire(ctx)
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					continue
				}
				n := holding.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(time.Duration(j%2) * 100 * time.Microsecond)
				holding.Add(-1)
				if j%17 == 0 {
					l.ReleaseFailed()
				} else {
					l.Release(100*time.Microsecond, 1)
				}
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m > 6 {
		t.Fatalf("%d requests held a slot at once, ceiling 6", m)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inFlight != 0 || len(l.waiters) != 0 {
		t.Fatalf("after all requests: %d in flight, %d waiting", l.inFlight, len(l.waiters))
	}
}

// A reload moves the bounds of a limiter kept across it: the limit comes
// within them, and a raised floor lets waiters in at once.
func TestSetBounds(t *testing.T) {
	l := New(2, 10)
	rounds(t, l, 100, time.Millisecond)
	expectLimit(t, l, 10, "fast rounds")
	l.SetBounds(2, 6)
	expectLimit(t, l, 6, "a lower ceiling")
	l.SetBounds(1, 1)
	expectLimit(t, l, 1, "a fixed bound of 1")
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- l.Acquire(context.Background()) }()
	for waiting := false; !waiting; {
		l.mu.Lock()
		waiting = len(l.waiters) == 1
		l.mu.Unlock()
		runtime.Gosched()
	}
	l.SetBounds(2, 4)
	expectLimit(t, l, 2, "a raised floor")
	if err := <-got; err != nil {
		t.Fatalf("the waiter was not let in by the raised floor: %v", err)
	}
}

// A request whose time is up never takes a slot: neither a free one nor one
// handed to it as its deadline passes (a pile-up hands slots one after
// another to requests out of time, which would each fail on the database).
func TestNoSlotForARequestOutOfTime(t *testing.T) {
	l := New(1, 1)
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Acquire(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("a free slot went to a request out of time: %v", err)
	}
	for i := range 200 {
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		got := make(chan error, 1)
		go func() { got <- l.Acquire(ctx) }()
		waitForWaiters(t, l, 1)
		cancel()
		l.Release(time.Millisecond, 1) // hands the slot on, perhaps before the waiter sees ctx end
		if err := <-got; err == nil {
			t.Fatalf("round %d: a waiter took a slot after its context ended", i)
		}
	}
	// Every slot came back: the next request takes one at once.
	ctx, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("the slot was not given back: %v", err)
	}
}

// Requests that wait ahead never starve the others: while both wait, one
// slot in 4 goes to the longest waiting of the others.
func TestOthersGetAShareWhileAheadWait(t *testing.T) {
	l := New(1, 1)
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 10)
	var wg sync.WaitGroup
	queue := func(name string, acquire func(context.Context) error, waiting int) {
		wg.Go(func() {
			if err := acquire(context.Background()); err != nil {
				t.Error(err)
				return
			}
			order <- name
			l.Release(time.Millisecond, 1)
		})
		waitForWaiters(t, l, waiting)
	}
	queue("other 1", l.Acquire, 1)
	queue("other 2", l.Acquire, 2)
	for i := range 8 {
		queue(fmt.Sprintf("ahead %d", i+1), l.AcquireAhead, 3+i)
	}
	l.Release(time.Millisecond, 1)
	wg.Wait()
	close(order)
	var got []string
	for name := range order {
		got = append(got, name)
	}
	want := []string{"ahead 1", "ahead 2", "ahead 3", "other 1", "ahead 4", "ahead 5", "ahead 6", "other 2", "ahead 7", "ahead 8"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("slots went to\n%v\nwant\n%v", got, want)
	}
}

// clock is a fake time for the limiter, moved by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClocked(floor, ceiling int) (*Limiter, *clock) {
	c := &clock{t: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}
	l := New(floor, ceiling)
	l.now = c.now
	return l, c
}

// serve runs n requests one after another, none of them waiting, each
// holding its slot for a millisecond.
func serve(t *testing.T, l *Limiter, n int) {
	t.Helper()
	for range n {
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		l.Release(time.Millisecond, 1)
	}
}

// waitOnce makes one request wait for a slot for wait: it holds every
// slot, queues one more, and lets everything go, each request having held
// its slot for a millisecond.
func waitOnce(t *testing.T, l *Limiter, c *clock, wait time.Duration) {
	t.Helper()
	n := l.Limit()
	for range n {
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan error)
	go func() { got <- l.Acquire(context.Background()) }()
	waitForWaiters(t, l, 1)
	c.advance(wait)
	l.Release(time.Millisecond, 1)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	for range n {
		l.Release(time.Millisecond, 1)
	}
}

func expectCongested(t *testing.T, l *Limiter, want int, after string) {
	t.Helper()
	if got := l.CongestedWindows(); got != want {
		t.Fatalf("CongestedWindows() = %d after %s, want %d", got, after, want)
	}
}

// Congestion follows the time requests wait for slots, not the requests:
// every slot in use with no one waiting, or a short wait, leaves room;
// waits of a quarter of the time slots are held are a congested window,
// counted in a run that lasts until a window goes by without them.
func TestCongestedFollowsSlotWaits(t *testing.T) {
	l, c := newClocked(2, 2)
	expectCongested(t, l, 0, "no requests")
	for range 50 {
		fill(t, l, time.Millisecond)
	}
	expectCongested(t, l, 0, "every slot in use, no one waiting")

	c.advance(CongestionWindow)
	serve(t, l, 40)
	waitOnce(t, l, c, 5*time.Millisecond) // 5 ms waiting, 43 ms held
	expectCongested(t, l, 0, "a short wait")

	// 10 ms waiting, 23 ms held, window after window.
	for i := 1; i <= SustainedWindows; i++ {
		c.advance(CongestionWindow)
		serve(t, l, 20)
		waitOnce(t, l, c, 10*time.Millisecond)
		expectCongested(t, l, i, fmt.Sprintf("%d windows in a row of waits over a quarter of the time held", i))
	}

	c.advance(CongestionWindow)
	serve(t, l, 100)
	expectCongested(t, l, SustainedWindows, "the window after the run, without waits so far")

	c.advance(CongestionWindow)
	expectCongested(t, l, 0, "a window without waits")

	waitOnce(t, l, c, 100*time.Millisecond)
	expectCongested(t, l, 1, "waits again")
	c.advance(CongestionWindow)
	expectCongested(t, l, 1, "the window after them")
	c.advance(CongestionWindow)
	waitOnce(t, l, c, 100*time.Millisecond)
	expectCongested(t, l, 1, "waits in the window after the next")
	c.advance(time.Minute)
	expectCongested(t, l, 0, "a minute without requests")

	// A request that gives up waiting waited too.
	for range 2 {
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error)
	go func() { gaveUp <- l.Acquire(ctx) }()
	waitForWaiters(t, l, 1)
	c.advance(50 * time.Millisecond)
	cancel()
	if err := <-gaveUp; err == nil {
		t.Fatal("a cancelled wait took a slot")
	}
	expectCongested(t, l, 1, "a request gave up waiting")
	l.Release(time.Millisecond, 1)
	l.Release(time.Millisecond, 1)
}
