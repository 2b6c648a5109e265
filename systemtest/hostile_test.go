package systemtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// partialRequest is a room.close written by hand, so that a test can stop in
// the middle of its body.
type partialRequest struct {
	conn net.Conn
	br   *bufio.Reader
}

// startRaw sends the request line, the headers and the first part of the
// body. contentLength < 0 sends the body chunked (each part one chunk).
func startRaw(t *testing.T, e *env, headers map[string]string, contentLength int, part string) *partialRequest {
	t.Helper()
	conn, err := net.Dial("tcp", e.caddy.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var head strings.Builder
	fmt.Fprintf(&head, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", closePath, e.caddy.Addr)
	for k, v := range headers {
		fmt.Fprintf(&head, "%s: %s\r\n", k, v)
	}
	if contentLength >= 0 {
		fmt.Fprintf(&head, "Content-Length: %d\r\n\r\n", contentLength)
	} else {
		head.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	}
	rr := &partialRequest{conn: conn, br: bufio.NewReader(conn)}
	if _, err := io.WriteString(conn, head.String()); err != nil {
		t.Fatal(err)
	}
	rr.send(t, part, contentLength < 0)
	return rr
}

func (rr *partialRequest) send(t *testing.T, part string, chunked bool) {
	t.Helper()
	if chunked && part != "" {
		part = fmt.Sprintf("%x\r\n%s\r\n", len(part), part)
	}
	if _, err := io.WriteString(rr.conn, part); err != nil {
		t.Fatal(err)
	}
}

// answer reads the response, failing if none comes within 10s.
func (rr *partialRequest) answer(t *testing.T) response {
	t.Helper()
	r, _ := rr.answerAndClose(t)
	return r
}

// answerAndClose is answer, and whether the server closes the connection.
func (rr *partialRequest) answerAndClose(t *testing.T) (response, bool) {
	t.Helper()
	rr.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(rr.br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}, resp.Close
}

// Credentials that are not a recent closer's are authenticated before the
// body is read, so a 401 needs none of it: a client that declares a large
// body within max_body and never sends it is answered all the same, and
// its connection closed. A body
// without Content-Length is still read (and dropped) to its end first, so
// that one past max_body answers 413 before anything else, as in
// Rocket.Chat, whose body parser runs before the route.
func TestUnknownCredentialsAnsweredBeforeTheirBody(t *testing.T) {
	e := newEnv(t, "max_body 256KiB", "rate_limit off")
	madeUp := map[string]string{"X-User-Id": "someone", "X-Auth-Token": "made-up"}
	wrongToken := map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": "made-up"}
	for name, headers := range map[string]map[string]string{"made-up": madeUp, "the agent's id, a wrong token": wrongToken, "no credentials": {}} {
		t.Run(name, func(t *testing.T) {
			rr := startRaw(t, e, headers, 200000, `{"rid":"ROOM1",`)
			got, closed := rr.answerAndClose(t)
			expect(t, got, 401, body401)
			if !closed {
				t.Error("the connection of an unread large body was kept open")
			}
		})
	}
	t.Run("chunked, past max_body", func(t *testing.T) {
		rr := startRaw(t, e, madeUp, -1, strings.Repeat("x", 150000))
		rr.send(t, strings.Repeat("x", 150000), true)
		rr.send(t, "0\r\n\r\n", false)
		expect(t, rr.answer(t), 413, `{"success":false,"error":"request entity too large"}`)
	})
	t.Run("a small body, sent whole: the connection is kept", func(t *testing.T) {
		body := closeBody(e.roomID, e.visitor.Token)
		got, closed := startRaw(t, e, madeUp, len(body), body).answerAndClose(t)
		expect(t, got, 401, body401)
		if closed {
			t.Error("a 401 to a small body closed the connection")
		}
	})
	t.Run("chunked, within max_body", func(t *testing.T) {
		rr := startRaw(t, e, madeUp, -1, closeBody(e.roomID, e.visitor.Token))
		rr.send(t, "0\r\n\r\n", false)
		expect(t, rr.answer(t), 401, body401)
	})
	if !e.room(t, e.roomID).open {
		t.Fatal("a refused request closed the room")
	}
	// An agent not yet known here is authenticated first too, and its body,
	// sent in pieces, still closes the room.
	body := closeBody(e.roomID, e.visitor.Token)
	headers := map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token}
	rr := startRaw(t, e, headers, len(body), body[:5])
	time.Sleep(100 * time.Millisecond)
	rr.send(t, body[5:], false)
	expect(t, rr.answer(t), 200, `{"rid":"ROOM1","success":true}`)
	if e.room(t, e.roomID).open {
		t.Fatal("the room is still open")
	}
}

// While body_budget is all held, a request whose body needs some is refused
// with 503 under its own outcome, body_budget, once it has waited its turn
// (at most a second); when the budget is free again, closes go through.
func TestBodyBudgetSheds(t *testing.T) {
	e, _ := startEnv(t, envOptions{extra: []string{"max_body 1KiB", "body_budget 1KiB", "rate_limit off"}, site: withMetricsRoute})
	e.db.AddRoom(t, "ROOM2", e.visitor, time.Now().UTC(), nil)
	before := scrape(t, e)
	headers := map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token}
	first := closeBody(e.roomID, e.visitor.Token)
	padded := first[:len(first)-1] + `,"options":{"comment":"` + strings.Repeat("c", 1000-len(first)+1-len(`,"options":{"comment":""}}`)) + `"}}`
	if len(padded) != 1000 {
		t.Fatalf("padded body is %d bytes", len(padded))
	}
	holder := startRaw(t, e, headers, len(padded), padded[:10])
	used := `caddy_rocketchat_voip_body_budget_used_bytes`
	for deadline := time.Now().Add(10 * time.Second); scrape(t, e)[used] != 1000; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached 1000: %v", used, scrape(t, e)[used])
		}
	}
	expect(t, e.post(t, closeBody("ROOM2", e.visitor.Token)), 503, body503)
	holder.send(t, padded[10:], false)
	expect(t, holder.answer(t), 200, `{"rid":"ROOM1","success":true}`)
	expect(t, e.post(t, closeBody("ROOM2", e.visitor.Token)), 200, `{"rid":"ROOM2","success":true}`)

	after := scrape(t, e)
	key := func(o string) string { return fmt.Sprintf(`caddy_rocketchat_voip_requests_total{outcome="%s"}`, o) }
	for outcome, n := range map[string]float64{"body_budget": 1, "closed": 2, "unavailable": 0, "overloaded": 0} {
		if got := after[key(outcome)] - before[key(outcome)]; got != n {
			t.Errorf("%s grew by %v, want %v", outcome, got, n)
		}
	}
	if after[used] != 0 || after["caddy_rocketchat_voip_body_budget_bytes"] < 1024 {
		t.Errorf("budget after: used %v of %v", after[used], after["caddy_rocketchat_voip_body_budget_bytes"])
	}
}

// A request shed because every database slot stayed busy for its whole
// db_timeout answers 503 as overloaded, not unavailable: it is counted apart
// and logged at warn at most once a second with a count, never one error
// line per request, since the database never saw it.
func TestOverloadIsNotADatabaseFailure(t *testing.T) {
	dir := t.TempDir()
	moduleLog := filepath.Join(dir, "caddy.log")
	globals := fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel INFO\n\t}\n", moduleLog)
	e, proxy := startEnv(t, envOptions{extra: []string{"db_timeout 400ms", "db_concurrency 1", "max_open_conns 1", "rate_limit off"}, proxied: true, globals: globals, site: withMetricsRoute})
	before := scrape(t, e)
	// Each query takes at least 150 ms, one at a time: of 20 requests at
	// once, only a few can have the slot within their 400 ms.
	proxy.SetDelay(150 * time.Millisecond)
	const n = 20
	statuses := make(chan response, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := e.try(http.MethodPost, closePath, map[string]string{"X-User-Id": fmt.Sprintf("nobody%d", i), "X-Auth-Token": "made-up"}, "{}")
			if err != nil {
				t.Error(err)
			}
			statuses <- r
		})
	}
	wg.Wait()
	close(statuses)
	proxy.SetDelay(0)
	for r := range statuses {
		if !(r.status == 401 && r.body == body401) && !(r.status == 503 && r.body == body503) {
			t.Errorf("got %d %s", r.status, r.body)
		}
	}
	var after map[string]float64
	grew := func(o string) float64 {
		key := fmt.Sprintf(`caddy_rocketchat_voip_requests_total{outcome="%s"}`, o)
		return after[key] - before[key]
	}
	// A request is counted just after its answer is written.
	waitFor(t, "every request to be counted", func() bool {
		after = scrape(t, e)
		return grew("overloaded")+grew("unavailable")+grew("unauthorized") >= n
	})
	overloaded := grew("overloaded")
	t.Logf("of %d: %v overloaded, %v unavailable, %v unauthorized", n, overloaded, grew("unavailable"), grew("unauthorized"))
	if overloaded < n/4 {
		t.Fatalf("overloaded grew by %v, want at least %d", overloaded, n/4)
	}
	if total := overloaded + grew("unavailable") + grew("unauthorized"); total != n {
		t.Errorf("overloaded + unavailable + unauthorized = %v, want %d", total, n)
	}

	// The last count's line is due within a second.
	var logs []byte
	var logged float64
	var lines int
	waitFor(t, "the shed lines to count every overloaded request", func() bool {
		logs, logged, lines = shedLines(t, moduleLog)
		return logged >= overloaded
	})
	if logged != overloaded || lines == 0 || lines > 3 {
		t.Fatalf("%d warn lines counting %v shed requests, want 1 to 3 lines counting %v:\n%s", lines, logged, overloaded, logs)
	}
}

// shedLines reads the module's log and sums the warn lines that count shed
// (overloaded) requests; a line about an overloaded request at another
// level fails the test.
func shedLines(t *testing.T, moduleLog string) (logs []byte, logged float64, lines int) {
	t.Helper()
	logs, err := os.ReadFile(moduleLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(logs), "\n") {
		var entry struct {
			Level, Msg, Outcome string
			Requests            float64
		}
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Outcome == "" {
			continue
		}
		switch {
		case entry.Outcome == "overloaded" && entry.Level == "warn":
			logged += entry.Requests
			lines++
		case entry.Outcome == "overloaded":
			t.Fatalf("an overloaded request logged at %s: %s", entry.Level, line)
		}
	}
	return logs, logged, lines
}

// While a flood of made-up credentials fills the queue for the database
// slot, an agent whose credentials recently closed a room waits ahead of
// them: its close succeeds within db_timeout while the flood is shed.
func TestAgentsGoAheadOfAFlood(t *testing.T) {
	e, proxy := startEnv(t, envOptions{extra: []string{"db_timeout 2s", "db_concurrency 1", "max_open_conns 1", "rate_limit off"}, proxied: true, site: withMetricsRoute})
	e.db.AddRoom(t, "ROOM2", e.visitor, time.Now().UTC(), nil)
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`) // now a known closer
	before := scrape(t, e)
	// 100 ms a round trip, one request at a time: 100 made-up requests
	// queue for several times db_timeout (the proxy's delay is not a strict
	// 100 ms per request on a busy machine; 40 were too few to queue).
	proxy.SetDelay(100 * time.Millisecond)
	defer proxy.SetDelay(0)
	const n = 100
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := e.try(http.MethodPost, closePath, map[string]string{"X-User-Id": fmt.Sprintf("nobody%d", i), "X-Auth-Token": "made-up"}, "{}")
			if err != nil {
				t.Error(err)
			} else if !(r.status == 401 && r.body == body401) && !(r.status == 503 && r.body == body503) {
				t.Errorf("made-up credentials got %d %s", r.status, r.body)
			}
		})
	}
	waiting := fmt.Sprintf(`caddy_rocketchat_voip_db_waiting{database="tcp(%s)/%s"}`, proxy.Addr, e.db.Name)
	waitFor(t, "the flood to queue for the slot", func() bool { return scrape(t, e)[waiting] >= n/2 })
	expect(t, e.post(t, closeBody("ROOM2", e.visitor.Token)), 200, `{"rid":"ROOM2","success":true}`)
	wg.Wait()
	after := scrape(t, e)
	key := `caddy_rocketchat_voip_requests_total{outcome="overloaded"}`
	if shed := after[key] - before[key]; shed < n/4 {
		t.Fatalf("only %v of the flood were shed: it never queued long enough to test anything", shed)
	}
}

// While agents known to this gateway keep every database slot busy (their
// requests wait ahead), an agent on its first close here, whose credentials
// are not yet known, still gets a share of the slots: its close succeeds
// within db_timeout instead of waiting behind them until it is shed.
func TestNewAgentIsNotStarvedByKnownOnes(t *testing.T) {
	e, proxy := startEnv(t, envOptions{extra: []string{"db_timeout 2s", "db_concurrency 1", "max_open_conns 1", "rate_limit off"}, proxied: true, site: withMetricsRoute})
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`) // agent1 is now known
	newcomer := e.db.AddUser(t, "agent2", "livechat-agent")
	visitor2 := e.db.AddVisitor(t, "visitor2")
	e.db.AddRoom(t, "ROOM2", visitor2, time.Now().UTC(), nil)

	// One slot, 20 ms a round trip, four clients of agent1 asking again and
	// again (the room is closed: each answer is a 400 after one query):
	// three of them always wait ahead.
	proxy.SetDelay(20 * time.Millisecond)
	defer proxy.SetDelay(0)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var busy sync.WaitGroup
	for range 4 {
		busy.Add(1)
		wg.Go(func() {
			first := true
			defer func() {
				if first {
					busy.Done()
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := e.tryPost(closeBody(e.roomID, e.visitor.Token))
				if err != nil {
					t.Error(err)
					return
				}
				if r.status != 400 || r.body != `{"success":false,"error":"room-closed"}` {
					t.Errorf("a known agent got %d %s", r.status, r.body)
				}
				if first {
					busy.Done()
					first = false
				}
			}
		})
	}
	busy.Wait()
	got := e.postAs(t, newcomer, closeBody("ROOM2", visitor2.Token))
	close(stop)
	wg.Wait()
	expect(t, got, 200, `{"rid":"ROOM2","success":true}`)
	if !e.room(t, "ROOM2").closed() {
		t.Fatal("ROOM2 is still open")
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
	}
}
