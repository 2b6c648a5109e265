package systemtest

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// With unknown_credentials upstream, credentials MySQL does not know go to
// Rocket.Chat (here the recording upstream) with their body as sent, so
// that a login newer than the sync's copy is not taken for a logout; a
// request without both headers is still answered 401 at the edge, and known
// credentials are still answered there.
func TestUnknownCredentialsGoUpstream(t *testing.T) {
	e, _ := startEnv(t, envOptions{extra: []string{"unknown_credentials upstream"}, site: withMetricsRoute})
	before := scrape(t, e)
	passed := func(body string, hdr map[string]string) {
		t.Helper()
		n := len(e.up.Requests())
		got := e.do(t, http.MethodPost, closePath, hdr, body)
		want := "upstream POST " + closePath + " body=" + body
		if got.status != 200 || got.body != want {
			t.Fatalf("got %d %q, want %q from the upstream", got.status, got.body, want)
		}
		reqs := e.up.Requests()
		if len(reqs) != n+1 {
			t.Fatalf("the upstream saw %d more requests, want 1", len(reqs)-n)
		}
		r := reqs[n]
		if r.Body != body || r.Header.Get("X-Auth-Token") != hdr["X-Auth-Token"] || r.Header.Get("X-User-Id") != hdr["X-User-Id"] {
			t.Fatalf("what reached the upstream: %+v", r)
		}
	}

	// A login the gateway's copy does not have yet: answered by Rocket.Chat.
	fresh := map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": "a-login-newer-than-the-sync", "Content-Type": "application/json"}
	passed(closeBody(e.roomID, e.visitor.Token), fresh)
	if !e.room(t, e.roomID).open {
		t.Fatal("a request passed upstream closed the room at the edge")
	}
	// Without both headers no login can be meant: 401 at the edge.
	expect(t, e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": e.agent.ID, "Content-Type": "application/json"}, closeBody(e.roomID, e.visitor.Token)), 401, body401)

	// Known credentials are answered at the edge; once revoked in MySQL, the
	// recent closer's next close (its body read first) goes upstream whole.
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	e.db.AddRoom(t, "ROOM2", e.visitor, time.Now().UTC(), nil)
	e.db.Exec(t, "DELETE FROM user_login_tokens WHERE user_id = ?", e.agent.ID)
	passed(closeBody("ROOM2", e.visitor.Token), map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token, "Content-Type": "application/json"})
	if !e.room(t, "ROOM2").open {
		t.Fatal("a revoked token closed ROOM2")
	}

	after := scrape(t, e)
	key := func(o string) string { return fmt.Sprintf(`caddy_rocketchat_voip_requests_total{outcome="%s"}`, o) }
	for outcome, n := range map[string]float64{"unknown_upstream": 2, "unauthorized": 1, "closed": 1} {
		if got := after[key(outcome)] - before[key(outcome)]; got != n {
			t.Errorf("%s grew by %v, want %v", outcome, got, n)
		}
	}
}
