// Package dblimit bounds the requests that work on the database at once and
// adapts the bound to how fast the database answers.
//
// A fixed bound that suits a database on the same rack throttles one that is
// a few milliseconds away: there a request spends most of its time on the
// wire, and the database could serve many more at once. So the limit starts
// at a floor and moves with the time per round trip, the way latency-based
// congestion control does:
//
//   - it rises by one while the limit is in use and round trips take less
//     than Tolerance times the fastest seen lately (the database is not
//     queueing);
//   - it falls by one while they take longer, never below the floor;
//   - it halves, down to the floor, when a request's database work fails
//     (a timeout, a lost connection);
//   - it never passes the ceiling.
//
// The floor is the bound for a database that queues even at light load (the
// same machine, a small server): the limit then stays at the floor.
//
// CongestedWindows tells work that comes after the requests (the outbox)
// whether the database is their bottleneck, and for how long: requests have
// spent a good share of their time waiting for slots, for that many windows
// in a row. Waits follow from the rules above: the limit rises while the
// database keeps up, so requests queue for slots only once it no longer
// does (round trips slow down and the limit falls, or the limit is at the
// ceiling). Deferrable work (a catch-up) gives way at the first congested
// window; work that must keep pace with the requests (delivering what they
// write as they write it) only once congestion is sustained, since a burst
// that queues for a moment and drains is no reason to fall behind.
package dblimit

import (
	"context"
	"sync"
	"time"
)

const (
	// Tolerance is how much slower than the fastest recent round trip the
	// average may be before the limit stops rising and starts falling.
	Tolerance = 2.0
	// minWindow is how long the fastest round trip is remembered (two
	// windows are kept), so that a slower network path is learnt.
	minWindow = 30 * time.Second
	// minBatch is the fewest samples averaged before the limit moves.
	minBatch = 8
	// AheadShare is how many slots in a row go to AcquireAhead's while
	// others wait, before one goes to the longest waiting of the others:
	// real agents keep most of a saturated database, and an agent not yet
	// known (its first close on this gateway) is never starved by them.
	AheadShare = 3
	// CongestionWindow: slot waits are summed over windows this long.
	CongestionWindow = 500 * time.Millisecond
	// SustainedWindows congested windows in a row (the current one
	// included) are sustained congestion.
	SustainedWindows = 2
	// CongestionShare: a window is congested when requests spent at least
	// 1/CongestionShare as long waiting for slots as holding them. A short
	// wait when a burst of requests meets the limit is not congestion;
	// requests that queue behind every slot are.
	CongestionShare = 4
)

// Limiter hands out slots in arrival order. The zero value is not usable;
// use New.
type Limiter struct {
	floor, ceiling int
	now            func() time.Time

	// OnChange, when set before first use, is called with each new limit
	// (under the limiter's lock: keep it quick, as a gauge's Set is).
	OnChange func(limit int)

	mu       sync.Mutex
	limit    int
	inFlight int
	waiters  []chan struct{} // in arrival order; closed when handed a slot
	ahead    []chan struct{} // AcquireAhead's, served before waiters
	aheadRun int             // slots handed in a row to ahead while waiters waited

	sum        time.Duration // per-round-trip samples since the last move
	n          int
	busy       bool // the limit was reached since the last move
	minCur     time.Duration
	minPrev    time.Duration
	windowFrom time.Time

	// Slot waits, for Congested: the current window's time spent waiting
	// for slots and holding them, and how many windows in a row before it
	// were congested.
	pressureFrom       time.Time
	waitedFor, heldFor time.Duration
	congestedRun       int
}

// New returns a limiter between floor and ceiling (ceiling below floor is
// taken as floor, a fixed bound), starting at floor.
func New(floor, ceiling int) *Limiter {
	floor = max(floor, 1)
	return &Limiter{floor: floor, ceiling: max(floor, ceiling), limit: floor, now: time.Now}
}

// SetBounds moves the floor and the ceiling (ceiling below floor is taken
// as floor), bringing the limit within them.
func (l *Limiter) SetBounds(floor, ceiling int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.floor = max(floor, 1)
	l.ceiling = max(l.floor, ceiling)
	l.setLimit(min(max(l.limit, l.floor), l.ceiling))
	l.handOff()
}

// Limit is the current limit.
func (l *Limiter) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limit
}

// Waiting is how many requests wait for a slot now.
func (l *Limiter) Waiting() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.waiters) + len(l.ahead)
}

// Acquire waits for a slot, in arrival order, until ctx is done. Every nil
// return must be followed by one Release or ReleaseFailed.
func (l *Limiter) Acquire(ctx context.Context) error { return l.acquire(ctx, &l.waiters) }

// AcquireAhead is Acquire for a request that goes before the Acquire's
// still waiting (those of credentials known to be real, while a flood of
// unknown ones queues), in arrival order among themselves: of the slots
// handed while both wait, AheadShare in a row go ahead, then one to the
// others.
func (l *Limiter) AcquireAhead(ctx context.Context) error { return l.acquire(ctx, &l.ahead) }

func (l *Limiter) acquire(ctx context.Context, queue *[]chan struct{}) error {
	if err := ctx.Err(); err != nil {
		return err // a request already out of time never takes a slot
	}
	l.mu.Lock()
	if l.inFlight < l.limit && len(l.ahead) == 0 && len(*queue) == 0 {
		l.inFlight++
		l.busy = l.busy || l.inFlight >= l.limit
		l.mu.Unlock()
		return nil
	}
	l.busy = true
	ready := make(chan struct{})
	*queue = append(*queue, ready)
	queued := l.now()
	l.mu.Unlock()

	select {
	case <-ready:
		if ctx.Err() == nil {
			l.mu.Lock()
			l.countWait(queued)
			l.mu.Unlock()
			return nil
		}
		// Handed a slot as ctx ended (select picks either when both are
		// ready): a slot given to a request with no time left is wasted,
		// and it would fail on the database at once, so give it on.
	case <-ctx.Done():
	}
	l.mu.Lock()
	l.countWait(queued)
	for i, w := range *queue {
		if w == ready {
			*queue = append((*queue)[:i], (*queue)[i+1:]...)
			l.mu.Unlock()
			return ctx.Err()
		}
	}
	// Handed a slot just as ctx ended: give it back.
	l.inFlight--
	l.handOff()
	l.mu.Unlock()
	return ctx.Err()
}

// Release returns a slot held for held, during which the request made
// roundTrips round trips to the database (0: nothing to learn from, such as
// a request whose client went away).
func (l *Limiter) Release(held time.Duration, roundTrips int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if roundTrips > 0 {
		l.sample(held / time.Duration(roundTrips))
	}
	l.rollWindow()
	l.heldFor += held
	l.inFlight--
	l.handOff()
}

// ReleaseFailed returns the slot of a request whose database work failed:
// the limit halves, down to the floor.
func (l *Limiter) ReleaseFailed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setLimit(max(l.floor, l.limit/2))
	l.sum, l.n, l.busy = 0, 0, false
	l.inFlight--
	l.handOff()
}

func (l *Limiter) sample(perRoundTrip time.Duration) {
	now := l.now()
	if now.Sub(l.windowFrom) > minWindow {
		l.minPrev, l.minCur, l.windowFrom = l.minCur, 0, now
	}
	if l.minCur == 0 || perRoundTrip < l.minCur {
		l.minCur = perRoundTrip
	}
	l.sum += perRoundTrip
	l.n++
	if l.n < max(minBatch, l.limit) {
		return
	}
	fastest := l.minCur
	if l.minPrev > 0 && l.minPrev < fastest {
		fastest = l.minPrev
	}
	average := l.sum / time.Duration(l.n)
	switch {
	case float64(average) > Tolerance*float64(fastest):
		l.setLimit(max(l.floor, l.limit-1))
	case l.busy:
		l.setLimit(min(l.ceiling, l.limit+1))
	}
	l.sum, l.n, l.busy = 0, 0, l.inFlight >= l.limit
}

// CongestedWindows reports for how many windows in a row (CongestionWindow
// each) the database has been the requests' bottleneck: requests spent at
// least 1/CongestionShare as long waiting for slots as holding them. The
// current window counts once it is congested; a window that was not ends
// the run, though a run stays at least 1 until the window after the last
// congested one is over. 0: the database has room for more than the
// requests.
func (l *Limiter) CongestedWindows() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rollWindow()
	if l.congestedNow() {
		return l.congestedRun + 1
	}
	return l.congestedRun
}

// countWait adds the wait of a request queued at queued, which has its
// slot or has given up.
func (l *Limiter) countWait(queued time.Time) {
	l.rollWindow()
	l.waitedFor += l.now().Sub(queued)
}

func (l *Limiter) congestedNow() bool {
	return l.waitedFor > 0 && l.waitedFor*CongestionShare >= l.heldFor
}

// rollWindow starts a new window once the current one is over; a window
// with no requests at all leaves nothing congested.
func (l *Limiter) rollWindow() {
	now := l.now()
	elapsed := now.Sub(l.pressureFrom)
	if elapsed < CongestionWindow {
		return
	}
	if elapsed < 2*CongestionWindow && l.congestedNow() {
		l.congestedRun++
	} else {
		l.congestedRun = 0
	}
	l.waitedFor, l.heldFor, l.pressureFrom = 0, 0, now
}

func (l *Limiter) setLimit(n int) {
	if n != l.limit {
		l.limit = n
		if l.OnChange != nil {
			l.OnChange(n)
		}
	}
}

// handOff gives free slots to the longest waiting requests, those that
// wait ahead first, but for one in AheadShare+1 while others wait.
func (l *Limiter) handOff() {
	for l.inFlight < l.limit && len(l.ahead)+len(l.waiters) > 0 {
		queue := &l.ahead
		switch {
		case len(l.waiters) == 0:
			l.aheadRun = 0
		case len(l.ahead) == 0 || l.aheadRun >= AheadShare:
			queue, l.aheadRun = &l.waiters, 0
		default:
			l.aheadRun++
		}
		close((*queue)[0])
		*queue = (*queue)[1:]
		l.inFlight++
	}
}
