package systemtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// mixedRequest is one kind of request of the soak and its right answers.
type mixedRequest struct {
	kind  string
	build func(e *env, i int) *http.Request
	ok    func(status int, body string) bool
}

func mixedTraffic(e *env, plain testdb.Agent, rids, tokens []string) []mixedRequest {
	post := func(user testdb.Agent, token, body string) *http.Request {
		req, _ := http.NewRequest(http.MethodPost, e.caddy.BaseURL+closePath, strings.NewReader(body))
		req.Header.Set("X-User-Id", user.ID)
		req.Header.Set("X-Auth-Token", token)
		req.Header.Set("Content-Type", "application/json")
		return req
	}
	is := func(status int, body string) func(int, string) bool {
		return func(s int, b string) bool { return s == status && b == body }
	}
	return []mixedRequest{
		{"close", func(e *env, i int) *http.Request {
			return post(e.agent, e.agent.Token, closeBody(rids[i%len(rids)], tokens[i%len(rids)]))
		},
			func(s int, b string) bool {
				return s == 200 && strings.HasPrefix(b, `{"rid":"BULK`) || s == 400 && b == `{"success":false,"error":"room-closed"}`
			}},
		{"unauthorized", func(e *env, i int) *http.Request { return post(e.agent, "wrong", "{}") }, is(401, body401)},
		{"forbidden", func(e *env, i int) *http.Request { return post(plain, plain.Token, closeBody("x", "y")) }, is(403, body403)},
		{"invalid_params", func(e *env, i int) *http.Request { return post(e.agent, e.agent.Token, `{"rid":1}`) }, is(400, invalid("must have required property 'token'"))},
		{"invalid_token", func(e *env, i int) *http.Request { return post(e.agent, e.agent.Token, closeBody("x", "nobody")) }, is(400, `{"success":false,"error":"invalid-token"}`)},
		{"invalid_room", func(e *env, i int) *http.Request {
			return post(e.agent, e.agent.Token, closeBody("nowhere", tokens[0]))
		}, is(400, `{"success":false,"error":"invalid-room"}`)},
		{"too_large", func(e *env, i int) *http.Request { return post(e.agent, e.agent.Token, strings.Repeat(" ", 5000)) }, is(413, `{"success":false,"error":"request entity too large"}`)},
		{"pass_through", func(e *env, i int) *http.Request {
			req, _ := http.NewRequest(http.MethodGet, e.caddy.BaseURL+fmt.Sprintf("/api/v1/me?i=%d", i), nil)
			return req
		}, func(s int, b string) bool { return s == 200 && strings.HasPrefix(b, "upstream GET /api/v1/me?i=") }},
	}
}

// soakDuration is $ROCKETCHAT_VOIP_SOAK (for example 10m); unset skips the soak.
func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("ROCKETCHAT_VOIP_SOAK")
	if v == "" {
		t.Skip("set ROCKETCHAT_VOIP_SOAK=10m to run the soak (scripts/reliability.sh does)")
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("ROCKETCHAT_VOIP_SOAK: %v", err)
	}
	return d
}

// The soak: mixed traffic of every outcome for $ROCKETCHAT_VOIP_SOAK; no
// answer but the expected ones, no goroutine growth, connections bounded.
func TestSoak(t *testing.T) {
	duration := soakDuration(t)
	// Caddy keeps idle connections to the upstream for reuse (one per
	// concurrent client here, 2 goroutines each on Caddy's side and 1 on the
	// upstream's); a short idle timeout lets that pool drain before the
	// goroutines are counted, so that what remains would be a leak.
	e, _ := startEnv(t, envOptions{
		extra: []string{"rate_limit off", "max_body 4KiB", "max_open_conns 16"},
		site: func(handlers string) string {
			return handlers + " {\n\t\ttransport http {\n\t\t\tkeepalive 2s\n\t\t}\n\t}"
		},
	})
	plain := e.db.AddUser(t, "plain", "user")
	rids, tokens := seedRooms(t, e.db, 5000)
	kinds := mixedTraffic(e, plain, rids, tokens)

	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	run := func(d time.Duration) (sent, bad int64, firstBad string, maxConns int) {
		var wg sync.WaitGroup
		var nSent, nBad atomic.Int64
		var first atomic.Value
		stop := time.Now().Add(d)
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(stop); i++ {
					k := kinds[rand.IntN(len(kinds))]
					resp, err := client.Do(k.build(e, rand.IntN(1<<30)))
					nSent.Add(1)
					if err != nil {
						nBad.Add(1)
						first.CompareAndSwap(nil, k.kind+": "+err.Error())
						continue
					}
					body := readAll(resp)
					if !k.ok(resp.StatusCode, body) {
						nBad.Add(1)
						first.CompareAndSwap(nil, fmt.Sprintf("%s: %d %s", k.kind, resp.StatusCode, body))
					}
				}
			}()
		}
		// Reopen closed rooms now and then so that closes keep succeeding,
		// and count the gateway's connections, on one connection of the
		// test's own that the count leaves out.
		own, err := e.db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer own.Close()
		for time.Now().Before(stop) {
			time.Sleep(time.Second)
			if _, err := own.ExecContext(context.Background(), "UPDATE rooms SET open = TRUE WHERE open = FALSE AND id LIKE 'BULK%'"); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := own.QueryRowContext(context.Background(),
				"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()", e.db.Name).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n > maxConns {
				maxConns = n
				if n > 16 {
					rows, _ := own.QueryContext(context.Background(), "SELECT ID, COMMAND, TIME, COALESCE(STATE, ''), COALESCE(INFO, '') FROM information_schema.PROCESSLIST WHERE DB = ?", e.db.Name)
					for rows != nil && rows.Next() {
						var id, secs int64
						var cmd, state, info string
						rows.Scan(&id, &cmd, &secs, &state, &info)
						t.Logf("connection %d: %s %ds %s %.60s", id, cmd, secs, state, info)
					}
				}
			}
		}
		wg.Wait()
		f, _ := first.Load().(string)
		return nSent.Load(), nBad.Load(), f, maxConns
	}

	run(5 * time.Second) // warm up pools, caches and idle connections
	client.CloseIdleConnections()
	time.Sleep(time.Second)
	goroutinesBefore := runtime.NumGoroutine()
	stacksBefore := goroutineStacks()
	sent, bad, first, maxConns := run(duration)
	client.CloseIdleConnections()
	// Let connections that are winding down (the idle keep-alives to the
	// upstream, see above) close; a leak does not settle.
	goroutinesAfter := runtime.NumGoroutine()
	for settle := time.Now().Add(15 * time.Second); goroutinesAfter > goroutinesBefore+20 && time.Now().Before(settle); {
		time.Sleep(500 * time.Millisecond)
		client.CloseIdleConnections()
		goroutinesAfter = runtime.NumGoroutine()
	}
	t.Logf("soak %v: %d requests, %d unexpected; goroutines %d before, %d after; at most %d MySQL connections",
		duration, sent, bad, goroutinesBefore, goroutinesAfter, maxConns)
	if bad > 0 {
		t.Errorf("%d unexpected answers; first: %s", bad, first)
	}
	if goroutinesAfter > goroutinesBefore+20 {
		t.Errorf("goroutines grew from %d to %d\nbefore:\n%s\nafter:\n%s", goroutinesBefore, goroutinesAfter, stacksBefore, goroutineStacks())
	}
	if maxConns > 16 {
		t.Errorf("%d MySQL connections, more than max_open_conns (16)", maxConns)
	}
}

// A real MariaDB stopped for 5 s and started again under load
// ($ROCKETCHAT_VOIP_RESTART=1; needs mariadbd installed): the promises of
// outageDrill hold.
func TestMariaDBRestartUnderLoad(t *testing.T) {
	if os.Getenv("ROCKETCHAT_VOIP_RESTART") == "" {
		t.Skip("set ROCKETCHAT_VOIP_RESTART=1 to restart a real MariaDB under load (scripts/reliability.sh does)")
	}
	server := testdb.StartServer(t)
	cfg, _ := mysql.ParseDSN(server.DSN(""))
	db := testdb.NewOn(t, cfg)
	agent := db.AddUser(t, "agent1", "livechat-agent")
	rids, tokens := seedRooms(t, db, 3000)
	up := testcaddy.StartUpstream(t)
	c := testcaddy.Start(t, "", fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\tdb_timeout 1s\n\t\trate_limit off\n\t}\n\treverse_proxy %s", db.DSN, up.Addr))

	d := &outageDrill{
		baseURL: c.BaseURL, agent: agent, db: db, rids: rids, tokens: tokens,
		takeDown: server.Stop, bringBack: func() { server.Start(t) }, outage: 5 * time.Second, warmUp: 2 * time.Second,
	}
	d.run(t)
}

// goroutineStacks is the goroutine profile, grouped by stack.
func goroutineStacks() string {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}
