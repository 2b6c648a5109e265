// Package ratelimit is Rocket.Chat's default REST API limiter for one route:
// a fixed window shared by all clients of the route, with a count per client
// IP inside it. Like Meteor's rate limiter, the window starts with the first
// request after the previous one ended, and all counts reset together, which
// also keeps memory bounded by the clients of a single window.
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// Limiter counts requests per key in fixed windows. A nil *Limiter allows
// everything.
type Limiter struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu        sync.Mutex
	windowEnd time.Time
	counts    map[string]int
}

// New returns a limiter that allows limit requests per key in each window.
func New(limit int, window time.Duration) *Limiter {
	return &Limiter{limit: limit, window: window, now: time.Now, counts: make(map[string]int)}
}

// Decision is the result of counting one request.
type Decision struct {
	Allowed   bool
	Limit     int
	Remaining int       // requests left in the window, floored at 0
	Reset     time.Time // when the window ends
}

// RetryAfterSeconds is the wait Rocket.Chat's message names: the time left
// in the window, rounded up to whole seconds.
func (d Decision) RetryAfterSeconds(now time.Time) int64 {
	return int64(math.Ceil(float64(d.Reset.Sub(now)) / float64(time.Second)))
}

// Take counts a request for key and says whether it is allowed. The request
// is counted before it is checked, so the (limit+1)th is the first refused.
func (l *Limiter) Take(key string) Decision {
	now := l.now()
	l.mu.Lock()
	if !now.Before(l.windowEnd) {
		l.windowEnd = now.Add(l.window)
		clear(l.counts)
	}
	n := l.counts[key] + 1
	l.counts[key] = n
	end := l.windowEnd
	l.mu.Unlock()
	return Decision{Allowed: n <= l.limit, Limit: l.limit, Remaining: max(l.limit-n, 0), Reset: end}
}

// Return uncounts a request that d counted for key, when the request
// turned out not to be one the limit counts; a window that has ended since
// is left alone, its counts are gone.
func (l *Limiter) Return(key string, d Decision) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.windowEnd.Equal(d.Reset) && l.counts[key] > 0 {
		l.counts[key]--
	}
}

// Now is the limiter's clock, for messages computed from a Decision.
func (l *Limiter) Now() time.Time { return l.now() }

// Destruct lets a Limiter live in a caddy.UsagePool: it holds no resources.
func (l *Limiter) Destruct() error { return nil }
