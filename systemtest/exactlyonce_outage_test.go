package systemtest

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// seedRooms inserts n open voip rooms spread over a few visitors and returns
// their ids with the visitor token of each.
func seedRooms(t *testing.T, db *testdb.DB, n int) (rids, tokens []string) {
	t.Helper()
	// A prefix of the batch's own, so that a test can seed more than once.
	prefix := testdb.RandomID()[:6]
	var visitors []testdb.Visitor
	for i := 0; i < 10; i++ {
		visitors = append(visitors, db.AddVisitor(t, fmt.Sprintf("bulk-%s-v%d", prefix, i)))
	}
	ts := time.Now().UTC().Add(-time.Minute)
	for start := 0; start < n; start += 100 {
		var q strings.Builder
		var args []any
		q.WriteString("INSERT INTO rooms (id, t, open, ts, visitor_id, visitor_token, visitor_username, msgs, updated_at) VALUES ")
		for i := start; i < min(start+100, n); i++ {
			v := visitors[i%len(visitors)]
			if i > start {
				q.WriteString(",")
			}
			q.WriteString("(?, 'v', TRUE, ?, ?, ?, ?, 0, ?)")
			rid := fmt.Sprintf("BULK%s%05d", prefix, i)
			args = append(args, rid, ts, v.ID, v.Token, v.Username, ts)
			rids, tokens = append(rids, rid), append(tokens, v.Token)
		}
		db.Exec(t, q.String(), args...)
	}
	return rids, tokens
}

// Two gateway processes against one MariaDB; 64 clients close 1,000 rooms,
// each room asked for four times, twice through each instance: exactly one
// success per room, and every other answer room-closed (a deadlock or lock
// wait never reaches a client).
func TestTwoInstancesCloseEachRoomExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	db := testdb.New(t)
	agent := db.AddUser(t, "agent1", "livechat-agent")
	const rooms = 1000
	rids, tokens := seedRooms(t, db, rooms)
	up := testcaddy.StartUpstream(t)
	site := fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\trate_limit off\n\t\tmax_open_conns 32\n\t}\n\treverse_proxy %s", db.DSN, up.Addr)
	instances := []*testcaddy.Process{testcaddy.StartProcess(t, "", site), testcaddy.StartProcess(t, "", site)}

	type job struct{ room, instance int }
	var jobs []job
	for r := 0; r < rooms; r++ {
		for k := 0; k < 4; k++ {
			jobs = append(jobs, job{r, k % 2})
		}
	}
	rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	queue := make(chan job, len(jobs))
	for _, j := range jobs {
		queue <- j
	}
	close(queue)

	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var mu sync.Mutex
	wins := map[string]int{}
	others := map[string]int{}
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range queue {
				req, _ := http.NewRequest(http.MethodPost, instances[j.instance].BaseURL+closePath, strings.NewReader(closeBody(rids[j.room], tokens[j.room])))
				req.Header.Set("X-User-Id", agent.ID)
				req.Header.Set("X-Auth-Token", agent.Token)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				answer := ""
				if err != nil {
					answer = err.Error()
				} else {
					answer = fmt.Sprint(resp.StatusCode, " ", readAll(resp))
				}
				mu.Lock()
				switch answer {
				case `200 {"rid":"` + rids[j.room] + `","success":true}`:
					wins[rids[j.room]]++
				default:
					others[answer]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(others) != 1 || others[`400 {"success":false,"error":"room-closed"}`] != 3*rooms {
		t.Errorf("answers other than success: %v, want exactly %d room-closed", others, 3*rooms)
	}
	for _, rid := range rids {
		if wins[rid] != 1 {
			t.Errorf("room %s closed %d times", rid, wins[rid])
		}
	}
	if m, ev, open := db.Count(t, "messages"), db.Count(t, "room_events"), db.Count(t, "rooms WHERE open"); m != rooms || ev != rooms || open != 0 {
		t.Fatalf("%d messages, %d outbox rows, %d rooms open; want %d, %d, 0", m, ev, open, rooms, rooms)
	}
	if n := db.Count(t, "rooms WHERE msgs <> 1"); n != 0 {
		t.Fatalf("%d rooms whose message count is not exactly 1", n)
	}
}

// An outage drill: 8 clients close rooms (a room answered 503 goes back to
// be tried again later) and 2 send pass-through GETs to baseURL while
// takeDown and bringBack make the database unreachable for 5 s. The
// promises judged afterwards: each room.close answers 503 within db_timeout
// (1 s), never succeeds while the database is gone, and succeeds again
// within 1 s of its return without restarting Caddy; pass-through never
// fails; no room is left half-written.
type outageDrill struct {
	baseURL        string
	agent          testdb.Agent
	db             *testdb.DB
	rids, tokens   []string
	takeDown       func()
	bringBack      func()
	outage, warmUp time.Duration
	closes, passes []outageResult
	// down: takeDown has returned; back: bringBack was called (the database
	// was unreachable from down to back); up: bringBack has returned (it
	// surely answers from then on).
	down, back, up time.Time
}

type outageResult struct {
	start, end time.Time
	answer     string
	rid        string
}

func (d *outageDrill) run(t *testing.T) {
	t.Helper()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	pending := make(chan int, len(d.rids))
	for i := range d.rids {
		pending <- i
	}
	stop := make(chan struct{})
	client := &http.Client{Timeout: 30 * time.Second}
	send := func(req *http.Request, rid string) outageResult {
		r := outageResult{start: time.Now(), rid: rid}
		resp, err := client.Do(req)
		r.end = time.Now()
		if err != nil {
			r.answer = err.Error()
		} else {
			r.answer = fmt.Sprint(resp.StatusCode, " ", readAll(resp))
		}
		return r
	}
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
				req, _ := http.NewRequest(http.MethodPost, d.baseURL+closePath, strings.NewReader(closeBody(d.rids[i], d.tokens[i])))
				req.Header.Set("X-User-Id", d.agent.ID)
				req.Header.Set("X-Auth-Token", d.agent.Token)
				req.Header.Set("Content-Type", "application/json")
				r := send(req, d.rids[i])
				mu.Lock()
				d.closes = append(d.closes, r)
				mu.Unlock()
				if strings.HasPrefix(r.answer, "503 ") {
					pending <- i
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodGet, d.baseURL+"/api/info", nil)
				r := send(req, "")
				mu.Lock()
				d.passes = append(d.passes, r)
				mu.Unlock()
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	// A short warm-up leaves most rooms open for the outage.
	time.Sleep(d.warmUp)
	d.takeDown()
	d.down = time.Now()
	time.Sleep(d.outage)
	d.back = time.Now()
	d.bringBack()
	d.up = time.Now()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	d.judge(t)
}

func (d *outageDrill) judge(t *testing.T) {
	t.Helper()
	success := func(rid string) string { return `200 {"rid":"` + rid + `","success":true}` }
	var during, unavailable int
	// Recovery is judged by the first close that started after the database
	// returned and succeeded, not by how much traffic followed: on a fast
	// machine the remaining rooms can all be closed within a second.
	var firstSuccessAfterUp time.Time
	for _, r := range d.closes {
		took := r.end.Sub(r.start)
		switch {
		case r.answer == success(r.rid):
			if r.start.After(d.down.Add(100*time.Millisecond)) && r.end.Before(d.back) {
				t.Errorf("a close succeeded while the database was unreachable: %+v", r)
			}
			if r.start.After(d.up) && (firstSuccessAfterUp.IsZero() || r.start.Before(firstSuccessAfterUp)) {
				firstSuccessAfterUp = r.start
			}
		case r.answer == `400 {"success":false,"error":"room-closed"}`:
			// a retry of a close whose commit landed although its answer was 503
		case r.answer == "503 "+body503:
			unavailable++
			if took > 2500*time.Millisecond {
				t.Errorf("503 after %v, want within db_timeout (1s)", took)
			}
			if r.start.After(d.up.Add(time.Second)) {
				t.Errorf("a close that started %v after the database returned failed", r.start.Sub(d.up))
			}
		default:
			t.Errorf("unexpected answer %q", r.answer)
		}
		if r.start.After(d.down) && r.end.Before(d.back) {
			during++
		}
	}
	passFailures := 0
	for _, r := range d.passes {
		if !strings.HasPrefix(r.answer, "200 upstream GET /api/info") {
			passFailures++
			if passFailures <= 5 {
				t.Errorf("pass-through failed: %+v", r)
			}
		}
	}
	if during < 10 || unavailable == 0 {
		t.Fatalf("too little traffic to judge: %d closes during the outage, %d answered 503", during, unavailable)
	}
	switch {
	case firstSuccessAfterUp.IsZero():
		t.Errorf("no close succeeded after the database returned")
	case firstSuccessAfterUp.Sub(d.up) > time.Second:
		t.Errorf("the first close to succeed after the database returned started %v after it, want within 1s", firstSuccessAfterUp.Sub(d.up))
	}
	// Nothing half-written: a room is closed with exactly one message and one
	// outbox row, or open with none.
	if n := d.db.Count(t, `rooms r WHERE r.id LIKE 'BULK%' AND NOT (
	  (r.open = FALSE AND r.msgs = 1 AND (SELECT COUNT(*) FROM messages m WHERE m.rid = r.id) = 1 AND (SELECT COUNT(*) FROM room_events v WHERE v.rid = r.id) = 1)
	  OR (r.open = TRUE AND r.msgs = 0 AND (SELECT COUNT(*) FROM messages m WHERE m.rid = r.id) = 0 AND (SELECT COUNT(*) FROM room_events v WHERE v.rid = r.id) = 0))`); n != 0 {
		t.Fatalf("%d rooms half-written", n)
	}
	t.Logf("%d closes (%d during the outage, %d answered 503; first success %v after the database returned), %d pass-through requests, %d failed",
		len(d.closes), during, unavailable, firstSuccessAfterUp.Sub(d.up).Round(time.Millisecond), len(d.passes), passFailures)
}

// MySQL unreachable for 5 s under load (every connection cut, new ones
// refused, through a TCP proxy): the promises of outageDrill hold.
func TestDatabaseOutageUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	e, proxy := newProxiedEnv(t, "db_timeout 1s", "rate_limit off")
	rids, tokens := seedRooms(t, e.db, 2000)
	d := &outageDrill{
		baseURL: e.caddy.BaseURL, agent: e.agent, db: e.db, rids: rids, tokens: tokens,
		takeDown: proxy.Down, bringBack: proxy.Up, outage: 5 * time.Second, warmUp: 500 * time.Millisecond,
	}
	d.run(t)
}
