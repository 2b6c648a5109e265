package systemtest

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// TestReadOnlyServerIsPassedOver: two servers of the test's own with the
// same database stand in for a primary and its replica. The DSN names the
// read-only one first; closes go to the other, and read there too (a room
// that only the primary has yet closes). Then the roles swap while the
// gateway's pool is on the old primary: its first refused write (error
// 1290) passes it over, the close runs once more on the new primary, and
// answers 200; nothing lands on the old one.
func TestReadOnlyServerIsPassedOver(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srvA, srvB := testdb.StartServer(t), testdb.StartServer(t)
	a := testdb.NewOn(t, srvA.Config())
	b := a.SameOn(t, srvB.Config())
	token := "tok-agent1-" + testdb.RandomID()
	var visitor testdb.Visitor
	ts := time.Now().UTC().Add(-time.Minute)
	for _, d := range []*testdb.DB{a, b} {
		// MariaDB lets root write through read_only; the gateway's own user
		// has no such right, as in production.
		for _, host := range []string{"localhost", "127.0.0.1"} {
			d.Exec(t, fmt.Sprintf("CREATE USER 'gw'@'%s'", host))
			d.Exec(t, fmt.Sprintf("GRANT ALL ON %s.* TO 'gw'@'%s'", d.Name, host))
		}
		d.Exec(t, "INSERT INTO users (id, username, name) VALUES ('agent1', 'user.agent1', 'Agent')")
		d.Exec(t, "INSERT INTO user_roles (user_id, role) VALUES ('agent1', 'livechat-agent')")
		d.AddToken(t, "agent1", token, "resume", time.Now().UTC())
		visitor = d.AddVisitor(t, "v1")
		for _, rid := range []string{"r1", "r2", "r3"} {
			d.AddRoom(t, rid, visitor, ts, nil)
		}
	}
	b.AddRoom(t, "lagging", visitor, ts, nil) // not yet on the replica
	readOnly := func(d *testdb.DB, on bool) {
		t.Helper()
		d.Exec(t, fmt.Sprintf("SET GLOBAL read_only = %t", on))
	}
	readOnly(a, true)

	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr, cfg.DBName = "gw", "tcp", srvA.Addr+","+srvB.Addr, a.Name
	up := testcaddy.StartUpstream(t)
	c := testcaddy.Start(t, "", fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\tdb_timeout 1s\n\t\trate_limit off\n\t}\n\treverse_proxy %s", cfg.FormatDSN(), up.Addr))
	e := &env{caddy: c, client: &http.Client{Timeout: 10 * time.Second}}
	closeRoom := func(rid string) {
		t.Helper()
		got := e.do(t, http.MethodPost, closePath, map[string]string{
			"X-User-Id": "agent1", "X-Auth-Token": token, "Content-Type": "application/json",
		}, closeBody(rid, visitor.Token))
		expect(t, got, 200, `{"rid":"`+rid+`","success":true}`)
	}
	closedOn := func(d *testdb.DB, rid string) bool {
		t.Helper()
		return d.Count(t, "rooms WHERE id = ? AND open = FALSE", rid) == 1
	}

	closeRoom("lagging")
	closeRoom("r1")
	if !closedOn(b, "lagging") || !closedOn(b, "r1") || closedOn(a, "r1") {
		t.Fatal("closes did not go to the writable server only")
	}

	// Switchover: the gateway's connections are all to b.
	readOnly(a, false)
	readOnly(b, true)
	closeRoom("r2")
	closeRoom("r3")
	for _, rid := range []string{"r2", "r3"} {
		if !closedOn(a, rid) || closedOn(b, rid) {
			t.Errorf("room %s: closed on the new primary %t, on the old %t; want true, false", rid, closedOn(a, rid), closedOn(b, rid))
		}
		if n := a.Count(t, "messages WHERE rid = ?", rid); n != 1 {
			t.Errorf("room %s: %d messages, want 1", rid, n)
		}
		if n := a.Count(t, "room_events WHERE rid = ?", rid); n != 1 {
			t.Errorf("room %s: %d outbox rows, want 1", rid, n)
		}
	}
	if n := b.Count(t, "messages"); n != 2 {
		t.Errorf("the old primary has %d messages, want the 2 it closed before", n)
	}
}
