package rocketchatvoip_test

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
	e := newEnv(t, "rate_limit off", "max_body 4KiB", "max_open_conns 16")
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
	// Let connections that are winding down (HTTP keep-alives, pool
	// connections past their idle time) finish; a leak does not settle.
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

// A real MariaDB restart under load ($ROCKETCHAT_VOIP_RESTART=1; needs
// mariadbd installed): room.close answers 503 within db_timeout while the
// server is down, pass-through keeps working, closes succeed again within
// 1 s of its return without restarting Caddy, and nothing is half-written.
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

	type result struct {
		start, end time.Time
		answer     string
	}
	var mu sync.Mutex
	var results []result
	var passFailures atomic.Int64
	pending := make(chan int, len(rids))
	for i := range rids {
		pending <- i
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 30 * time.Second}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var i int
				select {
				case <-stop:
					return
				case i = <-pending:
				}
				req, _ := http.NewRequest(http.MethodPost, c.BaseURL+closePath, strings.NewReader(closeBody(rids[i], tokens[i])))
				req.Header.Set("X-User-Id", agent.ID)
				req.Header.Set("X-Auth-Token", agent.Token)
				req.Header.Set("Content-Type", "application/json")
				r := result{start: time.Now()}
				resp, err := client.Do(req)
				r.end = time.Now()
				if err != nil {
					r.answer = err.Error()
				} else {
					r.answer = fmt.Sprint(resp.StatusCode, " ", readAll(resp))
				}
				if strings.HasPrefix(r.answer, "503 ") {
					pending <- i
				}
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := client.Get(c.BaseURL + "/api/info")
			if err != nil || resp.StatusCode != 200 {
				passFailures.Add(1)
			}
			if err == nil {
				readAll(resp)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	time.Sleep(2 * time.Second)
	server.Stop()
	stopped := time.Now()
	time.Sleep(5 * time.Second)
	server.Start(t)
	back := time.Now()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()

	var during, failedAfter, slow int
	for _, r := range results {
		switch {
		case strings.HasPrefix(r.answer, "200 "), r.answer == `400 {"success":false,"error":"room-closed"}`:
		case r.answer == "503 "+body503:
			if r.start.After(back.Add(time.Second)) {
				failedAfter++
			}
		default:
			t.Errorf("unexpected answer %q", r.answer)
		}
		if r.end.Sub(r.start) > 2500*time.Millisecond {
			slow++
		}
		if r.start.After(stopped) && r.end.Before(back) {
			during++
		}
	}
	t.Logf("%d closes, %d while MariaDB was down, %d pass-through failures", len(results), during, passFailures.Load())
	if failedAfter > 0 || slow > 0 || passFailures.Load() > 0 || during == 0 {
		t.Fatalf("%d closes failed more than 1s after MariaDB returned, %d took longer than db_timeout, %d pass-through failures, %d closes during the outage",
			failedAfter, slow, passFailures.Load(), during)
	}
	if n := db.Count(t, `rooms r WHERE NOT (
	  (r.open = FALSE AND r.msgs = 1 AND (SELECT COUNT(*) FROM messages m WHERE m.rid = r.id) = 1 AND (SELECT COUNT(*) FROM room_events v WHERE v.rid = r.id) = 1)
	  OR (r.open = TRUE AND r.msgs = 0 AND (SELECT COUNT(*) FROM messages m WHERE m.rid = r.id) = 0 AND (SELECT COUNT(*) FROM room_events v WHERE v.rid = r.id) = 0))`); n != 0 {
		t.Fatalf("%d rooms half-written", n)
	}
}

// goroutineStacks is the goroutine profile, grouped by stack.
func goroutineStacks() string {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}
