package store

import (
	"context"
	"database/sql"
	"time"
)

// NewForTest is New with the write path forced (procedure false: the
// portable transaction, whatever the engine) and the clock and message ids
// given, so that two stores write the same rows.
func NewForTest(ctx context.Context, db *sql.DB, procedure bool, now func() time.Time, newID func() string) (*Store, error) {
	s, err := newStore(ctx, db, procedure)
	if err != nil {
		return nil, err
	}
	if now != nil {
		s.now = now
	}
	if newID != nil {
		s.newID = newID
	}
	return s, nil
}
