package bodybudget

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestAcquireWithinTheLimit(t *testing.T) {
	b := New(10)
	for _, n := range []int64{4, 6} {
		if err := b.Acquire(context.Background(), n); err != nil {
			t.Fatalf("Acquire(%d): %v", n, err)
		}
	}
	if b.Used() != 10 {
		t.Fatalf("used %d, want 10", b.Used())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Acquire(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire past the limit: %v, want the deadline", err)
	}
	if b.Used() != 10 {
		t.Fatalf("a refused Acquire left used at %d", b.Used())
	}
	if b.TryAcquire(1) {
		t.Fatal("TryAcquire past the limit succeeded")
	}
	b.Release(4)
	if !b.TryAcquire(4) {
		t.Fatal("TryAcquire of free bytes failed")
	}
	b.Release(4)
	b.Release(6)
	if b.Used() != 0 {
		t.Fatalf("used %d after releasing everything", b.Used())
	}
}

// Waiters are served in arrival order, and a large one at the head is not
// passed over by a small one behind it.
func TestWaitersInArrivalOrder(t *testing.T) {
	b := New(10)
	for range 2 {
		if err := b.Acquire(context.Background(), 4); err != nil {
			t.Fatal(err)
		}
	}
	granted := make(chan int64, 2)
	for _, n := range []int64{6, 1} {
		go func() {
			if err := b.Acquire(context.Background(), n); err != nil {
				t.Error(err)
			}
			granted <- n
		}()
		waitFor(t, func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return len(b.waiters) > 0 && b.waiters[len(b.waiters)-1].n == n
		})
	}
	select {
	case n := <-granted:
		t.Fatalf("%d granted while 8 of 10 are held and 6 waits first", n)
	case <-time.After(20 * time.Millisecond):
	}
	b.Release(4) // 6 free: the first waiter's turn, and then none is left for the second
	if n := <-granted; n != 6 {
		t.Fatalf("granted %d first, want 6", n)
	}
	select {
	case n := <-granted:
		t.Fatalf("%d granted with 10 of 10 held", n)
	case <-time.After(20 * time.Millisecond):
	}
	b.Release(4)
	if n := <-granted; n != 1 {
		t.Fatalf("granted %d, want 1", n)
	}
	if b.Used() != 7 {
		t.Fatalf("used %d, want 7", b.Used())
	}
}

// A waiter that gives up leaves the line, and those behind it move up.
func TestGivingUpLeavesTheLine(t *testing.T) {
	b := New(10)
	if err := b.Acquire(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error)
	go func() { gaveUp <- b.Acquire(ctx, 10) }()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 1 })
	granted := make(chan struct{})
	go func() {
		if err := b.Acquire(context.Background(), 5); err != nil {
			t.Error(err)
		}
		close(granted)
	}()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 2 })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("the waiter that gave up got %v", err)
	}
	<-granted
	if b.Used() != 10 {
		t.Fatalf("used %d, want 10", b.Used())
	}
}

func TestSetLimit(t *testing.T) {
	b := New(4)
	if err := b.Acquire(context.Background(), 4); err != nil {
		t.Fatal(err)
	}
	granted := make(chan struct{})
	go func() {
		if err := b.Acquire(context.Background(), 4); err != nil {
			t.Error(err)
		}
		close(granted)
	}()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 1 })
	b.SetLimit(8)
	<-granted
	b.SetLimit(2) // below what is held: nothing more until enough is released
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Acquire(ctx, 1); err == nil {
		t.Fatal("granted past a lowered limit")
	}
	b.Release(4)
	b.Release(4)
	if err := b.Acquire(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}
