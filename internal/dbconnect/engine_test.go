package dbconnect

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// The engine, and with it the close's write path, is chosen from what the
// server says it is.
func TestEngineOf(t *testing.T) {
	cases := []struct {
		version    string
		want       Engine
		procedures bool
	}{
		{"10.11.19-MariaDB-0+deb12u1", MariaDB, true},
		{"11.4.2-MariaDB-log", MariaDB, true},
		{"5.5.5-10.6.16-MariaDB-1:10.6.16+maria~ubu2004", MariaDB, true}, // through a proxy that prefixes 5.5.5-
		{"8.0.36", MySQL, true},
		{"9.7.0", MySQL, true},
		{"8.0.36-28 Percona Server", MySQL, true},
		{"8.0.11-TiDB-v8.5.0", TiDB, false},
		{"8.0.11-TiDB-v1.1.0-beta.0.20251126154744-e4e814fdc0af", TiDB, false},
		{"8.0.30-Vitess", Vitess, false},
	}
	for _, c := range cases {
		if got := EngineOf(c.version); got != c.want || got.HasProcedures() != c.procedures {
			t.Errorf("EngineOf(%q) = %s (procedures %v), want %s (%v)", c.version, got, got.HasProcedures(), c.want, c.procedures)
		}
	}
}

// A statement that commits on the server is "outcome unknown" once sent,
// unless the server answered with its own error or the driver says nothing
// was written.
func TestCommitError(t *testing.T) {
	serverError := &mysql.MySQLError{Number: 1213, Message: "Deadlock found"}
	cases := []struct {
		name    string
		err     error
		unknown bool
	}{
		{"no error", nil, false},
		{"the server's error", fmt.Errorf("wrapped: %w", serverError), false},
		{"not sent", driver.ErrBadConn, false},
		{"a broken connection", mysql.ErrInvalidConn, true},
		{"the deadline while the server worked", context.DeadlineExceeded, true},
	}
	for _, c := range cases {
		got := CommitError(c.err)
		if errors.Is(got, ErrCommitOutcomeUnknown) != c.unknown || !errors.Is(got, c.err) {
			t.Errorf("%s: CommitError(%v) = %v, want unknown %v, wrapping the error", c.name, c.err, got, c.unknown)
		}
	}
}
