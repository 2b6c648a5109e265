package rcsync

// SetAfterPage makes fn run after each page a pass commits.
func (s *Syncer) SetAfterPage(fn func(coll string)) { s.afterPage = fn }
