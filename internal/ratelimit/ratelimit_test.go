package ratelimit

import (
	"testing"
	"time"
)

func TestFixedWindow(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(3, time.Minute)
	l.now = func() time.Time { return now }
	for i := 1; i <= 3; i++ {
		d := l.Take("a")
		if !d.Allowed || d.Remaining != 3-i || !d.Reset.Equal(now.Add(time.Minute)) {
			t.Fatalf("request %d: %+v", i, d)
		}
	}
	now = now.Add(20*time.Second + 500*time.Millisecond)
	d := l.Take("a")
	if d.Allowed || d.Remaining != 0 {
		t.Fatalf("4th: %+v", d)
	}
	if s := d.RetryAfterSeconds(now); s != 40 { // 39.5s left, rounded up
		t.Fatalf("retry after %d", s)
	}
	if d := l.Take("b"); !d.Allowed || d.Remaining != 2 {
		t.Fatalf("another client shares the count: %+v", d)
	}
	now = now.Add(40 * time.Second) // the window ended: a new one starts here
	if d := l.Take("a"); !d.Allowed || d.Remaining != 2 || !d.Reset.Equal(now.Add(time.Minute)) {
		t.Fatalf("after reset: %+v", d)
	}
	if len(l.counts) != 1 {
		t.Fatalf("old window's counts kept: %v", l.counts)
	}
}

// A returned request is as if it was never counted, in its own window
// only.
func TestReturn(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(2, time.Minute)
	l.now = func() time.Time { return now }
	l.Take("a")
	d := l.Take("a")
	l.Return("a", d)
	if d := l.Take("a"); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after a return, the 2nd request: %+v", d)
	}
	old := l.Take("a") // refused, counted
	now = now.Add(time.Minute)
	fresh := l.Take("a")
	l.Return("a", old) // its window has ended: nothing to return
	if d := l.Take("a"); !d.Allowed || d.Remaining != 0 || fresh.Remaining != 1 {
		t.Fatalf("a return from an ended window changed the new one: %+v after %+v", d, fresh)
	}
	l.Return("b", fresh) // never counted: nothing to return
	if d := l.Take("b"); d.Remaining != 1 {
		t.Fatalf("b: %+v", d)
	}
}
