// Package testcaddy runs Caddy in the test process with the rocketchat_voip
// module in front of a recording upstream on loopback.
package testcaddy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/edgevoip/caddy-rocketchat-voip"
)

// Recorded is a request as the upstream saw it.
type Recorded struct {
	Method, RequestURI string
	Header             http.Header
	Body               string
}

// Upstream is a real HTTP server on loopback that records what reaches it.
// Paths: /stream answers in two flushed chunks (the second after Release is
// closed), /ws upgrades to a raw echo, everything else echoes a summary.
type Upstream struct {
	Addr          string
	StreamRelease chan struct{}

	mu       sync.Mutex
	requests []Recorded
}

// StartUpstream starts the upstream and stops it when the test ends.
func StartUpstream(t testing.TB) *Upstream {
	t.Helper()
	u := &Upstream{StreamRelease: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(srv.Close)
	u.Addr = srv.Listener.Addr().String()
	return u
}

// Requests returns what reached the upstream so far.
func (u *Upstream) Requests() []Recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Recorded(nil), u.requests...)
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.requests = append(u.requests, Recorded{Method: r.Method, RequestURI: r.RequestURI, Header: r.Header.Clone(), Body: string(body)})
	u.mu.Unlock()

	switch {
	case r.URL.Path == "/ws" && strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw) // echo every byte back
	case r.URL.Path == "/stream":
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "chunk-1\n")
		http.NewResponseController(w).Flush()
		select {
		case <-u.StreamRelease:
		case <-time.After(5 * time.Second):
		}
		io.WriteString(w, "chunk-2\n")
	default:
		w.Header().Set("X-Upstream", "yes")
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "upstream %s %s body=%s", r.Method, r.RequestURI, body)
	}
}

// Caddy is a running Caddy instance.
type Caddy struct {
	BaseURL   string
	Addr      string
	Caddyfile string // the config it was started with
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start loads a config with one HTTP site on a free loopback port whose
// body is site (the rocketchat_voip block and a reverse_proxy, usually) and
// stops Caddy when the test ends. globals go into the global options block;
// unless they say otherwise, the admin endpoint is off and logs are
// discarded ($ROCKETCHAT_VOIP_TEST_LOGS=1 shows them).
func Start(t testing.TB, globals, site string) *Caddy {
	t.Helper()
	port := FreePort(t)
	var g strings.Builder
	if !strings.Contains(globals, "admin") {
		g.WriteString("\tadmin off\n")
	}
	if !strings.Contains(globals, "log") && os.Getenv("ROCKETCHAT_VOIP_TEST_LOGS") == "" {
		g.WriteString("\tlog {\n\t\toutput discard\n\t}\n")
	}
	g.WriteString("\tauto_https off\n\tpersist_config off\n")
	g.WriteString(globals)
	caddyfile := fmt.Sprintf("{\n%s\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", g.String(), port, site)
	if err := Load(caddyfile); err != nil {
		t.Fatalf("loading config: %v\n%s", err, caddyfile)
	}
	t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck
	c := &Caddy{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", port), Addr: fmt.Sprintf("127.0.0.1:%d", port), Caddyfile: caddyfile}
	waitListening(t, c.Addr)
	return c
}

// Load adapts a Caddyfile and runs it, replacing any running config.
func Load(caddyfile string) error {
	cfgJSON, err := Adapt(caddyfile)
	if err != nil {
		return err
	}
	return caddy.Load(cfgJSON, true)
}

// Adapt turns a Caddyfile into Caddy JSON.
func Adapt(caddyfile string) ([]byte, error) {
	cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	return cfgJSON, err
}

func waitListening(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if listening(addr) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("caddy is not listening on %s", addr)
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}
