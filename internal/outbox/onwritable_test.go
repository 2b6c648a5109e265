package outbox

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// A write is run again only when nothing of it was done: a deadlock or lock
// wait up to eight times in all, a refusal as not writable once.
func TestOnWritableRunsAgainOnlyWhatWasRolledBack(t *testing.T) {
	deadlock := &mysql.MySQLError{Number: 1213}
	readOnly := &mysql.MySQLError{Number: 1290}
	other := &mysql.MySQLError{Number: 1062}
	cases := []struct {
		name      string
		errs      []error // what each run returns; nil past the end
		wantRuns  int
		wantError error
	}{
		{"done at once", nil, 1, nil},
		{"a deadlock, then done", []error{deadlock}, 2, nil},
		{"seven deadlocks, then done", slices.Repeat([]error{deadlock}, 7), 8, nil},
		{"eight deadlocks", slices.Repeat([]error{deadlock}, 8), 8, deadlock},
		{"read-only, then done on the next server", []error{readOnly}, 2, nil},
		{"read-only twice", []error{readOnly, readOnly}, 2, readOnly},
		{"any other error", []error{other}, 1, other},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			runs := 0
			err := onWritable(context.Background(), func() error {
				runs++
				if runs <= len(c.errs) {
					return c.errs[runs-1]
				}
				return nil
			})
			if runs != c.wantRuns || !errors.Is(err, c.wantError) {
				t.Fatalf("ran %d times with %v, want %d times with %v", runs, err, c.wantRuns, c.wantError)
			}
		})
	}
}
