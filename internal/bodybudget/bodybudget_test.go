package bodybudget

import (
	"context"
	"errors"
	"testing"
	"time"
)

// With a floor as large as the limit, one key may hold it all.
func TestAcquireWithinTheLimit(t *testing.T) {
	b := New(10, 10)
	for _, n := range []int64{4, 6} {
		if err := b.Acquire(context.Background(), "k", n); err != nil {
			t.Fatalf("Acquire(%d): %v", n, err)
		}
	}
	if b.Used() != 10 {
		t.Fatalf("used %d, want 10", b.Used())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Acquire(ctx, "k", 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire past the limit: %v, want the deadline", err)
	}
	if b.Used() != 10 {
		t.Fatalf("a refused Acquire left used at %d", b.Used())
	}
	if b.TryAcquire("k", 1) {
		t.Fatal("TryAcquire past the limit succeeded")
	}
	b.Release("k", 4)
	if !b.TryAcquire("k", 4) {
		t.Fatal("TryAcquire of free bytes failed")
	}
	b.Release("k", 4)
	b.Release("k", 6)
	if b.Used() != 0 {
		t.Fatalf("used %d after releasing everything", b.Used())
	}
}

// Waiters are served in arrival order, and a large one at the head is not
// passed over by a small one behind it.
func TestWaitersInArrivalOrder(t *testing.T) {
	b := New(10, 10)
	for range 2 {
		if err := b.Acquire(context.Background(), "k", 4); err != nil {
			t.Fatal(err)
		}
	}
	granted := make(chan int64, 2)
	for _, n := range []int64{6, 1} {
		go func() {
			if err := b.Acquire(context.Background(), "k", n); err != nil {
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
	b.Release("k", 4) // 6 free: the first waiter's turn, and then none is left for the second
	if n := <-granted; n != 6 {
		t.Fatalf("granted %d first, want 6", n)
	}
	select {
	case n := <-granted:
		t.Fatalf("%d granted with 10 of 10 held", n)
	case <-time.After(20 * time.Millisecond):
	}
	b.Release("k", 4)
	if n := <-granted; n != 1 {
		t.Fatalf("granted %d, want 1", n)
	}
	if b.Used() != 7 {
		t.Fatalf("used %d, want 7", b.Used())
	}
}

// A waiter that gives up leaves the line, and those behind it move up.
func TestGivingUpLeavesTheLine(t *testing.T) {
	b := New(10, 10)
	if err := b.Acquire(context.Background(), "k", 5); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error)
	go func() { gaveUp <- b.Acquire(ctx, "k", 10) }()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 1 })
	granted := make(chan struct{})
	go func() {
		if err := b.Acquire(context.Background(), "k", 5); err != nil {
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
	b := New(4, 4)
	if err := b.Acquire(context.Background(), "k", 4); err != nil {
		t.Fatal(err)
	}
	granted := make(chan struct{})
	go func() {
		if err := b.Acquire(context.Background(), "k", 4); err != nil {
			t.Error(err)
		}
		close(granted)
	}()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 1 })
	b.SetLimit(8, 8)
	<-granted
	b.SetLimit(2, 2) // below what is held: nothing more until enough is released
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Acquire(ctx, "k", 1); err == nil {
		t.Fatal("granted past a lowered limit")
	}
	b.Release("k", 4)
	b.Release("k", 4)
	if err := b.Acquire(context.Background(), "k", 2); err != nil {
		t.Fatal(err)
	}
}

// A key alone holds at most half the budget, so that another finds room
// at once; its waiter, held back by its share, does not hold up the other.
func TestOneKeyHoldsAtMostItsShare(t *testing.T) {
	b := New(100, 10)
	for range 5 {
		if !b.TryAcquire("attacker", 10) {
			t.Fatalf("TryAcquire within the share failed at %d held", b.Used())
		}
	}
	if b.TryAcquire("attacker", 10) {
		t.Fatal("a key alone took more than half the budget")
	}
	waited := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { waited <- b.Acquire(ctx, "attacker", 10) }()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 1 })
	short, cancelShort := context.WithTimeout(context.Background(), time.Second)
	defer cancelShort()
	if err := b.Acquire(short, "agent", 40); err != nil {
		t.Fatalf("another key waited behind a key at its share: %v", err)
	}
	if got := shareOf(b, "agent"); got != 50 {
		t.Fatalf("share of two keys %d, want 50", got)
	}
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("the waiter over its share got %v", err)
	}
	for range 5 {
		b.Release("attacker", 10)
	}
	b.Release("agent", 40)
	if b.Used() != 0 || len(b.holders) != 0 {
		t.Fatalf("used %d, holders %v after every release", b.Used(), b.holders)
	}
}

// The share is the limit over the keys active (holding or waiting), at
// least the floor; a key over its share once others come keeps what it
// holds but gets no more until it is back within its share.
func TestShareShrinksAsKeysArrive(t *testing.T) {
	b := New(90, 20)
	if got := shareOf(b, "a"); got != 45 {
		t.Fatalf("share of a key alone %d, want 45 (half)", got)
	}
	if !b.TryAcquire("a", 45) || !b.TryAcquire("b", 25) {
		t.Fatal("TryAcquire within the shares failed")
	}
	if got := shareOf(b, "c"); got != 30 {
		t.Fatalf("share of a third key %d, want 30", got)
	}
	if !b.TryAcquire("c", 20) {
		t.Fatal("the third key found no room")
	}
	granted := make(chan struct{})
	go func() {
		if err := b.Acquire(context.Background(), "a", 5); err != nil {
			t.Error(err)
		}
		close(granted)
	}()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 1 })
	b.Release("c", 20) // c is gone: two keys, shares of 45, and a at 45 still may not grow
	select {
	case <-granted:
		t.Fatal("a grew past its share")
	case <-time.After(20 * time.Millisecond):
	}
	b.Release("a", 10) // a at 35: room within its share again
	<-granted
	if got, want := b.Used(), int64(35+5+25); got != want {
		t.Fatalf("used %d, want %d", got, want)
	}
	// The floor: a share is never less than the largest body.
	if got := shareOf(New(100, 60), "x"); got != 60 {
		t.Fatalf("share with floor 60 is %d", got)
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

func shareOf(b *Budget, key string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.share(key)
}
