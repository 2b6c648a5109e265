package dbconnect

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// Engine is the kind of MySQL-compatible server behind a connection.
// Galera and Group Replication are MariaDB and MySQL.
type Engine string

// The engines the gateway tells apart.
const (
	MariaDB Engine = "MariaDB"
	MySQL   Engine = "MySQL"
	TiDB    Engine = "TiDB"
	Vitess  Engine = "Vitess"
)

// EngineOf names the engine from its VERSION() string: TiDB answers like
// "8.0.11-TiDB-v8.5.0", Vitess's vtgate like "8.0.30-Vitess", MariaDB like
// "10.11.6-MariaDB-log"; anything else is taken for MySQL.
func EngineOf(version string) Engine {
	switch {
	case strings.Contains(version, "TiDB"):
		return TiDB
	case strings.Contains(version, "Vitess"):
		return Vitess
	case strings.Contains(version, "MariaDB"):
		return MariaDB
	default:
		return MySQL
	}
}

// HasProcedures reports whether the gateway may create and call its stored
// procedure there. TiDB has no stored procedures; Vitess calls them only in
// unsharded keyspaces and refuses one that changes the transaction state,
// as the close's procedure does.
func (e Engine) HasProcedures() bool { return e == MariaDB || e == MySQL }

// rowQuerier is a *sql.DB, *sql.Conn or *sql.Tx.
type rowQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// DetectEngine asks the server what it is, and returns the engine and the
// server's version string.
func DetectEngine(ctx context.Context, q rowQuerier) (Engine, string, error) {
	var version string
	if err := q.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return "", "", fmt.Errorf("reading the server's version: %w", err)
	}
	return EngineOf(version), version, nil
}

// CommitError classifies the error of a statement that commits on the
// server, such as a CALL of a procedure that ends in COMMIT, by the rule
// Tx.Commit applies to COMMIT itself: the server's own error means the
// statement did not commit; a connection that the driver reports bad
// before anything was written (driver.ErrBadConn) means it was never sent;
// anything else (a broken connection, a deadline that passed while the
// server worked) wraps ErrCommitOutcomeUnknown, as it may have committed.
func CommitError(err error) error {
	var me *mysql.MySQLError
	switch {
	case err == nil, errors.As(err, &me), errors.Is(err, driver.ErrBadConn):
		return err
	default:
		return fmt.Errorf("%w: %w", ErrCommitOutcomeUnknown, err)
	}
}
