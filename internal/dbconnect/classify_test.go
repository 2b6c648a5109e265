package dbconnect

import (
	"context"
	"crypto/x509"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/go-sql-driver/mysql"
)

func TestRetryable(t *testing.T) {
	refusedConn := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	accessDenied := &mysql.MySQLError{Number: 1045, Message: "Access denied for user 'gw'@'10.0.0.5' (using password: YES)"}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refusedConn, true},
		{"DNS not resolving yet", &net.DNSError{Err: "no such host", Name: "db", IsNotFound: true}, true},
		{"dial timeout", context.DeadlineExceeded, true},
		{"connection lost", mysql.ErrInvalidConn, true},
		{"Galera node not synced", &mysql.MySQLError{Number: 1047, Message: "WSREP has not yet prepared node for application use"}, true},
		{"read-only member", &mysql.MySQLError{Number: 1290, Message: "The MariaDB server is running with the --read-only option"}, true},
		{"too many connections", &mysql.MySQLError{Number: 1040}, true},
		{"server shutting down", &mysql.MySQLError{Number: 1053}, true},
		{"the connector's not-ready error", errors.New("Galera node is not ready (wsrep_ready is not ON)"), true},
		{"access denied", accessDenied, false},
		{"unknown database", &mysql.MySQLError{Number: 1049}, false},
		{"no privilege on the database", &mysql.MySQLError{Number: 1044}, false},
		{"no privilege on a table", &mysql.MySQLError{Number: 1142}, false},
		{"no privilege on a column", &mysql.MySQLError{Number: 1143}, false},
		{"unknown column (schema mismatch)", &mysql.MySQLError{Number: 1054}, false},
		{"auth plugin the DSN does not allow", mysql.ErrCleartextPassword, false},
		{"untrusted certificate", fmt.Errorf("tls: %w", x509.UnknownAuthorityError{}), false},
		{"wrapped refusal", fmt.Errorf("migrating x: %w", accessDenied), false},
		// Several servers: one refusing the credentials makes it final,
		// whatever the others did; all away is retried.
		{"one of several refuses", errors.Join(fmt.Errorf("db1:3306: %w", refusedConn), fmt.Errorf("db2:3306: %w", accessDenied)), false},
		{"all of several away", errors.Join(fmt.Errorf("db1:3306: %w", refusedConn), fmt.Errorf("db2:3306: %w", &mysql.MySQLError{Number: 1047})), true},
	}
	for _, c := range cases {
		if got := Retryable(c.err); got != c.want {
			t.Errorf("%s: Retryable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

func TestNotWritable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&mysql.MySQLError{Number: 1290, Message: "The MySQL server is running with the --super-read-only option"}, true},
		{fmt.Errorf("close: %w", &mysql.MySQLError{Number: 3100}), true},
		{&mysql.MySQLError{Number: 3101}, true},
		{&mysql.MySQLError{Number: 1047}, true},
		{&mysql.MySQLError{Number: 1213}, false}, // a deadlock: the store's own retry
		{&mysql.MySQLError{Number: 1062}, false},
		{driver.ErrBadConn, false},
		{nil, false},
	} {
		if got := NotWritable(c.err); got != c.want {
			t.Errorf("NotWritable(%v) = %t, want %t", c.err, got, c.want)
		}
	}
}
