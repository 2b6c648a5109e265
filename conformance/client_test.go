package conformance_test

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

type clientCall struct {
	Name      string         `json:"name"`
	UserID    string         `json:"userId"`
	AuthToken string         `json:"authToken"`
	Params    map[string]any `json:"params"`
}

type clientResult struct {
	Name   string          `json:"name"`
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result"`
	Status int             `json:"status"`
	Body   string          `json:"body"`
	Error  string          `json:"error"`
}

func node(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("node", append([]string{"--experimental-detect-module"}, args...)...)
	cmd.Dir = oracleDir
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("node %v: %v\n%s", args[0], err, stderr)
	}
	return string(out)
}

// TestRocketChatRESTClient drives the module with @rocket.chat/api-client:
// the request it builds is handled (not forwarded) and closes the room, and
// its error path surfaces our 400/401/403 bodies as it would Rocket.Chat's.
func TestRocketChatRESTClient(t *testing.T) {
	requireOracle(t)
	g := startGateway(t, "")
	// A login token whose hash Rocket.Chat's own algorithm computed (in Node),
	// stored without going through our HashLoginToken.
	const rcToken = "rc-login-token-Zq1"
	rcHash := strings.TrimSpace(node(t, "client.mjs", "hash", rcToken))
	if rcHash != store.HashLoginToken(rcToken) {
		t.Fatalf("Rocket.Chat's hash %s differs from ours %s", rcHash, store.HashLoginToken(rcToken))
	}
	g.db.Exec(t, "INSERT INTO user_login_tokens (user_id, hashed_token, type, created_at) VALUES (?, ?, 'resume', ?)", g.agent.ID, rcHash, time.Now().UTC())
	viewer := g.db.AddUser(t, "viewer", "user")
	g.db.Exec(t, "INSERT INTO livechat_visitors (id, token, username) VALUES ('vis1', 'visitor-token', 'guest-1')")
	now := time.Now().UTC().Add(-time.Minute)
	g.db.Exec(t, "INSERT INTO rooms (id, t, open, ts, visitor_id, visitor_token, updated_at) VALUES ('ROOM1', 'v', TRUE, ?, 'vis1', 'visitor-token', ?)", now, now)

	calls := []clientCall{
		{"unauthorized", g.agent.ID, "wrong", map[string]any{"rid": "ROOM1", "token": "visitor-token"}},
		{"invalid-params", g.agent.ID, rcToken, map[string]any{"rid": "ROOM1"}},
		{"forbidden", viewer.ID, viewer.Token, map[string]any{"rid": "ROOM1", "token": "visitor-token"}},
		{"invalid-token", g.agent.ID, rcToken, map[string]any{"rid": "ROOM1", "token": "nobody"}},
		{"closed", g.agent.ID, rcToken, map[string]any{"rid": "ROOM1", "token": "visitor-token", "options": map[string]any{"comment": "bye", "tags": []string{"t1"}}}},
		{"room-closed", g.agent.ID, rcToken, map[string]any{"rid": "ROOM1", "token": "visitor-token"}},
	}
	input, _ := json.Marshal(map[string]any{"baseUrl": g.caddy.BaseURL, "calls": calls})
	results := map[string]clientResult{}
	for _, line := range strings.Split(strings.TrimSpace(node(t, "client.mjs", string(input))), "\n") {
		var r clientResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		results[r.Name] = r
	}
	want := map[string]struct {
		status int
		body   string
	}{
		"unauthorized":   {401, `{"status":"error","message":"You must be logged in to do this."}`},
		"invalid-params": {400, `{"success":false,"error":"must have required property 'token' [invalid-params]","errorType":"invalid-params"}`},
		"forbidden":      {403, `{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}`},
		"invalid-token":  {400, `{"success":false,"error":"invalid-token"}`},
		"room-closed":    {400, `{"success":false,"error":"room-closed"}`},
	}
	for name, w := range want {
		r := results[name]
		if r.OK || r.Status != w.status || r.Body != w.body {
			t.Errorf("%s: the client surfaced %+v, want a rejected Response %d %s", name, r, w.status, w.body)
		}
	}
	if r := results["closed"]; !r.OK || string(r.Result) != `{"rid":"ROOM1","success":true}` {
		t.Fatalf("closed: %+v", r)
	}
	var open bool
	var msg string
	if err := g.db.QueryRow("SELECT r.open, m.msg FROM rooms r JOIN messages m ON m.id = r.last_message_id WHERE r.id = 'ROOM1'").Scan(&open, &msg); err != nil || open || msg != "bye" {
		t.Fatalf("room after the client closed it: open=%v msg=%q err=%v", open, msg, err)
	}
	for _, r := range g.up.Requests() {
		if r.Method == http.MethodPost && strings.HasPrefix(r.RequestURI, "/api/v1/voip/room.close") {
			t.Fatalf("the client's room.close reached the upstream: %+v", r)
		}
	}
}
