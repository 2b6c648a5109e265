package closerhint

import (
	"fmt"
	"testing"
)

func TestSet(t *testing.T) {
	s := New()
	if s.Has("u1", "h1") {
		t.Fatal("an empty set has u1")
	}
	s.Add("u1", "h1")
	if !s.Has("u1", "h1") {
		t.Fatal("u1 was added but is missing")
	}
	for _, other := range [][2]string{{"u1", "h2"}, {"u2", "h1"}, {"u1", "h1 "}, {"u1\x00h", "1"}} {
		if s.Has(other[0], other[1]) {
			t.Fatalf("%q is not in the set", other)
		}
	}
	s.Remove("u1", "h2") // not there: changes nothing
	if !s.Has("u1", "h1") {
		t.Fatal("removing another pair removed u1")
	}
	s.Remove("u1", "h1")
	if s.Has("u1", "h1") {
		t.Fatal("u1 was removed but is still there")
	}
}

// Lookup returns what Remember last learned, and nothing for a pair added
// without it or removed.
func TestRemember(t *testing.T) {
	s := New()
	s.Add("u1", "h1")
	if _, ok := s.Lookup("u1", "h1"); ok {
		t.Fatal("Lookup found what Add never learned")
	}
	k := Known{Username: "agent", Name: "Agent", BypassRateLimit: true}
	s.Remember("u1", "h1", k)
	if got, ok := s.Lookup("u1", "h1"); !ok || got != k || !s.Has("u1", "h1") {
		t.Fatalf("Lookup: %+v, %v; want %+v", got, ok, k)
	}
	if _, ok := s.Lookup("u1", "h2"); ok {
		t.Fatal("Lookup found another pair")
	}
	k.BypassRateLimit = false
	s.Remember("u1", "h1", k)
	if got, _ := s.Lookup("u1", "h1"); got != k {
		t.Fatalf("after a second Remember: %+v, want %+v", got, k)
	}
	s.Remove("u1", "h1")
	if _, ok := s.Lookup("u1", "h1"); ok {
		t.Fatal("Lookup found a removed pair")
	}
}

// TestSetIsBounded: past its size, the set forgets old pairs rather than
// grow, and never claims a pair it was not given.
func TestSetIsBounded(t *testing.T) {
	s := New()
	const n = 10 * slots
	for i := range n {
		s.Add(fmt.Sprint("u", i), "h")
	}
	kept := 0
	for i := range n {
		if s.Has(fmt.Sprint("u", i), "h") {
			kept++
		}
	}
	if kept == 0 || kept > slots {
		t.Fatalf("%d of %d pairs kept, want between 1 and %d", kept, n, slots)
	}
	if s.Has("u-never", "h") {
		t.Fatal("a pair never added is in the set")
	}
}

func BenchmarkHas(b *testing.B) {
	s := New()
	s.Add("user-id-1234567", "qwertyuiopasdfghjklzxcvbnmqwertyuiopasdfgh=")
	for b.Loop() {
		s.Has("user-id-1234567", "qwertyuiopasdfghjklzxcvbnmqwertyuiopasdfgh=")
	}
}
