package rcsync

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"
	"time"
)

// Freshness keeps how stale the gateway's copy of Rocket.Chat is, read from
// sync_state by one cheap query a period (never one per request), so that
// the handler can refuse, or pass on, requests past max_staleness. Times
// are the MySQL server's, as the sync writes them: the gateways' clocks do
// not enter.
type Freshness struct {
	db     *sql.DB
	source string
	every  time.Duration

	// synced: a sync_state row exists (a database no sync feeds is never
	// stale). age is the staleness measured at measuredAt (local monotonic
	// time); unknownAge: the sync has not completed a snapshot.
	synced     atomic.Bool
	unknownAge atomic.Bool
	age        atomic.Int64
	measuredAt atomic.Int64

	start  sync.Once
	cancel context.CancelFunc
	done   chan struct{}
	// read is closed once the first read has ended, done or failed.
	read chan struct{}
}

var processStart = time.Now()

// NewFreshness reads source's state every period once Start is called.
func NewFreshness(db *sql.DB, source string, every time.Duration) *Freshness {
	return &Freshness{db: db, source: source, every: every, read: make(chan struct{})}
}

// Start reads the state at once, then every period until Stop, in the
// background: a silent database must not hold up the config load that
// starts the reader.
func (f *Freshness) Start() {
	f.start.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		f.cancel, f.done = cancel, make(chan struct{})
		go func() {
			defer close(f.done)
			f.Refresh(ctx)
			close(f.read)
			t := time.NewTicker(f.every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					f.Refresh(ctx)
				}
			}
		}()
	})
}

// WaitFirstRead waits until the first read has ended, for at most max or
// until ctx is done, so that a request arriving just after the start does
// not close a room on data whose age is not yet known. False when the wait
// ended first. Once the first read is done it returns at once, with no
// timer.
func (f *Freshness) WaitFirstRead(ctx context.Context, max time.Duration) bool {
	select {
	case <-f.read:
		return true
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	select {
	case <-f.read:
		return true
	case <-ctx.Done():
		return false
	}
}

// Stop ends the reading.
func (f *Freshness) Stop() {
	if f.cancel != nil {
		f.cancel()
		<-f.done
	}
}

// Refresh reads the state now. A failed read keeps the last measure, which
// goes on ageing: a database the gateway cannot read makes it stale.
func (f *Freshness) Refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, f.every+time.Second)
	defer cancel()
	st, err := ReadState(ctx, f.db, f.source)
	if err != nil {
		return
	}
	now := int64(time.Since(processStart))
	if st == nil {
		f.synced.Store(false)
		return
	}
	age, known := st.Staleness()
	f.age.Store(int64(age))
	f.unknownAge.Store(!known)
	f.measuredAt.Store(now)
	f.synced.Store(true)
}

// Staleness is the current staleness: the last measure plus the time since
// it was taken; synced is false when no sync feeds this database, known
// false while the sync has not completed its snapshot.
func (f *Freshness) Staleness() (age time.Duration, synced, known bool) {
	if !f.synced.Load() {
		return 0, false, false
	}
	if f.unknownAge.Load() {
		return 0, true, false
	}
	since := time.Since(processStart) - time.Duration(f.measuredAt.Load())
	return time.Duration(f.age.Load()) + since, true, true
}

// Stale reports whether the data is older than max (or of unknown age) on
// a database a sync feeds.
func (f *Freshness) Stale(max time.Duration) bool {
	age, synced, known := f.Staleness()
	return synced && (!known || age > max)
}
