package systemtest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// edgeSite is examples/edge/Caddyfile running in this process: the test's
// database (through the example's own {env.ROCKETCHAT_VOIP_DSN}), upstream
// and webhook receiver in place of Rocket.Chat's and the CRM's, plain HTTP on
// loopback in place of the public site, and files in a temporary directory
// for its logs and admin socket. The test client stands for the example's
// load balancer: loopback joins the trusted proxies, and the client appends
// the address of the "real" client to X-Forwarded-For, as a load balancer
// does.
type edgeSite struct {
	*env
	dir        string // the logs and the admin socket
	defaultLog string
	accessLog  string
}

// startEdge loads the example with globals added to its global options and
// servers added to its servers block. Every edit must find its text, so
// that a change to the example fails here until the test follows it; the
// settings under test (trusted proxies, log filters, the module's block)
// are the example's own.
func startEdge(t *testing.T, e *env, globals, servers string) *edgeSite {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "examples", "edge", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "rcvoip-edge-") // short: a unix socket's path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	site := &edgeSite{env: e, dir: dir, defaultLog: filepath.Join(dir, "default.log"), accessLog: filepath.Join(dir, "access.log")}
	receiver := startReceiver(t)
	port, metricsPort := testcaddy.FreePort(t), testcaddy.FreePort(t)
	caddyfile := string(src)
	edit := func(old, new string) {
		t.Helper()
		if !strings.Contains(caddyfile, old) {
			t.Fatalf("examples/edge/Caddyfile no longer has %q: update this test", old)
		}
		caddyfile = strings.Replace(caddyfile, old, new, 1)
	}
	// The default log goes to a file the test reads. An example without a
	// global log block logs to stderr unfiltered: the test gives it one
	// that only names the file, so that what it checks is the example's.
	if strings.Contains(caddyfile, "\t\toutput stderr\n") {
		edit("\t\toutput stderr\n", "\t\toutput file "+site.defaultLog+"\n")
	} else {
		globals += "\n\tlog {\n\t\toutput file " + site.defaultLog + "\n\t}"
	}
	if strings.Contains(caddyfile, "admin unix//run/caddy/admin.sock") {
		edit("admin unix//run/caddy/admin.sock", "admin unix/"+filepath.Join(dir, "admin.sock"))
	}
	edit("\temail ops@chat.example.com\n", "\temail ops@chat.example.com\n\tauto_https off\n\tpersist_config off\n"+globals+"\n")
	edit("trusted_proxies static 10.0.0.0/8 172.16.0.0/12", "trusted_proxies static 10.0.0.0/8 172.16.0.0/12 127.0.0.1/32")
	edit("\t\tclient_ip_headers X-Forwarded-For\n", "\t\tclient_ip_headers X-Forwarded-For\n"+servers+"\n")
	edit("webhook https://crm.example.com/hooks/voip", "webhook "+receiver.URL+"/hooks/voip")
	edit("\nchat.example.com {\n", fmt.Sprintf("\nhttp://127.0.0.1:%d {\n", port))
	edit("/var/log/caddy/chat.example.com.access.log", site.accessLog)
	edit("reverse_proxy rocketchat-1.internal:3000 rocketchat-2.internal:3000", "reverse_proxy "+e.up.Addr)
	edit("http://127.0.0.1:9180", fmt.Sprintf("http://127.0.0.1:%d", metricsPort))

	t.Setenv("ROCKETCHAT_VOIP_DSN", e.db.DSN)
	t.Setenv("VOIP_WEBHOOK_SECRET", webhookSecret)
	if err := testcaddy.Load(caddyfile); err != nil {
		t.Fatalf("loading the edge example: %v\n%s", err, caddyfile)
	}
	t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck
	e.caddy = &testcaddy.Caddy{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", port), Addr: fmt.Sprintf("127.0.0.1:%d", port), Caddyfile: caddyfile}
	return site
}

// from sends a request as the load balancer does for a client at clientIP:
// whatever X-Forwarded-For the client sent (forged, "" for none), with the
// client's address appended.
func (s *edgeSite) from(t *testing.T, clientIP, forged string, u testdb.Agent, body string) response {
	t.Helper()
	xff := clientIP
	if forged != "" {
		xff = forged + ", " + clientIP
	}
	return s.do(t, http.MethodPost, closePath, map[string]string{
		"X-User-Id": u.ID, "X-Auth-Token": u.Token, "Content-Type": "application/json", "X-Forwarded-For": xff,
	}, body)
}

// TestEdgeRateLimitIgnoresForgedForwardedFor: behind the example's load
// balancer, the rate limit counts the client's own address, whatever the
// client writes into X-Forwarded-For. A client that puts a fresh address
// first in each request is still limited at the example's 10 a minute; one
// that puts another client's address there uses up only its own count, and
// that client's close goes through.
func TestEdgeRateLimitIgnoresForgedForwardedFor(t *testing.T) {
	e := seededEnv(t)
	s := startEdge(t, e, "", "")
	const limit = 10 // the example's rate_limit
	attacker := "198.51.100.7"
	invalidBody := `{"rid":"x"}` // counted, and answered without a write
	want400 := invalid("must have required property 'token'")
	for i := 1; i <= limit; i++ {
		got := s.from(t, attacker, fmt.Sprintf("203.0.113.%d", i), e.agent, invalidBody)
		expect(t, got, 400, want400)
		if rem := got.header.Get("X-RateLimit-Remaining"); rem != strconv.Itoa(limit-i) {
			t.Fatalf("request %d with a forged X-Forwarded-For: X-RateLimit-Remaining %s, want %d (the forged address was counted, not the client's)", i, rem, limit-i)
		}
	}
	got := s.from(t, attacker, "203.0.113.250", e.agent, invalidBody)
	if got.status != http.StatusTooManyRequests {
		t.Fatalf("request %d with a fresh forged X-Forwarded-For: %d %s, want 429", limit+1, got.status, got.body)
	}

	// A user without the permission names the victim's address first.
	victim, mallory := "198.51.100.50", "198.51.100.66"
	viewer := e.db.AddUser(t, "viewer1", "user")
	for i := 1; i <= limit+1; i++ {
		got := s.from(t, mallory, victim, viewer, closeBody(e.roomID, e.visitor.Token))
		if want := http.StatusForbidden; i > limit {
			if got.status != http.StatusTooManyRequests {
				t.Fatalf("mallory's request %d: %d %s, want 429", i, got.status, got.body)
			}
		} else if got.status != want {
			t.Fatalf("mallory's request %d: %d %s, want %d", i, got.status, got.body, want)
		}
	}
	got = s.from(t, victim, "", e.agent, closeBody(e.roomID, e.visitor.Token))
	expect(t, got, 200, `{"rid":"ROOM1","success":true}`)
	if rem := got.header.Get("X-RateLimit-Remaining"); rem != strconv.Itoa(limit-1) {
		t.Fatalf("the victim's first request: X-RateLimit-Remaining %s, want %d", rem, limit-1)
	}
	if e.room(t, e.roomID).open {
		t.Fatal("the victim's close answered 200 and left the room open")
	}
}

// TestEdgeLogsHoldNoCredentials runs the example with Caddy's debug level
// on, and log_credentials too (which turns off Caddy's own redaction of
// Cookie and Authorization), sends Rocket.Chat's credentials every way a
// client sends them, through the module and through reverse_proxy, and
// scans every line of the default and access logs for them.
func TestEdgeLogsHoldNoCredentials(t *testing.T) {
	e := seededEnv(t)
	s := startEdge(t, e, "\tdebug", "\t\tlog_credentials")
	rcToken := "rctok-" + testdb.RandomID()
	bearer := "bearer-" + testdb.RandomID()
	secrets := map[string]string{
		"the agent's login token": e.agent.Token,
		"the visitor's token":     e.visitor.Token,
		"rc_token":                rcToken,
		"the bearer token":        bearer,
		"the webhook secret":      webhookSecret,
	}
	creds := map[string]string{
		"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token,
		"Cookie":        "rc_uid=" + e.agent.ID + "; rc_token=" + rcToken + "; theme=dark",
		"Authorization": "Bearer " + bearer,
	}
	with := func(extra map[string]string) map[string]string {
		h := map[string]string{}
		for k, v := range creds {
			h[k] = v
		}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	// Handled by the module: a close that fails (wrong visitor token, so
	// the room stays open for the next), then one that succeeds.
	expect(t, s.do(t, http.MethodPost, closePath+"?rc_token="+rcToken, with(map[string]string{"Content-Type": "application/json"}),
		closeBody(e.roomID, e.visitor.Token+"-wrong")), 400,
		`{"success":false,"error":"invalid-token"}`)
	expect(t, s.do(t, http.MethodPost, closePath, with(map[string]string{"Content-Type": "application/json"}),
		closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	// Passed to Rocket.Chat: a file URL with its tokens in the query, a
	// livechat request with the visitor's token in header and query, a
	// REST call with the login token.
	proxied := []string{
		"/file-upload/F1/photo.png?rc_uid=" + e.agent.ID + "&rc_token=" + rcToken,
		"/api/v1/livechat/messages.history/ROOM1?token=" + e.visitor.Token + "&limit=20",
		"/api/v1/me",
	}
	for _, path := range proxied {
		got := s.do(t, http.MethodGet, path, with(map[string]string{"X-Visitor-Token": e.visitor.Token}), "")
		if got.status != 200 || got.header.Get("X-Upstream") != "yes" {
			t.Fatalf("GET %s: %d %s, want the upstream's 200", path, got.status, got.body)
		}
	}
	// Every request so far has its access log line, and the proxied ones
	// their debug lines in the default log: the scan below reads lines that
	// were written, at the level under test.
	waitForLog(t, 10*time.Second, "the access log to have a line for each request", func() bool {
		return strings.Count(readLog(t, s.accessLog), `"msg":"handled request"`) >= 2+len(proxied)
	})
	waitForLog(t, 10*time.Second, "reverse_proxy's debug lines in the default log", func() bool {
		return strings.Count(readLog(t, s.defaultLog), `"msg":"upstream roundtrip"`) >= len(proxied)
	})
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	logs := map[string]string{"default": readLog(t, s.defaultLog), "access": readLog(t, s.accessLog)}
	if !strings.Contains(logs["default"], `"level":"debug"`) || !strings.Contains(logs["default"], `"logger":"http.handlers.rocketchat_voip"`) {
		t.Fatal("the default log has no debug lines of the module: debug is not on")
	}
	if !strings.Contains(logs["access"], "/file-upload/F1/photo.png?") {
		t.Fatal("the access log lost the file URL's path: the filters remove too much")
	}
	for name, log := range logs {
		lines := strings.Split(log, "\n")
		for what, secret := range secrets {
			for i, line := range lines {
				if strings.Contains(line, secret) {
					t.Errorf("the %s log's line %d holds %s:\n%s", name, i+1, what, line)
				}
			}
		}
		t.Logf("%s log: %d lines scanned", name, len(lines))
	}
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// waitForLog polls cond until it holds, or fails the test after within.
func waitForLog(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
