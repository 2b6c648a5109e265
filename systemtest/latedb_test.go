package systemtest

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// awayAddr is a loopback address where nothing listens (connections are
// refused) and a database may appear later, and dsn with its address
// replaced by it.
func awayAddr(t *testing.T, db *testdb.DB) (addr, dsn string) {
	t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", testcaddy.FreePort(t))
	cfg := db.Cfg.Clone()
	cfg.Addr = addr
	return addr, cfg.FormatDSN()
}

func (e *env) expectPassThrough(t *testing.T) {
	t.Helper()
	if got := e.do(t, http.MethodGet, "/api/info", nil, ""); got.status != 200 || got.header.Get("X-Upstream") != "yes" {
		t.Fatalf("pass-through: %d %s", got.status, got.body)
	}
}

// TestDatabaseArrivesLate: Caddy starts while the database's address
// refuses connections (an edge that boots before its database). Other
// traffic passes throughout; room.close answers 503 at once, within
// db_timeout; once a forwarder to the real server appears at that address,
// closes are served within 2 s and the outbox delivers them, with no
// reload.
func TestDatabaseArrivesLate(t *testing.T) {
	const dbTimeout = 500 * time.Millisecond
	e := seededEnv(t)
	rc := startReceiver(t)
	addr, dsn := awayAddr(t, e.db)
	handlers := fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\tdb_timeout %s\n\t\trate_limit off\n\t}\n\treverse_proxy %s", dsn, dbTimeout, e.up.Addr)
	e.caddy = testcaddy.Start(t, outboxGlobals(dsn, rc.URL, ""), withMetricsRoute(handlers))

	dbUp := fmt.Sprintf(`caddy_rocketchat_voip_db_up{database="tcp(%s)/%s"}`, addr, e.db.Name)
	if v, ok := scrape(t, e)[dbUp]; !ok || v != 0 {
		t.Fatalf("%s = %v (present %v), want 0 while the database is away", dbUp, v, ok)
	}
	before := e.snapshot(t)
	for range 5 {
		start := time.Now()
		expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 503, body503)
		if took := time.Since(start); took > dbTimeout+100*time.Millisecond {
			t.Fatalf("503 after %v, want within db_timeout (%v) + 100ms", took, dbTimeout)
		}
		e.expectPassThrough(t)
		time.Sleep(200 * time.Millisecond) // the pool retries meanwhile
	}
	e.expectUnchanged(t, before)

	testdb.StartProxyOn(t, addr, e.db.Cfg.Addr)
	appeared := time.Now()
	for {
		got := e.post(t, closeBody(e.roomID, e.visitor.Token))
		if got.status == 200 {
			expect(t, got, 200, `{"rid":"ROOM1","success":true}`)
			break
		}
		expect(t, got, 503, body503)
		e.expectPassThrough(t)
		if time.Since(appeared) > 2*time.Second {
			t.Fatal("closes still fail 2 s after the database appeared")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("first close served %v after the database appeared", time.Since(appeared).Round(time.Millisecond))
	e.expectPassThrough(t)
	if !e.room(t, e.roomID).closed() {
		t.Fatal("the room is still open")
	}
	rc.waitFor(t, eventIDs(t, e.db), 10*time.Second)
	if v := scrape(t, e)[dbUp]; v != 1 {
		t.Fatalf("%s = %v once the database is in use, want 1", dbUp, v)
	}
	e.expectNothingUpstream(t)
}

func (r closedRoom) closed() bool { return !r.open && r.closedAt.Valid }

// sitePorts lists the ports of a config's sites.
func sitePorts(caddyfile string) []string {
	var ports []string
	for _, m := range regexp.MustCompile(`http://127\.0\.0\.1:(\d+)`).FindAllStringSubmatch(caddyfile, -1) {
		ports = append(ports, m[1])
	}
	return ports
}

// closeStatus is the status of a close with unknown credentials on port:
// 401 once the database is in use, 503 while it is not.
func closeStatus(t *testing.T, port string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:"+port+closePath, strings.NewReader(closeBody("R", "v")))
	req.Header.Set("X-User-Id", "nobody")
	req.Header.Set("X-Auth-Token", "nothing")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitServed waits until every site answers a close from the database.
func waitServed(t *testing.T, ports []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for _, port := range ports {
		for {
			status := closeStatus(t, port)
			if status == 401 {
				break
			}
			if status != 503 || time.Now().After(deadline) {
				t.Fatalf("site on port %s answers %d, want 401 from the database", port, status)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestLateDatabaseMigratedByOneSite: three sites on one unmigrated
// database that is away at start, the middle one with migrate. The config
// loads; when the database appears the pool migrates it (a holder asked for
// it) and every site closes with no reload.
func TestLateDatabaseMigratedByOneSite(t *testing.T) {
	db := testdb.NewEmpty(t, nil)
	addr, dsn := awayAddr(t, db)
	cfg := sitesSharingDSN(t, dsn, "migrate")
	if err := testcaddy.Load(cfg); err != nil {
		t.Fatalf("the config did not load without its database: %v", err)
	}
	t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck
	ports := sitePorts(cfg)
	for _, port := range ports {
		if status := closeStatus(t, port); status != 503 {
			t.Fatalf("site on port %s answers %d while the database is away, want 503", port, status)
		}
	}
	testdb.StartProxyOn(t, addr, db.Cfg.Addr)
	waitServed(t, ports, 5*time.Second)
	if v, err := schema.Version(context.Background(), db.DB); err != nil || v != schema.Latest() {
		t.Fatalf("schema version %d (%v), want %d", v, err, schema.Latest())
	}
}

// TestLateDatabaseWaitsForTheSchema: no site migrates, and the database
// that arrives late is outdated. That is not a failure of the running
// config: the sites wait for the version, and serve as soon as something
// else (here 'caddy rocketchat-voip migrate', as an operator would) brings
// the schema up to date.
func TestLateDatabaseWaitsForTheSchema(t *testing.T) {
	db := testdb.NewEmpty(t, nil)
	addr, dsn := awayAddr(t, db)
	moduleLog := filepath.Join(t.TempDir(), "caddy.log")
	cfg := strings.Replace(sitesSharingDSN(t, dsn, ""), "output discard", "output file "+moduleLog+"\n\t\tformat json", 1)
	if err := testcaddy.Load(cfg); err != nil {
		t.Fatalf("the config did not load without its database: %v", err)
	}
	t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck
	testdb.StartProxyOn(t, addr, db.Cfg.Addr)
	ports := sitePorts(cfg)
	// The pool reaches the server and finds the schema outdated.
	waitForLogLine(t, moduleLog, "database schema outdated and no site migrates it", 10*time.Second)
	for _, port := range ports {
		if status := closeStatus(t, port); status != 503 {
			t.Fatalf("site on port %s answers %d on an outdated schema, want 503", port, status)
		}
	}
	if _, err := schema.Migrate(context.Background(), db.DB); err != nil {
		t.Fatal(err)
	}
	waitServed(t, ports, 5*time.Second)
}

// TestRefusalStillFailsTheLoad: a server that answers and refuses (a wrong
// password) is a configuration error, at start as before: the load fails,
// naming the server and never the password.
func TestRefusalStillFailsTheLoad(t *testing.T) {
	db := testdb.New(t)
	cfg := db.Cfg.Clone()
	cfg.Passwd = "not-the-password-42"
	err := testcaddy.Load(sitesSharingDSN(t, cfg.FormatDSN(), ""))
	if err == nil {
		caddy.Stop() //nolint:errcheck
		t.Fatal("a config with a wrong password loaded")
	}
	where := fmt.Sprintf("cannot connect to MySQL at tcp(%s)/%s", db.Cfg.Addr, db.Name)
	if !strings.Contains(err.Error(), where) || !strings.Contains(err.Error(), "Access denied") {
		t.Fatalf("error does not name the server and the refusal: %v", err)
	}
	if strings.Contains(err.Error(), cfg.Passwd) {
		t.Fatalf("error shows the password: %v", err)
	}
}

// TestReloadWhileTheDatabaseIsAway: with the database gone, a reload that
// changes only another route is accepted (the pool, open and prepared from
// the previous config, is reused), and so is one that changes the DSN (a
// new pool, brought up in the background); pass-through is served
// throughout, and closes are again once the database is back.
func TestReloadWhileTheDatabaseIsAway(t *testing.T) {
	admin := fmt.Sprintf("127.0.0.1:%d", testcaddy.FreePort(t))
	e, proxy := startEnv(t, envOptions{proxied: true, globals: "\tadmin " + admin + "\n", extra: []string{"rate_limit off"},
		site: func(handlers string) string { return "\trespond /other \"one\"\n" + handlers }})
	expect(t, e.post(t, `{}`), 400, invalid("must have required property 'rid'"))
	proxy.Down()

	otherRoute := strings.Replace(e.caddy.Caddyfile, `respond /other "one"`, `respond /other "two"`, 1)
	e.reload(t, admin, otherRoute)
	if got := e.do(t, http.MethodGet, "/other", nil, ""); got.body != "two" {
		t.Fatalf("the reload did not take: %d %q", got.status, got.body)
	}
	e.expectPassThrough(t)
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 503, body503)

	dsn := regexp.MustCompile(`dsn "([^"]*)"`).FindStringSubmatch(e.caddy.Caddyfile)[1]
	newDSN := strings.Replace(otherRoute, dsn, dsn+"&timeout=4s", 1)
	e.reload(t, admin, newDSN)
	e.expectPassThrough(t)
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 503, body503)

	proxy.Up()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := e.post(t, closeBody(e.roomID, e.visitor.Token))
		if got.status == 200 {
			expect(t, got, 200, `{"rid":"ROOM1","success":true}`)
			break
		}
		expect(t, got, 503, body503)
		if time.Now().After(deadline) {
			t.Fatal("closes still fail 3 s after the database came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
