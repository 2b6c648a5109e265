package systemtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	rocketchatvoip "github.com/edgevoip/caddy-rocketchat-voip"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

// scrape returns the samples of the module's metrics on Caddy's /metrics.
func scrape(t *testing.T, e *env) map[string]float64 {
	t.Helper()
	resp, err := http.Get(e.caddy.BaseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "caddy_rocketchat_voip_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, _ := strconv.ParseFloat(line[i+1:], 64)
		samples[line[:i]] = v
	}
	return samples
}

func withMetricsRoute(handlers string) string {
	return "\thandle /metrics {\n\t\tmetrics\n\t}\n\thandle {\n" + handlers + "\n\t}"
}

func TestMetrics(t *testing.T) {
	e, _ := startEnv(t, envOptions{extra: []string{"rate_limit 4 60s"}, site: withMetricsRoute})
	before := scrape(t, e)
	plain := e.db.AddUser(t, "plain", "user")
	bad := map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": "nope"}
	e.do(t, http.MethodPost, closePath, bad, "{}")
	e.do(t, http.MethodPost, closePath, bad, "{}")
	e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": plain.ID, "X-Auth-Token": plain.Token, "Content-Type": "application/json"}, closeBody(e.roomID, e.visitor.Token))
	e.post(t, closeBody(e.roomID, e.visitor.Token))
	e.post(t, closeBody(e.roomID, e.visitor.Token))
	e.post(t, `{}`)
	e.post(t, `{}`) // the 5th counted request from this IP: rate limited
	e.do(t, http.MethodGet, "/api/info", nil, "")
	after := scrape(t, e)

	want := map[string]float64{
		"closed": 1, "unauthorized": 2, "forbidden": 1, "room_closed": 1, "invalid_params": 1, "rate_limited": 1,
		"invalid_token": 0, "invalid_room": 0, "too_large": 0, "unreadable_body": 0, "unavailable": 0,
		"overloaded": 0, "body_budget": 0, "stale": 0, "unknown_upstream": 0,
		"client_closed": 0, "internal_error": 0,
	}
	// Every outcome has its series from the start, and no other exists.
	for key := range after {
		if outcome, ok := strings.CutPrefix(key, `caddy_rocketchat_voip_requests_total{outcome="`); ok {
			if _, listed := want[strings.TrimSuffix(outcome, `"}`)]; !listed {
				t.Errorf("series %s is not an outcome this test knows", key)
			}
		}
	}
	for outcome, n := range want {
		key := fmt.Sprintf(`caddy_rocketchat_voip_requests_total{outcome="%s"}`, outcome)
		if _, ok := after[key]; !ok {
			t.Errorf("no series %s", key)
		}
		if got := after[key] - before[key]; got != n {
			t.Errorf("%s grew by %v, want %v", key, got, n)
		}
	}
	if got := after[`caddy_rocketchat_voip_request_duration_seconds_count{outcome="closed"}`] - before[`caddy_rocketchat_voip_request_duration_seconds_count{outcome="closed"}`]; got != 1 {
		t.Errorf("duration histogram for closed grew by %v", got)
	}
	// Every request that passed the body read touched the database (401s included).
	if got := after["caddy_rocketchat_voip_db_duration_seconds_count"] - before["caddy_rocketchat_voip_db_duration_seconds_count"]; got != 7 {
		t.Errorf("db duration histogram grew by %v, want 7", got)
	}
	open := fmt.Sprintf(`caddy_rocketchat_voip_db_open_connections{database="tcp(%s)/%s"}`, e.db.Cfg.Addr, e.db.Name)
	if after[open] < 1 {
		t.Errorf("%s = %v; series: %v", open, after[open], after)
	}
	// The database is in use (systemtest/latedb_test.go sees it 0 first).
	if info := fmt.Sprintf(`caddy_rocketchat_voip_build_info{schema_version="%d",version="%s"}`, schema.Latest(), rocketchatvoip.Version); after[info] != 1 {
		t.Errorf("%s = %v, want 1", info, after[info])
	}
	if up := fmt.Sprintf(`caddy_rocketchat_voip_db_up{database="tcp(%s)/%s"}`, e.db.Cfg.Addr, e.db.Name); after[up] != 1 {
		t.Errorf("%s = %v, want 1", up, after[up])
	}
	// A handful of requests one at a time never fill the bound: it stays at
	// db_concurrency's default.
	limit := fmt.Sprintf(`caddy_rocketchat_voip_db_concurrency_limit{database="tcp(%s)/%s"}`, e.db.Cfg.Addr, e.db.Name)
	if after[limit] != 8 {
		t.Errorf("%s = %v, want 8", limit, after[limit])
	}
}

// Every log line, at every level, is free of tokens; the debug line has the
// user, room, outcome and duration; the access log gets the placeholders.
func TestLogsAndPlaceholders(t *testing.T) {
	dir := t.TempDir()
	moduleLog, accessLog := filepath.Join(dir, "caddy.log"), filepath.Join(dir, "access.log")
	globals := fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n", moduleLog)
	site := func(handlers string) string {
		// The access log as README and examples/ recommend it: Caddy logs
		// request headers and redacts only Authorization and Cookie, so the
		// filter drops Rocket.Chat's X-Auth-Token.
		return fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat filter {\n\t\t\twrap json\n\t\t\tfields {\n\t\t\t\trequest>headers>X-Auth-Token delete\n\t\t\t}\n\t\t}\n\t}\n"+
			"\tlog_append voip_outcome {http.rocketchat_voip.outcome}\n"+
			"\tlog_append voip_user_id {http.rocketchat_voip.user_id}\n"+
			"\tlog_append voip_rid {http.rocketchat_voip.rid}\n%s", accessLog, handlers)
	}
	e, proxy := startEnv(t, envOptions{proxied: true, globals: globals, site: site, extra: []string{"db_timeout 500ms", "max_body 2KiB"}})
	secrets := []string{e.agent.Token, store.HashLoginToken(e.agent.Token), e.visitor.Token}

	e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token + "x"}, "{}")
	e.post(t, `{"rid":"ROOM1"}`)
	e.post(t, closeBody("NOPE", e.visitor.Token))
	e.post(t, closeBody(e.roomID, e.visitor.Token+"-wrong"))
	e.post(t, strings.Repeat("x", 4096))
	e.post(t, closeBody(e.roomID, e.visitor.Token))
	proxy.Down()
	e.post(t, closeBody(e.roomID, e.visitor.Token))
	proxy.Up()
	stopCaddy(t) // flush the log files

	for _, f := range []string{moduleLog, accessLog} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if strings.Contains(string(b), s) {
				t.Errorf("%s contains a token: %s", filepath.Base(f), s)
			}
		}
	}
	debug := readJSONLines(t, moduleLog)
	found := map[string]bool{}
	for _, l := range debug {
		if l["logger"] == "http.handlers.rocketchat_voip" {
			found[fmt.Sprint(l["level"], "/", l["outcome"])] = true
			if l["outcome"] == "closed" && (l["user_id"] != e.agent.ID || l["rid"] != e.roomID || l["duration"] == nil) {
				t.Errorf("debug line lacks fields: %v", l)
			}
		}
	}
	for _, k := range []string{"debug/unauthorized", "debug/invalid_params", "debug/invalid_room", "debug/invalid_token", "debug/too_large", "debug/closed", "error/unavailable"} {
		if !found[k] {
			t.Errorf("no %s log line; got %v", k, found)
		}
	}
	var closedLine map[string]any
	for _, l := range readJSONLines(t, accessLog) {
		if l["voip_outcome"] == "closed" {
			closedLine = l
		}
	}
	if closedLine == nil || closedLine["voip_user_id"] != e.agent.ID || closedLine["voip_rid"] != e.roomID {
		t.Errorf("access log lacks the placeholders: %v", closedLine)
	}
}

func readJSONLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestClientHangUpIsNotADatabaseFailure: a client that gives up while the
// database is slow is counted as client_closed and logged at info, never as
// unavailable at error level, which would page someone about a healthy
// database.
func TestClientHangUpIsNotADatabaseFailure(t *testing.T) {
	dir := t.TempDir()
	moduleLog := filepath.Join(dir, "caddy.log")
	globals := fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n", moduleLog)
	e, proxy := startEnv(t, envOptions{extra: []string{"db_timeout 5s"}, proxied: true, globals: globals, site: withMetricsRoute})
	before := scrape(t, e)
	proxy.Freeze()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.caddy.BaseURL+closePath, strings.NewReader(closeBody(e.roomID, e.visitor.Token)))
	req.Header.Set("X-User-Id", e.agent.ID)
	req.Header.Set("X-Auth-Token", e.agent.Token)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("got an answer (%d) while the database is frozen", resp.StatusCode)
	}
	proxy.Up()
	key := func(o string) string { return fmt.Sprintf(`caddy_rocketchat_voip_requests_total{outcome="%s"}`, o) }
	var after map[string]float64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if after = scrape(t, e); after[key("client_closed")]-before[key("client_closed")] == 1 {
			break
		}
	}
	if got := after[key("client_closed")] - before[key("client_closed")]; got != 1 {
		t.Fatalf("client_closed grew by %v, want 1", got)
	}
	if got := after[key("unavailable")] - before[key("unavailable")]; got != 0 {
		t.Fatalf("unavailable grew by %v, want 0", got)
	}
	logs, err := os.ReadFile(moduleLog)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(logs), "\n") {
		var entry struct{ Level, Msg, Outcome string }
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Outcome == "" {
			continue
		}
		if entry.Level == "error" {
			t.Errorf("error line for a client that hung up: %s", line)
		}
		if entry.Outcome == "client_closed" && entry.Level == "info" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no info line with outcome client_closed in:\n%s", logs)
	}
	if !e.room(t, e.roomID).open {
		t.Fatal("the room was closed")
	}
}
