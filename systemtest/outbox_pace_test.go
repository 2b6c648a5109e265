package systemtest

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// TestOutboxDeliversWhileClosesContinue: a steady stream of closes is
// delivered while it lasts, not only once it stops. Four clients close
// rooms one after another; the stream stops early once the receiver has
// the events of the first closes, and must not have run out of rooms
// before that. Afterwards every close is delivered once, in room order.
func TestOutboxDeliversWhileClosesContinue(t *testing.T) {
	const (
		rooms = 3000
		early = 100 // the closes whose delivery must be seen mid-stream
	)
	rc := startReceiver(t)
	db := testdb.New(t)
	agent := db.AddUser(t, "agent1", "livechat-agent")
	rids, tokens := seedRooms(t, db, rooms)
	up := testcaddy.StartUpstream(t)
	c := testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, ""), fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\trate_limit off\n\t}\n\treverse_proxy %s", db.DSN, up.Addr))

	var (
		next, failed atomic.Int64
		stop         = make(chan struct{})
		wg           sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := int(next.Add(1)) - 1
				if i >= rooms {
					return
				}
				req, _ := http.NewRequest(http.MethodPost, c.BaseURL+closePath, strings.NewReader(closeBody(rids[i], tokens[i])))
				req.Header.Set("X-User-Id", agent.ID)
				req.Header.Set("X-Auth-Token", agent.Token)
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				}
				if err == nil {
					resp.Body.Close()
				}
			}
		})
	}
	streamEnded := make(chan struct{})
	go func() { wg.Wait(); close(streamEnded) }()

	earlyRooms := map[string]bool{}
	for _, rid := range rids[:early] {
		earlyRooms[rid] = true
	}
	for covered := false; !covered; {
		select {
		case <-streamEnded:
			t.Fatalf("all %d closes were made before the receiver had the first %d (%d of them delivered): delivery waits for the stream to stop",
				rooms, early, deliveredOf(rc, earlyRooms))
		case <-time.After(20 * time.Millisecond):
		}
		covered = deliveredOf(rc, earlyRooms) == early
	}
	made := next.Load()
	close(stop)
	<-streamEnded
	t.Logf("the first %d closes were delivered while the stream went on (%d closes begun by then)", early, made)
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d closes failed", n)
	}

	ids := eventIDs(t, db)
	if len(ids) != int(min(next.Load(), rooms)) {
		t.Fatalf("%d outbox rows for %d closes", len(ids), min(next.Load(), rooms))
	}
	for id, n := range rc.waitFor(t, ids, 60*time.Second) {
		if n != 1 {
			t.Errorf("event %d delivered %d times", id, n)
		}
	}
	rc.checkOrderAndSignatures(t)
}

// deliveredOf counts the rooms of want whose close the receiver accepted.
func deliveredOf(rc *receiver, want map[string]bool) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	seen := map[string]bool{}
	for _, d := range rc.accepted {
		if want[d.rid] {
			seen[d.rid] = true
		}
	}
	return len(seen)
}
