// Package conformance_test proves the module answers as Rocket.Chat does,
// with Rocket.Chat's published code as the oracle: its request validator
// (@rocket.chat/rest-typings) and its REST client (@rocket.chat/api-client).
// testdata/rocketchat/setup.sh installs them; scripts/test.sh runs it.
package conformance_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/corpus"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

const oracleDir = "testdata/rocketchat"

// requireOracle fails (under CI or scripts/test.sh) or skips when Node or
// the installed oracle packages are missing.
func requireOracle(t *testing.T) {
	t.Helper()
	msg := ""
	if _, err := exec.LookPath("node"); err != nil {
		msg = "node is not on PATH"
	} else if _, err := os.Stat(filepath.Join(oracleDir, "node_modules", ".oracle-stamp")); err != nil {
		msg = "the oracle is not installed: run bash conformance/testdata/rocketchat/setup.sh"
	}
	if msg == "" {
		return
	}
	if testdb.Required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// verdict is the oracle's answer for one body.
type verdict struct {
	Name            string   `json:"name"`
	Valid           bool     `json:"valid"`
	Message         string   `json:"message"`
	Rid             string   `json:"rid"`
	Token           string   `json:"token"`
	RidWellFormed   bool     `json:"ridWellFormed"`
	TokenWellFormed bool     `json:"tokenWellFormed"`
	Comment         *string  `json:"comment"`
	Tags            []string `json:"tags"`
	SuccessBody     string   `json:"successBody"`
}

// runOracle feeds the cases to Rocket.Chat's validator.
func runOracle(t *testing.T, cases []corpus.Case) map[string]verdict {
	t.Helper()
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, c := range cases {
		enc.Encode(map[string]string{"name": c.Name, "contentType": c.ContentType, "bodyBase64": base64.StdEncoding.EncodeToString(c.Body)})
	}
	cmd := exec.Command("node", "--experimental-detect-module", "validate.mjs")
	cmd.Dir = oracleDir
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("oracle: %v\n%s", err, stderr.String())
	}
	verdicts := map[string]verdict{}
	for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		var v verdict
		if err := json.Unmarshal(line, &v); err != nil {
			t.Fatalf("oracle output %q: %v", line, err)
		}
		verdicts[v.Name] = v
	}
	if len(verdicts) != len(cases) {
		t.Fatalf("oracle answered %d of %d cases", len(verdicts), len(cases))
	}
	return verdicts
}

// gateway is Caddy with the module on a fresh database, with an agent
// allowed to close rooms and no rate limit.
type gateway struct {
	db    *testdb.DB
	caddy *testcaddy.Caddy
	up    *testcaddy.Upstream
	agent testdb.Agent
}

func startGateway(t *testing.T, extra string) *gateway {
	t.Helper()
	g := &gateway{db: testdb.New(t), up: testcaddy.StartUpstream(t)}
	g.agent = g.db.AddUser(t, "agent1", "livechat-agent")
	g.caddy = testcaddy.Start(t, "", fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\t%s\n\t}\n\treverse_proxy %s", g.db.DSN, extra, g.up.Addr))
	return g
}

func (g *gateway) send(t *testing.T, c corpus.Case) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, g.caddy.BaseURL+"/api/v1/voip/room.close", bytes.NewReader(c.Body))
	req.Header.Set("X-User-Id", g.agent.ID)
	req.Header.Set("X-Auth-Token", g.agent.Token)
	if c.ContentType != "" {
		req.Header.Set("Content-Type", c.ContentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// seed makes the visitor and open room that a valid body names, where
// MySQL can hold them, and says which error to expect otherwise.
func (g *gateway) seed(t *testing.T, v verdict) (wantBody string) {
	t.Helper()
	g.db.Exec(t, "DELETE FROM livechat_visitors WHERE token = ?", v.Token)
	g.db.Exec(t, "DELETE FROM rooms WHERE id = ?", v.Rid)
	if !v.TokenWellFormed || len([]rune(v.Token)) > 255 {
		return `{"success":false,"error":"invalid-token"}`
	}
	g.db.Exec(t, "INSERT INTO livechat_visitors (id, token, username) VALUES (?, ?, 'guest')", testdb.RandomID(), v.Token)
	if !v.RidWellFormed || v.Rid == "" || len([]rune(v.Rid)) > 64 {
		return `{"success":false,"error":"invalid-room"}`
	}
	now := time.Now().UTC()
	g.db.Exec(t, `INSERT INTO rooms (id, t, open, ts, visitor_token, tags, updated_at) VALUES (?, 'v', TRUE, ?, ?, '["seeded"]', ?)`, v.Rid, now, v.Token, now)
	return v.SuccessBody
}

// TestValidatorAgainstRocketChat sends every corpus body to Rocket.Chat's
// validator and to the module, and requires the same outcome: the same
// first error, or for a valid body the coerced rid echoed back (and the
// coerced comment and tags in the rows written).
func TestValidatorAgainstRocketChat(t *testing.T) {
	requireOracle(t)
	cases := corpus.Cases()
	if len(cases) < 200 {
		t.Fatalf("corpus has %d bodies, want at least 200", len(cases))
	}
	verdicts := runOracle(t, cases)
	g := startGateway(t, "rate_limit off")
	valid := 0
	for _, c := range cases {
		v := verdicts[c.Name]
		status, body := g.send(t, c)
		if !v.Valid {
			want := `{"success":false,"error":` + jsString(v.Message+" [invalid-params]") + `,"errorType":"invalid-params"}`
			if status != 400 || body != want {
				t.Errorf("%s (%s %q):\n got  %d %s\n want 400 %s", c.Name, c.ContentType, c.Body, status, body, want)
			}
			continue
		}
		valid++
		want := g.seed(t, v)
		status, body = g.send(t, c)
		wantStatus := 400
		if want == v.SuccessBody {
			wantStatus = 200
		}
		if status != wantStatus || body != want {
			t.Errorf("%s (%s %q):\n got  %d %s\n want %d %s", c.Name, c.ContentType, c.Body, status, body, wantStatus, want)
			continue
		}
		if status == 200 {
			g.checkRows(t, c, v)
		}
	}
	t.Logf("%d bodies, %d valid per Rocket.Chat's validator", len(cases), valid)
}

// checkRows compares the written message and tags with the oracle's coerced options.
func (g *gateway) checkRows(t *testing.T, c corpus.Case, v verdict) {
	t.Helper()
	var typ, msg, tags string
	err := g.db.QueryRow(`SELECT m.t, m.msg, r.tags FROM rooms r JOIN messages m ON m.id = r.last_message_id WHERE r.id = ?`, v.Rid).Scan(&typ, &msg, &tags)
	if err != nil {
		t.Errorf("%s: reading rows: %v", c.Name, err)
		return
	}
	wantType, wantMsg := "voip-call-ended", ""
	if v.Comment != nil && *v.Comment != "" {
		wantType, wantMsg = "voip-call-wrapup", *v.Comment
	}
	if typ != wantType || msg != wantMsg {
		t.Errorf("%s: message %s %q, want %s %q", c.Name, typ, msg, wantType, wantMsg)
	}
	var gotTags []string
	json.Unmarshal([]byte(tags), &gotTags)
	wantTags := v.Tags
	if len(wantTags) == 0 {
		wantTags = []string{"seeded"}
	}
	if fmt.Sprint(gotTags) != fmt.Sprint(wantTags) || len(gotTags) != len(wantTags) {
		t.Errorf("%s: tags %q, want %q", c.Name, gotTags, wantTags)
	}
}

// jsString is JSON.stringify for a string (messages are plain ASCII here).
func jsString(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}
