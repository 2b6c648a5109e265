package systemtest

import (
	"fmt"
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
	limit := scrape(t, e)[fmt.Sprintf(`caddy_rocketchat_voip_db_concurrency_limit{database="tcp(%s)/%s"}`, proxy.Addr, e.db.Name)]
	if limit <= 2 || limit > 16 {
		t.Errorf("limit %v after %d closes by %d clients, want above db_concurrency 2 and at most max_open_conns 16", limit, clients*perClient, clients)
	}
	if n := e.db.Count(t, "messages WHERE rid LIKE 'R%'"); n != clients*perClient {
		t.Errorf("%d wrap-up messages, want %d", n, clients*perClient)
	}
}
