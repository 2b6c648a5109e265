// Package testdb gives each test a fresh, migrated MySQL database on the
// server named by $ROCKETCHAT_VOIP_TEST_DSN (default: root@tcp(127.0.0.1:3306)/),
// and helpers to seed Rocket.Chat-shaped rows.
//
// When the server cannot be reached the test fails if $CI or
// $ROCKETCHAT_VOIP_REQUIRE_DB is set, and is skipped (with a message saying
// how to provide a server) otherwise.
package testdb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

// DefaultServerDSN is the server tried when $ROCKETCHAT_VOIP_TEST_DSN is unset.
const DefaultServerDSN = "root@tcp(127.0.0.1:3306)/"

// DB is one test's database.
type DB struct {
	*sql.DB
	// DSN connects to this database (parseTime and UTC set).
	DSN  string
	Name string
	Cfg  *mysql.Config
}

// Required reports whether a missing server must fail the test.
func Required() bool {
	return os.Getenv("CI") != "" || os.Getenv("ROCKETCHAT_VOIP_REQUIRE_DB") != ""
}

// ServerConfig returns the configured server's DSN, parsed.
func ServerConfig(t testing.TB) *mysql.Config {
	t.Helper()
	dsn := os.Getenv("ROCKETCHAT_VOIP_TEST_DSN")
	if dsn == "" {
		dsn = DefaultServerDSN
	}
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("ROCKETCHAT_VOIP_TEST_DSN: %v", err)
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	cfg.Timeout = 5 * time.Second
	return cfg
}

// New creates a database named after a random suffix on the configured
// server, migrates it, and drops it when the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	return NewOn(t, ServerConfig(t))
}

// NewOn is New on the server that cfg names.
func NewOn(t testing.TB, cfg *mysql.Config) *DB {
	t.Helper()
	return migrated(t, NewEmpty(t, cfg))
}

// SameOn creates d's database, migrated, on the server that cfg names too,
// as a replica of d's server would have it: a DSN naming both servers
// reaches the same database name on either.
func (d *DB) SameOn(t testing.TB, cfg *mysql.Config) *DB {
	t.Helper()
	return migrated(t, newEmpty(t, cfg, d.Name))
}

func migrated(t testing.TB, d *DB) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := schema.Migrate(ctx, d.DB); err != nil {
		t.Fatalf("migrating %s: %v", d.Name, err)
	}
	return d
}

// NewEmpty creates a database on the server that cfg names (the configured
// one when cfg is nil) and leaves it empty: never migrated.
func NewEmpty(t testing.TB, cfg *mysql.Config) *DB {
	t.Helper()
	return newEmpty(t, cfg, "rcvoip_test_"+randomHex(6))
}

func newEmpty(t testing.TB, cfg *mysql.Config, name string) *DB {
	t.Helper()
	if cfg == nil {
		cfg = ServerConfig(t)
	}
	cfg = cfg.Clone()
	cfg.DBName = ""
	admin, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		msg := "MySQL/MariaDB is not reachable at " + cfg.Addr + ": " + err.Error() +
			"\nStart one (the README's test command, scripts/test.sh, does) or set ROCKETCHAT_VOIP_TEST_DSN."
		if Required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name+" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name) //nolint:errcheck
	})
	dbCfg := cfg.Clone()
	dbCfg.DBName = name
	db, err := sql.Open("mysql", dbCfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &DB{DB: db, DSN: dbCfg.FormatDSN(), Name: name, Cfg: dbCfg}
}

// RandomID returns a fresh id for seeded rows.
func RandomID() string { return randomHex(8) }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) //nolint:errcheck
	return hex.EncodeToString(b)
}

// Exec runs a statement or fails the test.
func (d *DB) Exec(t testing.TB, query string, args ...any) {
	t.Helper()
	if _, err := d.DB.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// Count returns SELECT COUNT(*) FROM table [WHERE ...].
func (d *DB) Count(t testing.TB, tableAndWhere string, args ...any) int {
	t.Helper()
	var n int
	if err := d.QueryRow("SELECT COUNT(*) FROM "+tableAndWhere, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Agent is a seeded user with a login token.
type Agent struct {
	ID, Username, Name, Token string
}

// AddUser inserts a user with the given roles and a fresh resume token
// created now, and returns it.
func (d *DB) AddUser(t testing.TB, id string, roles ...string) Agent {
	t.Helper()
	a := Agent{ID: id, Username: "user." + id, Name: "User " + id, Token: "tok-" + id + "-" + randomHex(8)}
	d.Exec(t, "INSERT INTO users (id, username, name) VALUES (?, ?, ?)", a.ID, a.Username, a.Name)
	d.AddToken(t, a.ID, a.Token, store.TokenTypeResume, time.Now().UTC())
	for _, r := range roles {
		d.Exec(t, "INSERT INTO user_roles (user_id, role) VALUES (?, ?)", a.ID, r)
	}
	return a
}

// AddToken stores the hash of token for userID.
func (d *DB) AddToken(t testing.TB, userID, token, typ string, created time.Time) {
	t.Helper()
	d.Exec(t, "INSERT INTO user_login_tokens (user_id, hashed_token, type, created_at) VALUES (?, ?, ?, ?)",
		userID, store.HashLoginToken(token), typ, created)
}

// Visitor is a seeded livechat visitor.
type Visitor struct {
	ID, Token, Username string
}

// AddVisitor inserts a visitor.
func (d *DB) AddVisitor(t testing.TB, id string) Visitor {
	t.Helper()
	v := Visitor{ID: id, Token: "vtok-" + id, Username: "guest-" + id}
	d.Exec(t, "INSERT INTO livechat_visitors (id, token, username, name) VALUES (?, ?, ?, ?)", v.ID, v.Token, v.Username, "Guest "+id)
	return v
}

// AddRoom inserts an open voip room of visitor v, created at ts.
func (d *DB) AddRoom(t testing.TB, id string, v Visitor, ts time.Time, callUniqueID any) {
	t.Helper()
	d.Exec(t, `INSERT INTO rooms (id, t, name, open, ts, visitor_id, visitor_token, visitor_username, visitor_status,
  served_by_id, served_by_username, queue, direction, call_unique_id, msgs, tags, updated_at)
VALUES (?, 'v', ?, TRUE, ?, ?, ?, ?, 'online', 'agent1', 'user.agent1', '80000', 'inbound', ?, 3, '["old"]', ?)`,
		id, v.Username, ts, v.ID, v.Token, v.Username, callUniqueID, ts)
}

// NewUser creates a MySQL user, with a random name and password, that holds
// privileges (such as "SELECT, INSERT, UPDATE") on this database and
// nothing else; it is dropped when the test ends. It returns the user's
// name and a DSN that connects as it.
func (d *DB) NewUser(t testing.TB, privileges string) (user, dsn string) {
	t.Helper()
	user, password := "rcvoip_u_"+randomHex(6), randomHex(12)
	d.Exec(t, "CREATE USER '"+user+"'@'%' IDENTIFIED BY '"+password+"'")
	t.Cleanup(func() {
		d.DB.Exec("DROP USER IF EXISTS '" + user + "'@'%'") //nolint:errcheck
	})
	d.Exec(t, "GRANT "+privileges+" ON "+d.Name+".* TO '"+user+"'@'%'")
	cfg := d.Cfg.Clone()
	cfg.User, cfg.Passwd = user, password
	return user, cfg.FormatDSN()
}
