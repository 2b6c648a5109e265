package dbconnect

import (
	"database/sql/driver"
	"fmt"
	"testing"

	"github.com/go-sql-driver/mysql"
)

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
