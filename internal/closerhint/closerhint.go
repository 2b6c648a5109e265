// Package closerhint remembers which credentials recently belonged to a
// user who may close rooms, so that the handler can choose its first query
// well. It is only a hint: the database still authenticates every request.
//
// A request whose credentials are remembered reads credentials and room in
// one query, so its close costs six round trips. Any other request (an
// unknown or random token, a user without the permission, the first close
// of a token on this gateway) reads the credentials alone, the cheaper
// query a 401 or a 403 needs, and reads the room in a second query only if
// it gets that far.
package closerhint

import (
	"crypto/subtle"
	"hash/maphash"
	"sync/atomic"
)

// slots bounds the memory (one small entry per slot) and is far more than
// the agents one gateway serves at once; two credentials that share a slot
// only cost each other the combined query.
const slots = 4096

// Set is a fixed-size, lock-free set of (user id, hashed token) pairs.
type Set struct {
	seed  maphash.Seed
	slots [slots]atomic.Pointer[entry]
}

type entry struct {
	userID, hashedToken string
	known               *Known // nil: added without what was learned
}

// Known is what the last authentication of a pair learned of its user,
// which a close by the same credentials expects to find again (the
// database checks that it still holds).
type Known struct {
	Username, Name  string // "" for NULL
	BypassRateLimit bool
}

// New returns an empty set.
func New() *Set { return &Set{seed: maphash.MakeSeed()} }

func (s *Set) slot(userID, hashedToken string) *atomic.Pointer[entry] {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(userID)
	h.WriteByte(0)
	h.WriteString(hashedToken)
	return &s.slots[h.Sum64()%slots]
}

func (e *entry) is(userID, hashedToken string) bool {
	// The hash of a login token is a secret: compare it in constant time.
	return e != nil && e.userID == userID &&
		subtle.ConstantTimeCompare([]byte(e.hashedToken), []byte(hashedToken)) == 1
}

// Has reports whether the pair was added and not removed since.
func (s *Set) Has(userID, hashedToken string) bool {
	return s.slot(userID, hashedToken).Load().is(userID, hashedToken)
}

// Add remembers the pair, in place of whatever shared its slot.
func (s *Set) Add(userID, hashedToken string) {
	p := s.slot(userID, hashedToken)
	if !p.Load().is(userID, hashedToken) {
		p.Store(&entry{userID: userID, hashedToken: hashedToken})
	}
}

// Remember is Add with what was learned of the user.
func (s *Set) Remember(userID, hashedToken string, k Known) {
	p := s.slot(userID, hashedToken)
	if e := p.Load(); e.is(userID, hashedToken) && e.known != nil && *e.known == k {
		return
	}
	p.Store(&entry{userID: userID, hashedToken: hashedToken, known: &k})
}

// Lookup returns what Remember last learned of the pair; false when the
// pair is not remembered, or was added without it.
func (s *Set) Lookup(userID, hashedToken string) (Known, bool) {
	if e := s.slot(userID, hashedToken).Load(); e.is(userID, hashedToken) && e.known != nil {
		return *e.known, true
	}
	return Known{}, false
}

// Remove forgets the pair, if it is remembered.
func (s *Set) Remove(userID, hashedToken string) {
	p := s.slot(userID, hashedToken)
	if e := p.Load(); e.is(userID, hashedToken) {
		p.CompareAndSwap(e, nil)
	}
}
