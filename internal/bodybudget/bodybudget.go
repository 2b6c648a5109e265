// Package bodybudget caps the bytes of request bodies a process holds at
// once: a weighted semaphore over bytes, handed out in arrival order, whose
// size can change while it is in use (a config reload), and in which no one
// holder (a user) takes more than its fair share.
//
// Bytes handed out cannot be taken back while a body is half read, so the
// share is a cap at all times, not only while others wait: a holder gets at
// most the limit divided by the holders active (those holding bytes or
// waiting for them), and never more than half the limit while it is alone,
// so that a newcomer always finds room. The share is never below the floor
// (the largest body a holder must be able to hold whole).
//
// golang.org/x/sync/semaphore does the weighted part but cannot be resized
// or shared fairly, and this is small enough to own.
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
	floor   int64 // the least share
	used    int64
	holders map[string]*holder
	waiters []*waiter // in arrival order
}

// holder is what one key holds and how many of its requests wait.
type holder struct {
	held    int64
	waiting int
}

type waiter struct {
	key   string
	n     int64
	ready chan struct{} // closed once the bytes are granted
}

// New returns a budget of limit bytes whose share is never below floor.
func New(limit, floor int64) *Budget {
	return &Budget{limit: limit, floor: floor, holders: map[string]*holder{}}
}

// Acquire waits until n bytes are free for key within its share, or ctx is
// done. A nil return must be followed by Release(key, n). Bytes go in
// arrival order, but a waiter held back by its own share does not hold up
// the others. n larger than the share waits until ctx is done: it can
// never be granted.
func (b *Budget) Acquire(ctx context.Context, key string, n int64) error {
	if n <= 0 {
		return nil
	}
	b.mu.Lock()
	w := &waiter{key: key, n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.holder(key).waiting++
	b.grant()
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
		b.release(key, n)
	default:
		for i, o := range b.waiters {
			if o == w {
				b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
				break
			}
		}
		b.holders[key].waiting--
		b.forget(key)
	}
	b.grant()
	return ctx.Err()
}

// TryAcquire takes n bytes for key if they are free now, within its share,
// and nobody waits. A true return must be followed by Release(key, n).
func (b *Budget) TryAcquire(key string, n int64) bool {
	if n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.waiters) > 0 || !b.fits(key, n) {
		return false
	}
	b.used += n
	b.holder(key).held += n
	return true
}

// Release returns n bytes of key's.
func (b *Budget) Release(key string, n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.release(key, n)
	b.grant()
}

func (b *Budget) release(key string, n int64) {
	b.used -= n
	b.holders[key].held -= n
	b.forget(key)
}

// SetLimit changes the limit and the floor of the share; bytes already
// handed out stay handed out.
func (b *Budget) SetLimit(limit, floor int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limit, b.floor = limit, floor
	b.grant()
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

// share is the most bytes key may hold now.
func (b *Budget) share(key string) int64 {
	active := int64(len(b.holders))
	if _, ok := b.holders[key]; !ok {
		active++
	}
	return max(b.floor, b.limit/max(2, active))
}

// fits tells whether key may take n more bytes now.
func (b *Budget) fits(key string, n int64) bool {
	var held int64
	if h, ok := b.holders[key]; ok {
		held = h.held
	}
	return b.used+n <= b.limit && held+n <= b.share(key)
}

func (b *Budget) holder(key string) *holder {
	h, ok := b.holders[key]
	if !ok {
		h = &holder{}
		b.holders[key] = h
	}
	return h
}

// forget drops a key that holds and waits for nothing: it no longer
// counts among those sharing the budget.
func (b *Budget) forget(key string) {
	if h := b.holders[key]; h.held == 0 && h.waiting == 0 {
		delete(b.holders, key)
	}
}

// grant hands free bytes to the longest waiting. A waiter held back by its
// key's share is passed over, and so are the later ones of its key (each
// key's requests are served in their order); the first other waiter that
// does not fit stops the line, so that a large request is not passed over
// for ever by small ones.
func (b *Budget) grant() {
	var heldBack map[string]bool
	for i := 0; i < len(b.waiters); {
		w := b.waiters[i]
		h := b.holders[w.key]
		if heldBack[w.key] || h.held+w.n > b.share(w.key) {
			if heldBack == nil {
				heldBack = map[string]bool{}
			}
			heldBack[w.key] = true
			i++
			continue
		}
		if b.used+w.n > b.limit {
			return
		}
		b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
		b.used += w.n
		h.held += w.n
		h.waiting--
		close(w.ready)
	}
}
