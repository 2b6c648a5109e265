package systemtest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// addEventsInRooms writes n outbox rows, each in a room of its own.
func addEventsInRooms(t *testing.T, db *testdb.DB, n int) {
	t.Helper()
	for i := range n {
		db.Exec(t, "INSERT INTO room_events (rid, type, payload, created_at) VALUES (?, 'room.closed', '{}', ?)", fmt.Sprintf("S%d", i), time.Now().UTC())
	}
}

// waitSettled waits until no outbox row is pending (each is delivered or
// parked).
func waitSettled(t *testing.T, db *testdb.DB, within time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(within); db.Count(t, "room_events WHERE delivery_state = 'pending'") > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d events still pending after %v", db.Count(t, "room_events WHERE delivery_state = 'pending'"), within)
		}
	}
}

// lastErrors lists room_events.last_error in id order.
func lastErrors(t *testing.T, db *testdb.DB) []string {
	t.Helper()
	rows, err := db.Query("SELECT COALESCE(last_error, '') FROM room_events ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// TestOutboxDoesNotFollowRedirects (red team F1): a receiver that answers
// 307 to an internal URL (a listener standing in for Caddy's admin /stop)
// does not get the signed POST sent there. Each 307 is a failed attempt,
// logged and stored with the status and the Location without its query,
// and the event is parked after max_attempts, never delivered.
func TestOutboxDoesNotFollowRedirects(t *testing.T) {
	var internalHits atomic.Int64
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalHits.Add(1) // what Caddy's admin API would have done: stop
	}))
	defer internal.Close()
	var redirects atomic.Int64
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirects.Add(1)
		w.Header().Set("Location", internal.URL+"/stop?from=webhook-redirect&token=LOCATION-SECRET")
		w.WriteHeader(http.StatusTemporaryRedirect)
	}))
	defer recv.Close()
	db := testdb.New(t)
	addEventsInRooms(t, db, 2)
	p := testcaddy.StartProcess(t, outboxGlobals(db.DSN, recv.URL+"/hook", "backoff 10ms 20ms\n\t\tmax_attempts 3"), "\trespond ok")
	waitSettled(t, db, 20*time.Second)
	if n := internalHits.Load(); n != 0 {
		t.Fatalf("the redirect's target was hit %d times", n)
	}
	if n := redirects.Load(); n != 6 {
		t.Errorf("the receiver was asked %d times, want 6 (3 attempts of 2 events)", n)
	}
	if n := db.Count(t, "room_events WHERE delivery_state = 'parked' AND attempts = 3 AND delivered_at IS NULL"); n != 2 {
		t.Fatalf("%d events parked after 3 attempts and not delivered, want 2", n)
	}
	want := fmt.Sprintf("the receiver answered 307 (Location %s/stop); redirects are not followed", internal.URL)
	for i, e := range lastErrors(t, db) {
		if e != want {
			t.Errorf("event %d: last_error %q, want %q", i, e, want)
		}
	}
	log := waitLog(t, p, `"msg":"outbox: delivery failed"`, 6)
	if strings.Contains(log, "LOCATION-SECRET") {
		t.Error("the Location's query string is in the log")
	}
	if !strings.Contains(log, want) {
		t.Errorf("no warn line names the status and the Location:\n%s", log)
	}
}

// waitLog waits until the process has logged a line containing marker n
// times, and returns the log.
func waitLog(t *testing.T, p *testcaddy.Process, marker string, n int) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		log := p.Log()
		if strings.Count(log, marker) >= n {
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lines with %s logged, want %d:\n%s", strings.Count(log, marker), marker, n, log)
		}
	}
}

// TestOutboxRedactsTheWebhookQuery (red team F5): a secret in the webhook
// URL's query string appears neither in the warn log nor in
// room_events.last_error nor in 'outbox status', though each failed attempt
// names the URL.
func TestOutboxRedactsTheWebhookQuery(t *testing.T) {
	rc := startReceiver(t)
	rc.down.Store(true) // hangs up: a transport error, which names the URL
	db := testdb.New(t)
	addEventsInRooms(t, db, 2)
	p := testcaddy.StartProcess(t, outboxGlobals(db.DSN, rc.URL+"/hook?apikey=QUERY-SECRET-KKKK", "backoff 10ms 20ms\n\t\tmax_attempts 2"), "\trespond ok")
	waitSettled(t, db, 20*time.Second)
	for i, e := range lastErrors(t, db) {
		if strings.Contains(e, "QUERY-SECRET") || !strings.Contains(e, `"`+rc.URL+`/hook"`) {
			t.Errorf("event %d: last_error %q, want the URL without its query", i, e)
		}
	}
	log := waitLog(t, p, `"msg":"outbox: delivery failed"`, 4)
	if strings.Contains(log, "QUERY-SECRET") {
		t.Errorf("the webhook URL's query is in the log:\n%s", log)
	}
	if !strings.Contains(log, rc.URL+`/hook\"`) {
		t.Errorf("no warn line names the URL:\n%s", log)
	}
	out, err := exec.Command(testcaddy.Binary(t), "rocketchat-voip", "outbox", "status", "--dsn", db.DSN).CombinedOutput()
	if err != nil || strings.Contains(string(out), "QUERY-SECRET") || !strings.Contains(string(out), "parked 2") {
		t.Fatalf("status: %v\n%s", err, out)
	}
}

// TestOutboxRefusesAnEmptySecret (red team F6): a webhook secret or URL
// whose placeholder expands to nothing fails the load, naming the
// placeholder; nothing is delivered unsigned. Deliberately unsigned
// webhooks say so ('unsigned') and go out without a signature header.
func TestOutboxRefusesAnEmptySecret(t *testing.T) {
	rc := startReceiver(t)
	db := testdb.New(t)
	addEventsInRooms(t, db, 1)
	t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck
	for _, c := range []struct{ webhook, want string }{
		{fmt.Sprintf("webhook %s {\n\t\t\tsecret {env.ROCKETCHAT_VOIP_TEST_UNSET_SECRET}\n\t\t}", rc.URL),
			"webhook: the secret {env.ROCKETCHAT_VOIP_TEST_UNSET_SECRET} is empty once expanded"},
		{"webhook {env.ROCKETCHAT_VOIP_TEST_UNSET_URL} {\n\t\t\tsecret s\n\t\t}",
			"webhook: the URL {env.ROCKETCHAT_VOIP_TEST_UNSET_URL} is empty once expanded"},
	} {
		cf := fmt.Sprintf("{\n\tadmin off\n\tlog {\n\t\toutput discard\n\t}\n\trocketchat_voip_outbox {\n\t\tdsn %q\n\t\t%s\n\t\tpoll_interval 20ms\n\t}\n}\n", db.DSN, c.webhook)
		if err := testcaddy.Load(cf); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want an error containing %q", err, c.want)
		}
	}
	if n := len(rc.counts()); n != 0 {
		t.Fatalf("%d events delivered by a config that should not have loaded", n)
	}
	cf := fmt.Sprintf("{\n\tadmin off\n\tlog {\n\t\toutput discard\n\t}\n\trocketchat_voip_outbox {\n\t\tdsn %q\n\t\twebhook %s {\n\t\t\tunsigned\n\t\t}\n\t\tpoll_interval 20ms\n\t}\n}\n", db.DSN, rc.URL)
	if err := testcaddy.Load(cf); err != nil {
		t.Fatal(err)
	}
	rc.waitFor(t, eventIDs(t, db), 10*time.Second)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if sig := rc.accepted[0].signature; sig != "" {
		t.Fatalf("an unsigned webhook carried %s: %q", outbox.HeaderSignature, sig)
	}
}
