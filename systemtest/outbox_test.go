package systemtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

const webhookSecret = "test-webhook-secret"

// receiver is a webhook on loopback that records what it accepts and can
// fail at random, answer 500 always, hang up on every request, or be slow.
type receiver struct {
	*httptest.Server
	failRate  atomic.Uint64 // percent of requests answered 500
	always500 atomic.Bool
	down      atomic.Bool
	delay     atomic.Int64 // nanoseconds before answering
	failFirst atomic.Bool  // answer 500 to each event's first attempt

	mu       sync.Mutex
	accepted []delivery // in the order of their 2xx
	tried    []delivery // every attempt that reached it, in order of arrival
	seen     map[int64]bool
	badSig   int
}

type delivery struct {
	id        int64
	rid       string
	body      outbox.Body
	raw       string // the body's bytes
	signature string // the signature header
	ok        bool   // answered 2xx (in tried)
}

func startReceiver(t *testing.T) *receiver {
	rc := &receiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	if rc.down.Load() {
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close() // as good as a receiver that is not there
				return
			}
		}
	}
	if d := rc.delay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	body, _ := io.ReadAll(r.Body)
	var b outbox.Body
	if err := json.Unmarshal(body, &b); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.seen == nil {
		rc.seen = map[int64]bool{}
	}
	first := !rc.seen[b.ID]
	rc.seen[b.ID] = true
	fail := rc.always500.Load() || rand.N(uint64(100)) < rc.failRate.Load() || (first && rc.failFirst.Load())
	rc.tried = append(rc.tried, delivery{id: b.ID, rid: b.Rid, ok: !fail})
	if fail {
		http.Error(w, "try later", http.StatusInternalServerError)
		return
	}
	if !signedAsDocumented(webhookSecret, r.Header.Get(outbox.HeaderSignature), r.Header.Get(outbox.HeaderDelivery), body, time.Now()) ||
		r.Header.Get(outbox.HeaderDelivery) != strconv.FormatInt(b.ID, 10) ||
		r.Header.Get(outbox.HeaderEvent) != b.Type || r.Header.Get("Content-Type") != "application/json" {
		rc.badSig++
	}
	rc.accepted = append(rc.accepted, delivery{id: b.ID, rid: b.Rid, body: b, raw: string(body), signature: r.Header.Get(outbox.HeaderSignature)})
	w.WriteHeader(http.StatusNoContent)
}

// signedAsDocumented checks a signature header as docs/outbox.md tells a
// receiver to, written here rather than taken from the code under test:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<delivery id>.<body>'>",
// t at most 5 minutes from now.
func signedAsDocumented(secret, header, deliveryID string, body []byte, now time.Time) bool {
	var ts int64
	var v1 string
	if n, err := fmt.Sscanf(header, "t=%d,v1=%s", &ts, &v1); n != 2 || err != nil || len(v1) != 64 {
		return false
	}
	if age := now.Sub(time.Unix(ts, 0)); age > 5*time.Minute || age < -5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(mac, "%d.%s.%s", ts, deliveryID, body)
	return hmac.Equal([]byte(v1), []byte(hex.EncodeToString(mac.Sum(nil))))
}

// counts returns how often each event id was accepted.
func (rc *receiver) counts() map[int64]int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := map[int64]int{}
	for _, d := range rc.accepted {
		n[d.id]++
	}
	return n
}

// waitFor waits until the receiver has accepted every one of ids.
func (rc *receiver) waitFor(t *testing.T, ids []int64, within time.Duration) map[int64]int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := rc.counts()
		missing := 0
		for _, id := range ids {
			if got[id] == 0 {
				missing++
			}
		}
		if missing == 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events not delivered within %v", missing, len(ids), within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkOrderAndSignatures: every accepted body is signed, and the events of
// one room arrived in id order.
func (rc *receiver) checkOrderAndSignatures(t *testing.T) {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.badSig > 0 {
		t.Errorf("%d deliveries with a wrong signature or headers", rc.badSig)
	}
	last := map[string]int64{}
	for _, d := range rc.accepted {
		if d.id < last[d.rid] {
			t.Errorf("room %s: event %d arrived after %d", d.rid, d.id, last[d.rid])
		}
		last[d.rid] = max(last[d.rid], d.id)
	}
}

// checkNoAttemptOvertakes: no attempt of an event reached the receiver
// before every earlier event of its room had been accepted (rooms: each
// room's event ids in id order, from the database).
func (rc *receiver) checkNoAttemptOvertakes(t *testing.T, rooms map[string][]int64) {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	pos := map[int64]int{} // event -> its place in its room
	for _, ids := range rooms {
		for i, id := range ids {
			pos[id] = i
		}
	}
	accepted := map[int64]bool{}
	for _, d := range rc.tried {
		for _, earlier := range rooms[d.rid][:pos[d.id]] {
			if !accepted[earlier] {
				t.Errorf("room %s: event %d was tried before %d was delivered", d.rid, d.id, earlier)
				return
			}
		}
		if d.ok {
			accepted[d.id] = true
		}
	}
}

func outboxGlobals(dsn, url, extra string) string {
	return fmt.Sprintf("\trocketchat_voip_outbox {\n\t\tdsn %q\n\t\twebhook %s {\n\t\t\tsecret %s\n\t\t\ttimeout 2s\n\t\t}\n\t\tpoll_interval 20ms\n\t\t%s\n\t}\n", dsn, url, webhookSecret, extra)
}

// eventIDs lists the ids of the outbox rows.
func eventIDs(t *testing.T, db *testdb.DB) []int64 {
	t.Helper()
	rows, err := db.Query("SELECT id FROM room_events ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids = append(ids, id)
	}
	return ids
}

// addEvents writes n outbox rows directly, spread over rooms so that some
// rooms have several events (whose order must hold).
func addEvents(t *testing.T, db *testdb.DB, n int) {
	t.Helper()
	now := time.Now().UTC()
	for i := range n {
		db.Exec(t, "INSERT INTO room_events (rid, type, payload, created_at) VALUES (?, 'room.closed', ?, ?)",
			fmt.Sprintf("R%d", i%(n/3+1)), fmt.Sprintf(`{"n":%d}`, i), now)
	}
}

// closeRooms closes the seeded rooms through the gateway, 16 at a time.
func closeRooms(t *testing.T, baseURL string, agent testdb.Agent, rids, tokens []string) {
	t.Helper()
	var wg sync.WaitGroup
	next := make(chan int, len(rids))
	for i := range rids {
		next <- i
	}
	close(next)
	var failed atomic.Int64
	for range 16 {
		wg.Go(func() {
			for i := range next {
				req, _ := http.NewRequest(http.MethodPost, baseURL+closePath, strings.NewReader(closeBody(rids[i], tokens[i])))
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
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d closes failed", n)
	}
}

// TestOutboxDeliversEveryClose: 1,000 closes through the gateway reach the
// receiver once each, signed, each room's events in order (with extra
// events written for some rooms), and the rows say delivered.
func TestOutboxDeliversEveryClose(t *testing.T) {
	rc := startReceiver(t)
	db := testdb.New(t)
	agent := db.AddUser(t, "agent1", "livechat-agent")
	rids, tokens := seedRooms(t, db, 1000)
	for i := range 20 { // more events for some rooms, before their close
		db.Exec(t, "INSERT INTO room_events (rid, type, payload, created_at) VALUES (?, 'room.note', '{}', ?)", rids[i], time.Now().UTC())
	}
	up := testcaddy.StartUpstream(t)
	c := testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, ""), fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\trate_limit off\n\t}\n\treverse_proxy %s", db.DSN, up.Addr))
	closeRooms(t, c.BaseURL, agent, rids, tokens)
	ids := eventIDs(t, db)
	if len(ids) != 1020 {
		t.Fatalf("%d outbox rows, want 1020", len(ids))
	}
	got := rc.waitFor(t, ids, 30*time.Second)
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %d delivered %d times", id, n)
		}
	}
	rc.checkOrderAndSignatures(t)
	// A batch is recorded as delivered after its last 2xx.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n := db.Count(t, "room_events WHERE delivery_state = 'delivered' AND delivered_at IS NOT NULL")
		if n == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows marked delivered, want %d", n, len(ids))
		}
	}
	// The body is what the README promises.
	rc.mu.Lock()
	d := rc.accepted[len(rc.accepted)-1]
	rc.mu.Unlock()
	if d.body.Type == "" || d.body.Rid == "" || !strings.HasSuffix(d.body.CreatedAt, "Z") || len(d.body.CreatedAt) != len("2006-01-02T15:04:05.000Z") || len(d.body.Payload) == 0 {
		t.Errorf("body %+v", d.body)
	}
}

// TestOutboxSignsTheDocumentedBody: one event of fixed content reaches the
// receiver as exactly the documented body, signed at the time of the
// attempt over that time, the delivery id and the body (checked by
// signedAsDocumented; internal/outbox's tests hold golden values from
// openssl for fixed times).
func TestOutboxSignsTheDocumentedBody(t *testing.T) {
	const wantBody = `{"id":42,"type":"room.closed","rid":"GOLDEN","created_at":"2026-12-01T09:00:00.120Z","payload":{"n":1}}`
	rc := startReceiver(t)
	db := testdb.New(t)
	db.Exec(t, `INSERT INTO room_events (id, rid, type, payload, created_at) VALUES (42, 'GOLDEN', 'room.closed', '{"n": 1}', '2026-12-01 09:00:00.120')`)
	testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, ""), "\trespond ok")
	rc.waitFor(t, []int64{42}, 10*time.Second)
	rc.mu.Lock()
	d := rc.accepted[0]
	rc.mu.Unlock()
	if d.raw != wantBody {
		t.Errorf("body\n%s\nwant\n%s", d.raw, wantBody)
	}
	if !signedAsDocumented(webhookSecret, d.signature, "42", []byte(d.raw), time.Now()) {
		t.Errorf("signature %q does not verify as documented", d.signature)
	}
	// Replayed under another delivery id, the same signature fails.
	if signedAsDocumented(webhookSecret, d.signature, "43", []byte(d.raw), time.Now()) {
		t.Errorf("signature %q verifies for another delivery id", d.signature)
	}
	// A copy kept past the documented window is refused.
	if signedAsDocumented(webhookSecret, d.signature, "42", []byte(d.raw), time.Now().Add(6*time.Minute)) {
		t.Errorf("signature %q verifies 6 minutes later", d.signature)
	}
}

// TestOutboxRidesOutAFlakyReceiver: 30% of requests fail and the receiver
// is gone for 5 s in the middle; every event is delivered, none parked,
// none twice (the receiver never loses a 2xx here).
func TestOutboxRidesOutAFlakyReceiver(t *testing.T) {
	rc := startReceiver(t)
	rc.failRate.Store(30)
	db := testdb.New(t)
	addEvents(t, db, 600)
	testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, "backoff 20ms 400ms\n\t\tmax_attempts 1000\n\t\tbatch 16"), "\trespond ok")
	time.Sleep(300 * time.Millisecond)
	rc.down.Store(true)
	time.Sleep(5 * time.Second)
	rc.down.Store(false)
	ids := eventIDs(t, db)
	got := rc.waitFor(t, ids, 60*time.Second)
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %d delivered %d times", id, n)
		}
	}
	rc.checkOrderAndSignatures(t)
	if n := db.Count(t, "room_events WHERE delivery_state = 'parked'"); n != 0 {
		t.Errorf("%d events parked", n)
	}
	if n := db.Count(t, "room_events WHERE attempts > 0"); n == 0 {
		t.Error("no attempt failed: the test did not test retries")
	}
}

// TestOutboxSharedByTwoProcesses: two Caddy processes deliver one outbox,
// each event once.
func TestOutboxSharedByTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	rc := startReceiver(t)
	rc.delay.Store(int64(2 * time.Millisecond))
	db := testdb.New(t)
	addEvents(t, db, 1500)
	globals := outboxGlobals(db.DSN, rc.URL, "batch 16")
	testcaddy.StartProcess(t, globals, "\trespond ok")
	testcaddy.StartProcess(t, globals, "\trespond ok")
	got := rc.waitFor(t, eventIDs(t, db), 60*time.Second)
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %d delivered %d times", id, n)
		}
	}
	rc.checkOrderAndSignatures(t)
}

// TestOutboxLeaseOutlivesACrash: a gateway SIGKILLed while it holds a
// claimed batch; the other delivers those events once the lease ends. Only
// events the dead gateway had delivered but not yet recorded may arrive
// twice.
func TestOutboxLeaseOutlivesACrash(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	rc := startReceiver(t)
	rc.delay.Store(int64(300 * time.Millisecond))
	db := testdb.New(t)
	addEvents(t, db, 200)
	ids := eventIDs(t, db)
	victim := testcaddy.StartProcess(t, outboxGlobals(db.DSN, rc.URL, "batch 32\n\t\tlease 3s"), "\trespond ok")
	// Wait until it holds a claim, then kill it mid-batch.
	for deadline := time.Now().Add(10 * time.Second); db.Count(t, "room_events WHERE claimed_by IS NOT NULL") == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first gateway never claimed a batch")
		}
	}
	victim.Kill()
	claimed := db.Count(t, "room_events WHERE claimed_by IS NOT NULL AND delivery_state = 'pending'")
	killed := time.Now()
	rc.delay.Store(0)
	testcaddy.StartProcess(t, outboxGlobals(db.DSN, rc.URL, "batch 32\n\t\tlease 3s"), "\trespond ok")
	got := rc.waitFor(t, ids, 60*time.Second)
	twice := 0
	for _, n := range got {
		if n > 1 {
			twice++
		}
	}
	t.Logf("%d events claimed by the killed gateway; all %d delivered %v after the kill; %d twice", claimed, len(ids), time.Since(killed).Round(100*time.Millisecond), twice)
	if claimed == 0 {
		t.Fatal("the killed gateway held no claim: the test did not test the lease")
	}
	if twice > 32 {
		t.Errorf("%d events delivered twice, more than the dead gateway's batch", twice)
	}
	rc.checkOrderAndSignatures(t)
}

// TestOutboxParksAndReplays: a receiver that always fails gets each event
// max_attempts times; then the event is parked (not dropped), and the later
// events of its room wait behind it, so that the room's order holds.
// 'outbox replay --parked' delivers them all once the receiver is back.
func TestOutboxParksAndReplays(t *testing.T) {
	rc := startReceiver(t)
	rc.always500.Store(true)
	db := testdb.New(t)
	addEvents(t, db, 30) // 11 rooms, 2 or 3 events each
	testcaddy.Start(t, outboxGlobals(db.DSN, rc.URL, "backoff 10ms 40ms\n\t\tmax_attempts 3"), "\trespond ok")
	for deadline := time.Now().Add(20 * time.Second); db.Count(t, "room_events WHERE delivery_state = 'parked'") < 11; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 11 first events parked", db.Count(t, "room_events WHERE delivery_state = 'parked'"))
		}
	}
	time.Sleep(200 * time.Millisecond) // time enough to (wrongly) try the events behind them
	if n := db.Count(t, "room_events WHERE delivery_state = 'parked' AND attempts = 3"); n != 11 {
		t.Fatalf("%d events parked after exactly 3 attempts, want 11 (the first of each room)", n)
	}
	if n := db.Count(t, "room_events WHERE delivery_state = 'pending' AND attempts = 0"); n != 19 {
		t.Fatalf("%d events waiting untried behind a parked one, want 19", n)
	}
	if len(rc.counts()) != 0 {
		t.Fatal("a failing receiver accepted events")
	}
	rc.always500.Store(false)
	out, err := exec.Command(testcaddy.Binary(t), "rocketchat-voip", "outbox", "replay", "--parked", "--dsn", db.DSN).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "11 event(s) will be delivered again") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	got := rc.waitFor(t, eventIDs(t, db), 20*time.Second)
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %d delivered %d times after the replay", id, n)
		}
	}
	rc.checkOrderAndSignatures(t)
	out, err = exec.Command(testcaddy.Binary(t), "rocketchat-voip", "outbox", "status", "--dsn", db.DSN).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "pending 0, parked 0, oldest pending none") ||
		!strings.Contains(string(out), "delivery lag (close to delivery) of the last 30 delivered, ") {
		t.Fatalf("status: %v\n%s", err, out)
	}
}

// TestOutboxThroughReloads: admin-API reloads while rooms are closed
// neither stop delivery nor deliver an event twice.
func TestOutboxThroughReloads(t *testing.T) {
	rc := startReceiver(t)
	db := testdb.New(t)
	agent := db.AddUser(t, "agent1", "livechat-agent")
	rids, tokens := seedRooms(t, db, 600)
	admin := fmt.Sprintf("127.0.0.1:%d", testcaddy.FreePort(t))
	up := testcaddy.StartUpstream(t)
	c := testcaddy.Start(t, "\tadmin "+admin+"\n"+outboxGlobals(db.DSN, rc.URL, ""), fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\trate_limit off\n\t}\n\treverse_proxy %s", db.DSN, up.Addr))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	reloads := 0
	var reloadErr error
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if reloadErr = tryAdminLoad(admin, c.Caddyfile); reloadErr != nil {
				return
			}
			reloads++
		}
	})
	for i := 0; i < len(rids); i += 100 {
		closeRooms(t, c.BaseURL, agent, rids[i:i+100], tokens[i:i+100])
	}
	got := rc.waitFor(t, eventIDs(t, db), 30*time.Second)
	close(stop)
	wg.Wait()
	if reloadErr != nil {
		t.Fatal(reloadErr)
	}
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %d delivered %d times", id, n)
		}
	}
	if reloads < 3 {
		t.Fatalf("only %d reloads happened", reloads)
	}
	t.Logf("%d events delivered across %d reloads", len(got), reloads)
}
