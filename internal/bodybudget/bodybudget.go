// Package bodybudget caps the bytes of request bodies a process holds at
// once: a weighted semaphore over bytes, handed out in arrival order, whose
// size can change while it is in use (a config reload).
//
// golang.org/x/sync/semaphore does the same but cannot be resized, and
// this is small enough to own.
package bodybudget

import (
	"context"
	"sync"
)

// Budget hands out bytes up to its limit. The zero value holds nothing;
// use New.
type Budget struct {
	mu      sync.Mutex
	limit   int64
	used    int64
	waiters []*waiter // in arrival order
}

type waiter struct {
	n     int64
	ready chan struct{} // closed once the bytes are granted
}

// New returns a budget of limit bytes.
func New(limit int64) *Budget { return &Budget{limit: limit} }

// Acquire waits, in arrival order, until n bytes are free or ctx is done.
// A nil return must be followed by Release(n). n larger than the limit
// waits until ctx is done: it can never be granted.
func (b *Budget) Acquire(ctx context.Context, n int64) error {
	if n <= 0 {
		return nil
	}
	b.mu.Lock()
	if len(b.waiters) == 0 && b.used+n <= b.limit {
		b.used += n
		b.mu.Unlock()
		return nil
	}
	w := &waiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		// Granted just as ctx ended: give the bytes back.
		b.used -= n
	default:
		for i, o := range b.waiters {
			if o == w {
				b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
				break
			}
		}
	}
	b.grant()
	return ctx.Err()
}

// TryAcquire takes n bytes if they are free now and nobody waits before it.
// A true return must be followed by Release(n).
func (b *Budget) TryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > 0 && (len(b.waiters) > 0 || b.used+n > b.limit) {
		return false
	}
	b.used += max(n, 0)
	return true
}

// Release returns n bytes.
func (b *Budget) Release(n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.grant()
	b.mu.Unlock()
}

// SetLimit changes the limit; bytes already handed out stay handed out.
func (b *Budget) SetLimit(limit int64) {
	b.mu.Lock()
	b.limit = limit
	b.grant()
	b.mu.Unlock()
}

// Limit is the most bytes handed out at once.
func (b *Budget) Limit() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit
}

// Used is how many bytes are handed out now.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// grant hands free bytes to the longest waiting. The first waiter that does
// not fit stops the line, so that a large request is not passed over for
// ever by small ones.
func (b *Budget) grant() {
	for len(b.waiters) > 0 && b.used+b.waiters[0].n <= b.limit {
		w := b.waiters[0]
		b.waiters = b.waiters[1:]
		b.used += w.n
		close(w.ready)
	}
}
