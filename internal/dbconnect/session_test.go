package dbconnect_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// Every session the module opens is strict with SessionSQLMode, whatever the
// server's global sql_mode and whatever the DSN asks for, so a value that
// does not fit is an error and never cut short.
func TestSessionsAreStrict(t *testing.T) {
	db := testdb.New(t)
	cfg, err := dbconnect.ParseDSN(db.DSN + "&sql_mode=%27%27")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := dbconnect.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var mode string
	if err := pool.QueryRowContext(ctx, "SELECT @@SESSION.sql_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != dbconnect.SessionSQLMode {
		t.Fatalf("session sql_mode %q, want %q", mode, dbconnect.SessionSQLMode)
	}
	// What a lax session would have cut short, a module session refuses.
	_, err = pool.ExecContext(ctx, "INSERT INTO users (id, type) VALUES ('U1', ?)", strings.Repeat("x", 33)) // type is VARCHAR(32)
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1406 { // ER_DATA_TOO_LONG
		t.Fatalf("a value too long for its column: %v, want error 1406", err)
	}
}
