package systemtest

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// TestFailoverToTheNextServer: the DSN names two servers (two proxies in
// front of one MariaDB stand in for two cluster nodes). The first dies under
// load: only requests in flight then may answer 503, none started a second
// later does, every room is closed exactly once, and once the first server
// is back the pool returns to it.
func TestFailoverToTheNextServer(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	db := testdb.New(t)
	first, second := testdb.StartProxy(t, db.Cfg.Addr), testdb.StartProxy(t, db.Cfg.Addr)
	cfg := db.Cfg.Clone()
	cfg.Addr = first.Addr
	dsn := strings.Replace(cfg.FormatDSN(), "tcp("+first.Addr+")", "tcp("+first.Addr+","+second.Addr+")", 1)
	agent := db.AddUser(t, "agent1", "livechat-agent")
	up := testcaddy.StartUpstream(t)
	c := testcaddy.Start(t, "", fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\tdb_timeout 1s\n\t\trate_limit off\n\t}\n\treverse_proxy %s", dsn, up.Addr))
	rids, tokens := seedRooms(t, db, 3000)

	type result struct {
		start  time.Time
		status int
		rid    string
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	pending := make(chan int, len(rids))
	for i := range rids {
		pending <- i
	}
	stop := make(chan struct{})
	client := &http.Client{Timeout: 10 * time.Second}
	for range 8 {
		wg.Go(func() {
			for {
				// Close a room; once none is left, keep the pool busy with
				// requests whose token the database refuses.
				i, token := -1, "not-a-token"
				select {
				case <-stop:
					return
				case i = <-pending:
					token = agent.Token
				default:
				}
				rid, body := "", closeBody("none", "none")
				if i >= 0 {
					rid, body = rids[i], closeBody(rids[i], tokens[i])
				}
				req, _ := http.NewRequest(http.MethodPost, c.BaseURL+closePath, strings.NewReader(body))
				req.Header.Set("X-User-Id", agent.ID)
				req.Header.Set("X-Auth-Token", token)
				req.Header.Set("Content-Type", "application/json")
				r := result{start: time.Now(), rid: rid}
				if resp, err := client.Do(req); err == nil {
					r.status = resp.StatusCode
					resp.Body.Close()
				}
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
				if i >= 0 && r.status != 200 && r.status != 400 {
					pending <- i // 400 is room-closed: an earlier try landed although its answer was lost
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	first.Down()
	down := time.Now()
	time.Sleep(2 * time.Second)
	first.Up()
	// The pool drifts back to the first server as fallback connections age out.
	back := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && !back; time.Sleep(100 * time.Millisecond) {
		back = first.Conns() > 0
	}
	close(stop)
	wg.Wait()

	closed, failedLate, failed := map[string]int{}, 0, 0
	for _, r := range results {
		switch {
		case r.status == 200:
			closed[r.rid]++
		case r.status == 400 || r.status == 401:
		case r.start.After(down.Add(time.Second)):
			failedLate++
		default:
			failed++
		}
	}
	t.Logf("%d requests, %d closes, %d failed around the failover, %d failed later", len(results), len(closed), failed, failedLate)
	if failedLate > 0 {
		t.Errorf("%d requests started more than 1 s after the first server died still failed", failedLate)
	}
	for rid, n := range closed {
		if n != 1 {
			t.Errorf("room %s closed %d times", rid, n)
		}
	}
	// Every closed room has exactly one message and one outbox row, and a
	// room whose close answered 200 is closed (a close whose answer was
	// lost may be closed without a 200).
	if n := db.Count(t, "rooms r WHERE r.open = FALSE AND ((SELECT COUNT(*) FROM messages m WHERE m.rid = r.id) != 1 OR (SELECT COUNT(*) FROM room_events e WHERE e.rid = r.id) != 1)"); n != 0 {
		t.Errorf("%d closed rooms without exactly one message and one outbox row", n)
	}
	if n := db.Count(t, "rooms WHERE open = FALSE"); n < len(closed) {
		t.Errorf("%d rooms closed in MySQL, %d closes answered 200", n, len(closed))
	}
	if !back {
		t.Error("the pool did not return to the first server after it came back")
	}
}
