package systemtest

import (
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// The least-privilege grant lists users run: the gateway's, and the one of
// an account only the outbox app uses.
const (
	grantsFile       = "grants.sql"
	outboxGrantsFile = "grants-outbox.sql"
)

// leastPrivilegeUser creates a user that holds exactly what docs/grants.sql
// grants its account, run as the file says (the database as the default
// one, the account name replaced), and returns its DSN. The EXECUTE line is
// left out where the procedure does not exist, as the file says for TiDB.
func leastPrivilegeUser(t *testing.T, db *testdb.DB) string {
	t.Helper()
	return userFromGrants(t, db, grantsFile, "'voip_gateway'@'%'", 5)
}

// userFromGrants creates a user that holds exactly what file (in docs/)
// grants account, and returns its DSN; the file must hold at least min
// grants.
func userFromGrants(t *testing.T, db *testdb.DB, file, account string, min int) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "docs", file))
	if err != nil {
		t.Fatal(err)
	}
	user, dsn := db.NewUser(t, "USAGE")
	hasProcedure := db.Count(t, "information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? AND ROUTINE_NAME = 'rocketchat_voip_close_room'", db.Name) == 1
	var sqlText strings.Builder // without the comments, as the mysql client sends it
	for _, l := range strings.Split(string(src), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "--") {
			sqlText.WriteString(l + " ")
		}
	}
	var grants int
	for _, stmt := range strings.Split(sqlText.String(), ";") {
		if stmt = strings.TrimSpace(stmt); stmt == "" {
			continue
		}
		if !strings.Contains(stmt, account) {
			t.Fatalf("%s: a statement for another account: %s", file, stmt)
		}
		if strings.Contains(stmt, "ON PROCEDURE") && !hasProcedure {
			continue
		}
		db.Exec(t, strings.ReplaceAll(stmt, account, "'"+user+"'@'%'"))
		grants++
	}
	if grants < min {
		t.Fatalf("only %d grants in %s", grants, file)
	}
	return dsn
}

// TestLeastPrivilegeGrants runs the gateway, the outbox app and `check` as
// a user with exactly docs/grants.sql's privileges, through every outcome
// that reads or writes the database, and the outbox through a failed
// attempt, a delivery and a purge; and that user cannot write the tables it
// only reads. The close is written by the procedure where the engine has
// one, by the portable transaction elsewhere (TiDB). (Without the
// procedure on MariaDB or MySQL, a user without EXECUTE cannot tell a
// missing procedure from a denied one, and the gateway refuses to start.)
func TestLeastPrivilegeGrants(t *testing.T) {
	rc := startReceiver(t)
	rc.failFirst.Store(true) // a failed attempt is recorded before the delivery
	var dsn string
	e, _ := startEnv(t, envOptions{
		extra: []string{"rate_limit 5 60s"},
		dsn: func(d *testdb.DB) string {
			// An old delivered event for the outbox to purge.
			d.SeedEvents(t, 1, "'OLD'", "delivery_state, delivered_at", "'delivered', NOW(3) - INTERVAL 8 DAY")
			dsn = leastPrivilegeUser(t, d)
			return dsn
		},
	})
	// The outbox app as the same user: started now, with the handler's
	// config, as one Caddy process runs both.
	caddyfile := strings.Replace(e.caddy.Caddyfile, "{\n", "{\n"+outboxGlobals(dsn, rc.URL, "retain 7d"), 1)
	if err := e.load(caddyfile); err != nil {
		t.Fatalf("loading the outbox app as the least-privilege user: %v", err)
	}

	admin := e.db.AddUser(t, "admin1", "admin", "livechat-agent") // never rate limited
	viewer := e.db.AddUser(t, "viewer1", "user")
	as := func(u testdb.Agent, token, body string) response {
		return e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": u.ID, "X-Auth-Token": token, "Content-Type": "application/json"}, body)
	}
	expect(t, as(admin, "wrong", closeBody(e.roomID, e.visitor.Token)), 401, body401)
	expect(t, as(viewer, viewer.Token, closeBody(e.roomID, e.visitor.Token)), 403,
		`{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}`)
	expect(t, as(admin, admin.Token, `{"rid":"x"}`), 400, invalid("must have required property 'token'"))
	expect(t, as(admin, admin.Token, closeBody(e.roomID, "no-such-visitor")), 400, `{"success":false,"error":"invalid-token"}`)
	expect(t, as(admin, admin.Token, closeBody("NO-SUCH-ROOM", e.visitor.Token)), 400, `{"success":false,"error":"invalid-room"}`)
	expect(t, as(admin, admin.Token, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	got := as(admin, admin.Token, closeBody(e.roomID, e.visitor.Token))
	if got.status != 400 || !strings.Contains(got.body, "room-closed") {
		t.Fatalf("closing it again: %d %s", got.status, got.body)
	}
	for i := 0; i < 4; i++ { // the viewer's 403 was the first of the five
		expect(t, as(e.agent, e.agent.Token, `{}`), 400, invalid("must have required property 'rid'"))
	}
	if got := as(e.agent, e.agent.Token, `{}`); got.status != http.StatusTooManyRequests {
		t.Fatalf("the sixth counted request: %d %s, want 429", got.status, got.body)
	}
	if r := e.room(t, e.roomID); r.open || r.msgs != 4 {
		t.Fatalf("room after the close: open %v, msgs %d", r.open, r.msgs)
	}

	// The outbox: a failed attempt, the delivery, the purge of the old one.
	var id int64
	if err := e.db.QueryRow("SELECT id FROM room_events WHERE rid = ?", e.roomID).Scan(&id); err != nil {
		t.Fatal(err)
	}
	rc.waitFor(t, []int64{id}, 30*time.Second)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		delivered := e.db.Count(t, "room_events WHERE id = ? AND delivery_state = 'delivered' AND last_error IS NOT NULL", id) == 1
		if delivered && e.db.Count(t, "room_events WHERE rid = 'OLD'") == 0 {
			break
		}
		if time.Now().After(deadline) {
			var state, lastErr sql.NullString
			e.db.QueryRow("SELECT delivery_state, last_error FROM room_events WHERE id = ?", id).Scan(&state, &lastErr) //nolint:errcheck
			t.Fatalf("after 30 s: event %d is %v (last error %v); old event purged: %v", id, state, lastErr, e.db.Count(t, "room_events WHERE rid = 'OLD'") == 0)
		}
	}

	out, err := exec.Command(testcaddy.Binary(t), "rocketchat-voip", "check", "--dsn", dsn).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("ok (schema version %d)", schema.Latest())) {
		t.Fatalf("check as the least-privilege user: %v\n%s", err, out)
	}

	// What it only reads, it cannot write.
	gw, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	for _, stmt := range []string{
		"UPDATE user_login_tokens SET type = type",
		"INSERT INTO user_roles (user_id, role) VALUES ('x', 'admin')",
		"DELETE FROM permission_roles",
		"UPDATE users SET name = name",
		"DELETE FROM rooms",
		"UPDATE messages SET msg = msg",
	} {
		if _, err := gw.Exec(stmt); !denied(err) {
			t.Errorf("%s as the gateway's user: %v, want it denied", stmt, err)
		}
	}
}

// TestOutboxOnlyGrants runs the outbox app with a DSN of its own, as a user
// that holds exactly docs/grants-outbox.sql's privileges, beside a handler
// with the gateway's grants: it delivers, and it cannot read the tables
// that hold tokens.
func TestOutboxOnlyGrants(t *testing.T) {
	rc := startReceiver(t)
	var outboxDSN string
	e, _ := startEnv(t, envOptions{dsn: func(d *testdb.DB) string {
		outboxDSN = userFromGrants(t, d, outboxGrantsFile, "'voip_outbox'@'%'", 3)
		return d.Cfg.FormatDSN()
	}})
	caddyfile := strings.Replace(e.caddy.Caddyfile, "{\n", "{\n"+outboxGlobals(outboxDSN, rc.URL, ""), 1)
	if err := e.load(caddyfile); err != nil {
		t.Fatalf("loading the outbox app as a user with only the outbox's grants: %v", err)
	}
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	var id int64
	if err := e.db.QueryRow("SELECT id FROM room_events WHERE rid = ?", e.roomID).Scan(&id); err != nil {
		t.Fatal(err)
	}
	rc.waitFor(t, []int64{id}, 30*time.Second)

	ob, err := sql.Open("mysql", outboxDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	var n int
	if err := ob.QueryRow("SELECT COUNT(*) FROM user_login_tokens").Scan(&n); !denied(err) {
		t.Errorf("the outbox's user read user_login_tokens: %v, want it denied", err)
	}
}

// denied reports whether err is the server refusing a statement for want of
// a privilege: MySQL's and MariaDB's 1142 (command denied to user), or
// TiDB's 8121 (privilege check fail).
func denied(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1142 || me.Number == 8121)
}
