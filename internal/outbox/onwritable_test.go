package outbox

import (
	"context"
	"errors"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// A write is run again only when nothing of it was done: a deadlock or lock
// wait up to three times in all, a refusal as not writable once.
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
		{"two deadlocks, then done", []error{deadlock, deadlock}, 3, nil},
		{"three deadlocks", []error{deadlock, deadlock, deadlock}, 3, deadlock},
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
