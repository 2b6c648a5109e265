package systemtest

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrencyLimitRisesForADistantDatabase: with the database a few
// milliseconds away, requests spend their time on the wire, and the bound on
// requests working on the database rises past db_concurrency, up to
// max_open_conns. Every close still lands once. (That the bound falls back
// when round trips slow down is internal/dblimit's unit tests.)
func TestConcurrencyLimitRisesForADistantDatabase(t *testing.T) {
	e, proxy := startEnv(t, envOptions{proxied: true, site: withMetricsRoute,
		extra: []string{"rate_limit off", "db_concurrency 2", "max_open_conns 16"}})
	proxy.SetDelay(3 * time.Millisecond)
	const clients, perClient = 16, 25
	for i := range clients * perClient {
		e.db.AddRoom(t, fmt.Sprintf("R%04d", i), e.visitor, e.roomTs, nil)
	}
	closeConcurrently(t, e, clients, perClient)
	limit := scrape(t, e)[fmt.Sprintf(`caddy_rocketchat_voip_db_concurrency_limit{database="tcp(%s)/%s"}`, proxy.Addr, e.db.Name)]
	if limit <= 2 || limit > 16 {
		t.Errorf("limit %v after %d closes by %d clients, want above db_concurrency 2 and at most max_open_conns 16", limit, clients*perClient, clients)
	}
	if n := e.db.Count(t, "messages WHERE rid LIKE 'R%'"); n != clients*perClient {
		t.Errorf("%d wrap-up messages, want %d", n, clients*perClient)
	}
}

// TestHangUpsDoNotHoldTheBoundDown: a client that hangs up mid-close cuts
// its round trip short. Taken as the fastest round trip, such a sample
// makes every real one look slow, and the bound would stay at its floor
// (db_concurrency) for a minute. After a few hang-ups, concurrent closes
// still raise it.
func TestHangUpsDoNotHoldTheBoundDown(t *testing.T) {
	e, proxy := startEnv(t, envOptions{proxied: true, site: withMetricsRoute,
		extra: []string{"rate_limit off", "db_concurrency 2", "max_open_conns 16"}})
	const clients, perClient, hangUps = 16, 10, 6
	for i := range clients*perClient + hangUps + 1 {
		e.db.AddRoom(t, fmt.Sprintf("R%04d", i), e.visitor, e.roomTs, nil)
	}
	proxy.SetDelay(15 * time.Millisecond)
	// A close first, so that the agent is a known closer whose closes take
	// the same path as the load's.
	if got := e.post(t, closeBody(fmt.Sprintf("R%04d", clients*perClient+hangUps), e.visitor.Token)); got.status != 200 {
		t.Fatalf("first close: %d %s", got.status, got.body)
	}
	impatient := &http.Client{Timeout: 8 * time.Millisecond}
	for i := range hangUps {
		req, _ := http.NewRequest(http.MethodPost, e.caddy.BaseURL+closePath,
			strings.NewReader(closeBody(fmt.Sprintf("R%04d", clients*perClient+i), e.visitor.Token)))
		req.Header.Set("X-User-Id", e.agent.ID)
		req.Header.Set("X-Auth-Token", e.agent.Token)
		req.Header.Set("Content-Type", "application/json")
		if resp, err := impatient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("hang-up %d was answered (%d) within the client's 8 ms, with the database 30 ms away", i, resp.StatusCode)
		}
	}
	// The hang-ups' requests end (client_closed) before the load starts.
	metric := func(name string) float64 {
		return scrape(t, e)[name]
	}
	for deadline := time.Now().Add(10 * time.Second); metric(`caddy_rocketchat_voip_requests_total{outcome="client_closed"}`) < hangUps; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v of %d hang-ups counted client_closed", metric(`caddy_rocketchat_voip_requests_total{outcome="client_closed"}`), hangUps)
		}
	}
	closeConcurrently(t, e, clients, perClient)
	limit := metric(fmt.Sprintf(`caddy_rocketchat_voip_db_concurrency_limit{database="tcp(%s)/%s"}`, proxy.Addr, e.db.Name))
	if limit <= 2 {
		t.Errorf("limit %v after %d hang-ups and %d closes by %d clients, want above db_concurrency 2", limit, hangUps, clients*perClient, clients)
	}
}

// closeConcurrently closes rooms R0000… from clients clients at once,
// perClient each, and fails the test for every close not answered 200.
func closeConcurrently(t *testing.T, e *env, clients, perClient int) {
	t.Helper()
	var wg sync.WaitGroup
	failures := make(chan string, clients*perClient)
	for w := range clients {
		wg.Go(func() {
			for j := range perClient {
				rid := fmt.Sprintf("R%04d", w*perClient+j)
				if got, err := e.tryPost(closeBody(rid, e.visitor.Token)); err != nil {
					failures <- fmt.Sprintf("%s: %v", rid, err)
				} else if got.status != 200 {
					failures <- fmt.Sprintf("%s: %d %s", rid, got.status, got.body)
				}
			}
		})
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
}
