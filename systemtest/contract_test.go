// Package systemtest proves the module end to end: each test runs Caddy with
// the module (in-process or as a process, internal/testcaddy), a real MySQL
// or MariaDB, and a real upstream on loopback. Files are grouped by what they
// prove: the contract table, hostile input, database failures, pass-through,
// operability, reloads, exactly-once and outages, soak and restarts.
package systemtest

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

const closePath = "/api/v1/voip/room.close"

// env is one test's world: a database with an agent, a visitor and an open
// room, an upstream, and Caddy with the module in front of it.
type env struct {
	db       *testdb.DB
	up       *testcaddy.Upstream
	caddy    *testcaddy.Caddy
	agent    testdb.Agent
	visitor  testdb.Visitor
	roomID   string
	roomTs   time.Time
	client   *http.Client
	settings string
}

// newEnv seeds the standard fixtures and starts Caddy with the module
// configured by extra lines inside the rocketchat_voip block.
func newEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	e, _ := startEnv(t, envOptions{extra: extra})
	return e
}

// newProxiedEnv is newEnv with the gateway reaching the database through a
// proxy the test can take down or freeze.
func newProxiedEnv(t *testing.T, extra ...string) (*env, *testdb.Proxy) {
	t.Helper()
	return startEnv(t, envOptions{extra: extra, proxied: true})
}

type envOptions struct {
	extra []string // lines inside the rocketchat_voip block
	// dsn is the gateway's DSN for the test's database; nil: as the test
	// server's user.
	dsn func(*testdb.DB) string
	// portable drops the close's procedure before the gateway starts, so
	// that it writes closes by the portable transaction on any engine (as
	// after a restore without routines).
	portable bool
	// ordinary drops the fast close's procedure, so that a recent closer's
	// close is its read and a CALL of the close's procedure.
	ordinary bool
	proxied  bool   // reach MySQL through a testdb.Proxy
	globals  string // Caddy global options
	// site wraps the handler lines (rocketchat_voip and reverse_proxy) into
	// the site body; nil uses them as the body.
	site func(handlers string) string
}

func startEnv(t *testing.T, o envOptions) (*env, *testdb.Proxy) {
	t.Helper()
	e := seededEnv(t)
	e.settings = strings.Join(o.extra, "\n\t\t")
	if o.portable && testServerHasProcedures(t, e.db) {
		e.db.Exec(t, "DROP PROCEDURE IF EXISTS "+store.CloseProcedure)
	}
	if o.ordinary && testServerHasProcedures(t, e.db) {
		e.db.Exec(t, "DROP PROCEDURE IF EXISTS "+store.FastCloseProcedure)
	}
	dsn := e.db.DSN
	if o.dsn != nil {
		dsn = o.dsn(e.db)
	}
	var proxy *testdb.Proxy
	if o.proxied {
		proxy = testdb.StartProxy(t, e.db.Cfg.Addr)
		cfg := e.db.Cfg.Clone()
		cfg.Addr = proxy.Addr
		dsn = cfg.FormatDSN()
	}
	handlers := fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\t%s\n\t}\n\treverse_proxy %s", dsn, e.settings, e.up.Addr)
	if o.site != nil {
		handlers = o.site(handlers)
	}
	e.caddy = testcaddy.Start(t, o.globals, handlers)
	return e, proxy
}

// seededEnv is an env with its database seeded and its upstream running,
// before Caddy starts.
func seededEnv(t *testing.T) *env {
	t.Helper()
	e := &env{db: testdb.New(t), up: testcaddy.StartUpstream(t), client: &http.Client{Timeout: 30 * time.Second}}
	e.agent = e.db.AddUser(t, "agent1", "livechat-agent", "user")
	e.visitor = e.db.AddVisitor(t, "visitor1")
	e.roomID = "ROOM1"
	e.roomTs = time.Now().UTC().Add(-90 * time.Second).Truncate(time.Millisecond)
	e.db.AddRoom(t, e.roomID, e.visitor, e.roomTs, nil)
	return e
}

type response struct {
	status int
	header http.Header
	body   string
}

// post sends a room.close with the agent's credentials.
func (e *env) post(t *testing.T, body string) response {
	t.Helper()
	return e.do(t, http.MethodPost, closePath, map[string]string{
		"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token, "Content-Type": "application/json",
	}, body)
}

// postAs sends a room.close with another user's credentials.
func (e *env) postAs(t *testing.T, u testdb.Agent, body string) response {
	t.Helper()
	return e.do(t, http.MethodPost, closePath, map[string]string{
		"X-User-Id": u.ID, "X-Auth-Token": u.Token, "Content-Type": "application/json",
	}, body)
}

func (e *env) do(t *testing.T, method, path string, headers map[string]string, body string) response {
	t.Helper()
	r, err := e.try(method, path, headers, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tryPost is post for a goroutine other than the test's: it returns the
// error rather than failing the test (t.Fatal there would end only the
// goroutine, and leave the test waiting for its answer).
func (e *env) tryPost(body string) (response, error) {
	return e.try(http.MethodPost, closePath, map[string]string{
		"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token, "Content-Type": "application/json",
	}, body)
}

// try is do returning its error; any goroutine may call it.
func (e *env) try(method, path string, headers map[string]string, body string) (response, error) {
	req, err := http.NewRequest(method, e.caddy.BaseURL+path, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	for k, v := range headers {
		req.Header[k] = []string{v} // as given, not canonicalised
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{resp.StatusCode, resp.Header, string(b)}, nil
}

func closeBody(rid, token string) string {
	b, _ := json.Marshal(map[string]string{"rid": rid, "token": token})
	return string(b)
}

// expect checks status, exact body and the contract's framing headers.
func expect(t *testing.T, got response, status int, body string) {
	t.Helper()
	if got.status != status || got.body != body {
		t.Fatalf("got %d %s\nwant %d %s", got.status, got.body, status, body)
	}
	for k, v := range map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"} {
		if got.header.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, got.header.Get(k), v)
		}
	}
	if got.header.Get("X-Upstream") != "" {
		t.Errorf("a handled request reached the upstream")
	}
}

// snapshot is everything a failed request must leave unchanged.
type snapshot struct {
	messages, events int
	room             string
}

func (e *env) snapshot(t *testing.T) snapshot {
	t.Helper()
	var room string
	err := e.db.QueryRow(`SELECT CONCAT_WS('|', open, COALESCE(closed_at,'-'), COALESCE(closer,'-'), msgs,
  COALESCE(last_message_id,'-'), COALESCE(tags,'-'), visitor_status, updated_at) FROM rooms WHERE id = ?`, e.roomID).Scan(&room)
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{e.db.Count(t, "messages"), e.db.Count(t, "room_events"), room}
}

func (e *env) expectUnchanged(t *testing.T, before snapshot) {
	t.Helper()
	if after := e.snapshot(t); after != before {
		t.Fatalf("a failed request wrote to the database:\nbefore %+v\nafter  %+v", before, after)
	}
}

func (e *env) expectNothingUpstream(t *testing.T) {
	t.Helper()
	for _, r := range e.up.Requests() {
		if strings.HasPrefix(r.RequestURI, closePath) && r.Method == http.MethodPost {
			t.Fatalf("room.close was forwarded upstream: %+v", r)
		}
	}
}

type closedRoom struct {
	open                           bool
	closedAt                       sql.NullTime
	closer, closedByID, closedByUN sql.NullString
	callDuration, waiting, hold    sql.NullInt64
	visitorStatus                  sql.NullString
	msgs                           int
	lm                             sql.NullTime
	lastMessageID                  sql.NullString
	tags                           sql.NullString
	updatedAt                      time.Time
}

func (e *env) room(t *testing.T, id string) closedRoom {
	t.Helper()
	var r closedRoom
	err := e.db.QueryRow(`SELECT open, closed_at, closer, closed_by_id, closed_by_username, call_duration,
  call_waiting_time, call_total_hold_time, visitor_status, msgs, lm, last_message_id, tags, updated_at
FROM rooms WHERE id = ?`, id).Scan(&r.open, &r.closedAt, &r.closer, &r.closedByID, &r.closedByUN, &r.callDuration,
		&r.waiting, &r.hold, &r.visitorStatus, &r.msgs, &r.lm, &r.lastMessageID, &r.tags, &r.updatedAt)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCloseSuccessWithWrapupAndPBXMetrics(t *testing.T) {
	e := newEnv(t)
	// A second room for the same visitor with PBX events.
	rid := "ROOM2"
	ts := time.Now().UTC().Add(-10 * time.Minute).Truncate(time.Millisecond)
	e.db.AddRoom(t, rid, e.visitor, ts, "call-42")
	hold1 := ts.Add(time.Minute)
	unhold1 := hold1.Add(30 * time.Second)
	hold2 := ts.Add(5 * time.Minute) // never unheld: counts until the close
	for i, ev := range []struct {
		event, holdTime string
		ts              time.Time
		fallback        bool
	}{
		{"AgentConnect", "12", ts.Add(12 * time.Second), false},
		{"Hold", "", hold1, false},
		{"Unhold", "", unhold1, true}, // linked through call_unique_id_fallback
		{"Hold", "", hold2, false},
		{"Ringing", "", ts, false}, // not a metric event
	} {
		cu, fb := any("call-42"), any(nil)
		if ev.fallback {
			cu, fb = nil, "call-42"
		}
		e.db.Exec(t, "INSERT INTO pbx_events (id, unique_id, event, call_unique_id, call_unique_id_fallback, hold_time, ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
			fmt.Sprintf("ev%d", i), fmt.Sprintf("u%d", i), ev.event, cu, fb, ev.holdTime, ev.ts)
	}

	before := time.Now().UTC()
	got := e.post(t, `{"rid":"ROOM2","token":"`+e.visitor.Token+`","options":{"comment":"call done <ok> & \"fine\"","tags":["sales","vip"]}}`)
	after := time.Now().UTC()
	expect(t, got, 200, `{"rid":"ROOM2","success":true}`)
	if got.header.Get("X-RateLimit-Limit") != "10" || got.header.Get("X-RateLimit-Remaining") != "9" || got.header.Get("X-RateLimit-Reset") == "" {
		t.Errorf("rate limit headers: %v", got.header)
	}

	r := e.room(t, rid)
	if r.open || r.closer.String != "visitor" || r.closedByID.String != e.visitor.ID || r.closedByUN.String != e.visitor.Username ||
		r.visitorStatus.String != "offline" || r.msgs != 4 || r.tags.String != `["sales", "vip"]` && r.tags.String != `["sales","vip"]` {
		t.Fatalf("room after close: %+v", r)
	}
	closedAt := r.closedAt.Time
	if closedAt.Before(before.Truncate(time.Millisecond)) || closedAt.After(after) || !r.lm.Time.Equal(closedAt) || !r.updatedAt.Equal(closedAt) {
		t.Fatalf("closed_at %v lm %v updated_at %v not within [%v, %v]", closedAt, r.lm.Time, r.updatedAt, before, after)
	}
	if want := closedAt.Sub(ts).Milliseconds(); r.callDuration.Int64 != want {
		t.Errorf("call_duration = %d, want %d", r.callDuration.Int64, want)
	}
	if !r.waiting.Valid || r.waiting.Int64 != 12000 {
		t.Errorf("call_waiting_time = %+v, want 12000", r.waiting)
	}
	if want := unhold1.Sub(hold1).Milliseconds() + closedAt.Sub(hold2).Milliseconds(); r.hold.Int64 != want {
		t.Errorf("call_total_hold_time = %d, want %d", r.hold.Int64, want)
	}

	var id, typ, msg, userID, username, name string
	var groupable bool
	var mts time.Time
	if err := e.db.QueryRow("SELECT id, t, msg, groupable, user_id, username, name, ts FROM messages WHERE rid = ?", rid).
		Scan(&id, &typ, &msg, &groupable, &userID, &username, &name, &mts); err != nil {
		t.Fatal(err)
	}
	if typ != "voip-call-wrapup" || msg != `call done <ok> & "fine"` || groupable || userID != e.agent.ID ||
		username != e.agent.Username || name != e.agent.Name || !mts.Equal(closedAt) || id != r.lastMessageID.String || len(id) != 17 {
		t.Fatalf("message: %s %s %q %v %s %s %s %v (room last_message_id %s)", id, typ, msg, groupable, userID, username, name, mts, r.lastMessageID.String)
	}

	var payload []byte
	var evType string
	if err := e.db.QueryRow("SELECT type, payload FROM room_events WHERE rid = ?", rid).Scan(&evType, &payload); err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatal(err)
	}
	if evType != "room.closed" || p["rid"] != rid || p["closer"] != "visitor" || p["messageId"] != id ||
		p["agent"].(map[string]any)["_id"] != e.agent.ID || p["closedBy"].(map[string]any)["_id"] != e.visitor.ID {
		t.Fatalf("outbox row: %s %s", evType, payload)
	}
	// The other room of the visitor is untouched.
	if other := e.room(t, e.roomID); !other.open || other.msgs != 3 {
		t.Fatalf("another room changed: %+v", other)
	}
	if e.db.Count(t, "messages") != 1 || e.db.Count(t, "room_events") != 1 {
		t.Fatal("expected exactly one message and one outbox row")
	}
	e.expectNothingUpstream(t)
}

func TestCloseSuccessWithoutOptions(t *testing.T) {
	e := newEnv(t)
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	r := e.room(t, e.roomID)
	if r.open || r.msgs != 4 || r.tags.String != `["old"]` || r.waiting.Valid || !r.hold.Valid || r.hold.Int64 != 0 {
		t.Fatalf("room: %+v", r)
	}
	var typ, msg string
	if err := e.db.QueryRow("SELECT t, msg FROM messages WHERE rid = ?", e.roomID).Scan(&typ, &msg); err != nil {
		t.Fatal(err)
	}
	if typ != "voip-call-ended" || msg != "" {
		t.Fatalf("message %s %q", typ, msg)
	}
	// Empty comment and empty tags count as absent.
	e.db.AddRoom(t, "ROOM3", e.visitor, e.roomTs, nil)
	expect(t, e.post(t, `{"rid":"ROOM3","token":"`+e.visitor.Token+`","options":{"comment":"","tags":[]}}`), 200, `{"rid":"ROOM3","success":true}`)
	if r := e.room(t, "ROOM3"); r.tags.String != `["old"]` {
		t.Fatalf("tags changed by an empty array: %s", r.tags.String)
	}
	if n := e.db.Count(t, "messages WHERE rid = 'ROOM3' AND t = 'voip-call-ended' AND msg = ''"); n != 1 {
		t.Fatalf("want one voip-call-ended message for ROOM3, got %d", n)
	}
}

func TestCoercedRidIsEchoed(t *testing.T) {
	e := newEnv(t)
	e.db.AddRoom(t, "123", e.visitor, e.roomTs, nil)
	expect(t, e.post(t, `{"rid":123,"token":"`+e.visitor.Token+`"}`), 200, `{"rid":"123","success":true}`)
	e.db.AddRoom(t, "true", e.visitor, e.roomTs, nil)
	expect(t, e.post(t, `{"rid":true,"token":"`+e.visitor.Token+`"}`), 200, `{"rid":"true","success":true}`)
	// The rid is echoed with JSON.stringify's escaping, not Go's.
	e.db.AddRoom(t, `a<b>&"c`, e.visitor, e.roomTs, nil)
	expect(t, e.post(t, `{"rid":"a<b>&\"c","token":"`+e.visitor.Token+`"}`), 200, `{"rid":"a<b>&\"c","success":true}`)
}

const (
	body401   = `{"status":"error","message":"You must be logged in to do this."}`
	body401v7 = `{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}`
	body403   = `{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}`
)

func TestUnauthorized(t *testing.T) {
	e := newEnv(t)
	other := e.db.AddUser(t, "agent2", "livechat-agent")
	e.db.AddToken(t, e.agent.ID, "expired-resume", store.TokenTypeResume, time.Now().UTC().Add(-91*24*time.Hour))
	e.db.AddToken(t, e.agent.ID, "old-pat", store.TokenTypePersonalAccessToken, time.Now().UTC().Add(-900*24*time.Hour))
	e.db.AddToken(t, e.agent.ID, "fresh-enough", store.TokenTypeResume, time.Now().UTC().Add(-89*24*time.Hour))
	valid := closeBody(e.roomID, e.visitor.Token)
	before := e.snapshot(t)

	cases := []struct {
		name    string
		headers map[string]string
	}{
		{"no headers", map[string]string{}},
		{"no token", map[string]string{"X-User-Id": e.agent.ID}},
		{"no user", map[string]string{"X-Auth-Token": e.agent.Token}},
		{"empty token", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": ""}},
		{"empty user", map[string]string{"X-User-Id": "", "X-Auth-Token": e.agent.Token}},
		{"wrong token", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": "nope"}},
		{"token of another user", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": other.Token}},
		{"user id in another case", map[string]string{"X-User-Id": strings.ToUpper(e.agent.ID), "X-Auth-Token": e.agent.Token}},
		{"token in another case", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": strings.ToUpper(e.agent.Token)}},
		{"expired resume token", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": "expired-resume"}},
		{"the hash instead of the token", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": store.HashLoginToken(e.agent.Token)}},
		{"bad body too", map[string]string{"X-User-Id": e.agent.ID}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.headers["Content-Type"] = "application/json"
			body := valid
			if c.name == "bad body too" {
				body = "[1,2"
			}
			got := e.do(t, http.MethodPost, closePath, c.headers, body)
			expect(t, got, 401, body401)
			if got.header.Get("X-RateLimit-Limit") != "" {
				t.Error("401 carries rate limit headers")
			}
		})
	}
	e.expectUnchanged(t, before)
	e.expectNothingUpstream(t)

	// Header names in any case; an old PAT and a resume token inside the
	// expiration window are accepted (an invalid body shows we got past 401).
	for _, h := range []map[string]string{
		{"x-user-id": e.agent.ID, "x-auth-token": e.agent.Token},
		{"X-USER-ID": e.agent.ID, "X-AUTH-TOKEN": "old-pat"},
		{"X-User-Id": e.agent.ID, "X-Auth-Token": "fresh-enough"},
	} {
		h["Content-Type"] = "application/json"
		expect(t, e.do(t, http.MethodPost, closePath, h, `{}`), 400,
			`{"success":false,"error":"must have required property 'rid' [invalid-params]","errorType":"invalid-params"}`)
	}
}

// TestRepeatedCredentialHeaders: Node joins a repeated header into "a, b",
// which names no user or token, so Rocket.Chat answers 401; so do we, even
// when one of the values is right.
func TestRepeatedCredentialHeaders(t *testing.T) {
	e := newEnv(t)
	before := e.snapshot(t)
	for _, c := range []struct {
		name          string
		users, tokens []string
	}{
		{"user id twice", []string{e.agent.ID, "someone-else"}, []string{e.agent.Token}},
		{"the same user id twice", []string{e.agent.ID, e.agent.ID}, []string{e.agent.Token}},
		{"token twice", []string{e.agent.ID}, []string{e.agent.Token, "nope"}},
		{"the same token twice", []string{e.agent.ID}, []string{e.agent.Token, e.agent.Token}},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, e.caddy.BaseURL+closePath, strings.NewReader(closeBody(e.roomID, e.visitor.Token)))
			req.Header["Content-Type"] = []string{"application/json"}
			req.Header["X-User-Id"] = c.users
			req.Header["X-Auth-Token"] = c.tokens
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			expect(t, response{resp.StatusCode, resp.Header, string(b)}, 401, body401)
		})
	}
	e.expectUnchanged(t, before)
	e.expectNothingUpstream(t)
}

func TestUnauthorizedCompat7AndLoginExpiration(t *testing.T) {
	e := newEnv(t, "compat 7", "login_expiration 1h")
	e.db.AddToken(t, e.agent.ID, "two-hours-old", store.TokenTypeResume, time.Now().UTC().Add(-2*time.Hour))
	got := e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": "two-hours-old"}, `{}`)
	expect(t, got, 401, body401v7)
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, "rate_limit 3 60s")
	bypass := e.db.AddUser(t, "admin1", "admin")
	body := `{"rid":"x"}` // invalid: shows the limiter runs before validation
	want400 := `{"success":false,"error":"must have required property 'token' [invalid-params]","errorType":"invalid-params"}`

	// 401s are not counted.
	for i := 0; i < 5; i++ {
		expect(t, e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": "bad"}, body), 401, body401)
	}
	start := time.Now()
	var reset int64
	for i := 1; i <= 3; i++ {
		got := e.post(t, body)
		expect(t, got, 400, want400)
		if got.header.Get("X-RateLimit-Limit") != "3" || got.header.Get("X-RateLimit-Remaining") != strconv.Itoa(3-i) {
			t.Fatalf("request %d: headers %v", i, got.header)
		}
		r, _ := strconv.ParseInt(got.header.Get("X-RateLimit-Reset"), 10, 64)
		if i > 1 && r != reset {
			t.Fatalf("reset moved within a window: %d then %d", reset, r)
		}
		reset = r
	}
	if until := time.UnixMilli(reset).Sub(start); until < 59*time.Second || until > 61*time.Second {
		t.Fatalf("X-RateLimit-Reset %d is %v away, want about 60s", reset, until)
	}
	got := e.post(t, closeBody(e.roomID, e.visitor.Token))
	m := regexp.MustCompile(`^\{"success":false,"error":"Error, too many requests\. Please slow down\. You must wait (\d+) seconds before trying this endpoint again\. \[error-too-many-requests\]"\}$`).FindStringSubmatch(got.body)
	if got.status != 429 || m == nil {
		t.Fatalf("4th request: %d %s", got.status, got.body)
	}
	if n, _ := strconv.Atoi(m[1]); n < 59 || n > 60 {
		t.Fatalf("wait %d seconds, want 59 or 60", n)
	}
	expect(t, got, 429, got.body)
	if got.header.Get("X-RateLimit-Remaining") != "0" || got.header.Get("X-RateLimit-Limit") != "3" {
		t.Fatalf("429 headers: %v", got.header)
	}
	if e.room(t, e.roomID).open != true {
		t.Fatal("a rate-limited request closed the room")
	}
	// A role granting api-bypass-rate-limit is never limited.
	for i := 0; i < 5; i++ {
		got := e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": bypass.ID, "X-Auth-Token": bypass.Token, "Content-Type": "application/json"}, body)
		expect(t, got, 400, want400)
	}
}

func TestRateLimitOff(t *testing.T) {
	e := newEnv(t, "rate_limit off")
	for i := 0; i < 12; i++ {
		got := e.post(t, `{}`)
		expect(t, got, 400, `{"success":false,"error":"must have required property 'rid' [invalid-params]","errorType":"invalid-params"}`)
		if got.header.Get("X-RateLimit-Limit") != "" {
			t.Fatal("rate limit headers with rate_limit off")
		}
	}
}

func invalid(msg string) string {
	return `{"success":false,"error":"` + msg + ` [invalid-params]","errorType":"invalid-params"}`
}

func TestValidation(t *testing.T) {
	e := newEnv(t, "rate_limit off")
	tok := e.visitor.Token
	cases := []struct {
		contentType, body, want string
	}{
		{"application/json", `[]`, "must be object"},
		{"application/json", `"str"`, "must have required property 'rid'"},
		{"application/json", `42`, "must have required property 'rid'"},
		{"application/json", `null`, "must have required property 'rid'"},
		{"application/json", `true`, "must have required property 'rid'"},  // spread by the router: {}
		{"application/json", `"rid"`, "must have required property 'rid'"}, // {"0":"r","1":"i","2":"d"}
		{"multipart/form-data; x=application/json", `{"rid":"x","token":"y"}`, "must have required property 'rid'"},
		{"application/json", `{`, "must have required property 'rid'"},
		{"application/json", ``, "must have required property 'rid'"},
		{"application/json", `{"token":"x"}`, "must have required property 'rid'"},
		{"application/json", `{"rid":"x"}`, "must have required property 'token'"},
		{"application/json", `{"rid":"x","token":"y","extra":1}`, "must NOT have additional properties"},
		{"application/json", `{"rid":{},"token":"y","extra":1}`, "must NOT have additional properties"},
		{"application/json", `{"rid":[],"token":"y"}`, "must be string"},
		{"application/json", `{"rid":"x","token":{"a":1}}`, "must be string"},
		{"application/json", `{"rid":"x","token":"y","options":"z"}`, "must be object"},
		{"application/json", `{"rid":"x","token":"y","options":null}`, "must be object"},
		{"application/json", `{"rid":"x","token":"y","options":{"comment":{}}}`, "must be string"},
		{"application/json", `{"rid":"x","token":"y","options":{"tags":"a"}}`, "must be array"},
		{"application/json", `{"rid":"x","token":"y","options":{"tags":[1,{}]}}`, "must be string"},
		{"application/json", `{"rid":"x","token":"y","options":{"comment":[],"tags":"a"}}`, "must be string"},
		{"Application/JSON", `{"rid":"x","token":"y"}`, "must have required property 'rid'"},
		{"text/plain", `{"rid":"x","token":"y"}`, "must have required property 'rid'"},
		{"", ``, "must have required property 'rid'"},
		{"application/x-www-form-urlencoded", `rid=x&token=y&more=1`, "must NOT have additional properties"},
		{"application/x-www-form-urlencoded", `rid=x&token=y&options=1`, "must be object"},
		{"application/x-www-form-urlencoded", `rid=x`, "must have required property 'token'"},
	}
	before := e.snapshot(t)
	for _, c := range cases {
		got := e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token, "Content-Type": c.contentType}, c.body)
		if got.status != 400 || got.body != invalid(c.want) {
			t.Errorf("%s %q: got %d %s, want %s", c.contentType, c.body, got.status, got.body, c.want)
		}
	}
	e.expectUnchanged(t, before)

	// Valid bodies in the other encodings reach the database.
	got := e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token,
		"Content-Type": "application/x-www-form-urlencoded"}, "rid=ROOM1&token="+tok)
	expect(t, got, 200, `{"rid":"ROOM1","success":true}`)
	e.db.AddRoom(t, "ROOM9", e.visitor, e.roomTs, nil)
	got = e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token,
		"Content-Type": "application/json; charset=utf-8"}, "\ufeff"+closeBody("ROOM9", tok))
	expect(t, got, 200, `{"rid":"ROOM9","success":true}`)
}

func TestForbidden(t *testing.T) {
	e := newEnv(t)
	plain := e.db.AddUser(t, "plain", "user")
	h := map[string]string{"X-User-Id": plain.ID, "X-Auth-Token": plain.Token, "Content-Type": "application/json"}
	before := e.snapshot(t)
	expect(t, e.do(t, http.MethodPost, closePath, h, closeBody(e.roomID, e.visitor.Token)), 403, body403)
	// A bad body is reported before the missing permission.
	expect(t, e.do(t, http.MethodPost, closePath, h, `{"rid":1}`), 400, invalid("must have required property 'token'"))
	e.expectUnchanged(t, before)

	// Operators grant the permission by editing permission_roles.
	e.db.Exec(t, "INSERT INTO permission_roles (permission, role) VALUES ('inbound-voip-calls', 'user')")
	expect(t, e.do(t, http.MethodPost, closePath, h, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
}

// TestKnownCloserRevoked: a token that has just closed a room is read with
// the room in one query from then on (see TestRoundTrips), but the database
// still decides: a logout or a role taken away is honoured on the next
// request, and nothing is written.
func TestKnownCloserRevoked(t *testing.T) {
	e := newEnv(t)
	e.db.AddRoom(t, "ROOM2", e.visitor, e.roomTs, nil)
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	before := e.snapshot(t)

	e.db.Exec(t, "DELETE FROM user_roles WHERE user_id = ? AND role = 'livechat-agent'", e.agent.ID)
	expect(t, e.post(t, closeBody("ROOM2", e.visitor.Token)), 403, body403)
	e.db.Exec(t, "INSERT INTO user_roles (user_id, role) VALUES (?, 'livechat-agent')", e.agent.ID)
	e.db.Exec(t, "DELETE FROM user_login_tokens WHERE user_id = ?", e.agent.ID)
	expect(t, e.post(t, closeBody("ROOM2", e.visitor.Token)), 401, body401)
	e.expectUnchanged(t, before)
	if r := e.room(t, "ROOM2"); !r.open || r.msgs != 3 {
		t.Fatalf("ROOM2 changed: open %v, msgs %d", r.open, r.msgs)
	}
}

func TestInvalidTokenRoomAndClosed(t *testing.T) {
	e := newEnv(t)
	other := e.db.AddVisitor(t, "visitor2")
	e.db.AddRoom(t, "OTHER", other, e.roomTs, nil)
	e.db.Exec(t, "INSERT INTO rooms (id, t, open, ts, visitor_token, updated_at) VALUES ('LIVECHAT', 'l', TRUE, ?, ?, ?)", e.roomTs, e.visitor.Token, e.roomTs)
	before := e.snapshot(t)
	for _, c := range []struct{ body, want string }{
		{closeBody(e.roomID, "no-such-visitor"), `{"success":false,"error":"invalid-token"}`},
		{closeBody(e.roomID, e.visitor.Token+" "), `{"success":false,"error":"invalid-token"}`},
		{closeBody("NOPE", e.visitor.Token), `{"success":false,"error":"invalid-room"}`},
		{closeBody("OTHER", e.visitor.Token), `{"success":false,"error":"invalid-room"}`},
		{closeBody("LIVECHAT", e.visitor.Token), `{"success":false,"error":"invalid-room"}`},
		{closeBody("", e.visitor.Token), `{"success":false,"error":"invalid-room"}`},
		{`{"rid":null,"token":"` + e.visitor.Token + `"}`, `{"success":false,"error":"invalid-room"}`},
		{closeBody(e.roomID+" ", e.visitor.Token), `{"success":false,"error":"invalid-room"}`},
	} {
		expect(t, e.post(t, c.body), 400, c.want)
	}
	e.expectUnchanged(t, before)

	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	closed := e.snapshot(t)
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 400, `{"success":false,"error":"room-closed"}`)
	e.expectUnchanged(t, closed)
	e.expectNothingUpstream(t)
}

func TestBodyTooLarge(t *testing.T) {
	e := newEnv(t, "max_body 1KiB")
	before := e.snapshot(t)
	big := `{"rid":"ROOM1","token":"` + e.visitor.Token + `","options":{"comment":"` + strings.Repeat("x", 2000) + `"}}`
	expect(t, e.post(t, big), 413, `{"success":false,"error":"request entity too large"}`)
	// Without a Content-Length (chunked), too.
	req, _ := http.NewRequest(http.MethodPost, e.caddy.BaseURL+closePath, io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1
	req.Header.Set("X-User-Id", e.agent.ID)
	req.Header.Set("X-Auth-Token", e.agent.Token)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || string(b) != `{"success":false,"error":"request entity too large"}` {
		t.Fatalf("chunked: %d %s", resp.StatusCode, b)
	}
	e.expectUnchanged(t, before)
	e.expectNothingUpstream(t)
}

func TestConcurrentClosesExactlyOneWins(t *testing.T) {
	e := newEnv(t, "rate_limit off")
	const n = 50
	var wg sync.WaitGroup
	results := make([]response, n)
	errs := make([]error, n)
	startGate := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-startGate
			results[i], errs[i] = e.tryPost(closeBody(e.roomID, e.visitor.Token))
		})
	}
	close(startGate)
	wg.Wait()
	wins, losses := 0, 0
	for i, r := range results {
		switch {
		case errs[i] != nil:
			t.Errorf("a close got no answer: %v", errs[i])
		case r.status == 200 && r.body == `{"rid":"ROOM1","success":true}`:
			wins++
		case r.status == 400 && r.body == `{"success":false,"error":"room-closed"}`:
			losses++
		default:
			t.Errorf("unexpected answer %d %s", r.status, r.body)
		}
	}
	if wins != 1 || losses != n-1 {
		t.Fatalf("%d successes and %d room-closed, want 1 and %d", wins, losses, n-1)
	}
	if m, ev, msgs := e.db.Count(t, "messages"), e.db.Count(t, "room_events"), e.room(t, e.roomID).msgs; m != 1 || ev != 1 || msgs != 4 {
		t.Fatalf("%d messages, %d outbox rows, msgs=%d; want 1, 1, 4", m, ev, msgs)
	}
}

func TestRateLimitWindowResets(t *testing.T) {
	e := newEnv(t, "rate_limit 2 1s")
	want400 := invalid("must have required property 'rid'")
	expect(t, e.post(t, `{}`), 400, want400)
	expect(t, e.post(t, `{}`), 400, want400)
	got := e.post(t, `{}`)
	if got.status != 429 || got.body != `{"success":false,"error":"Error, too many requests. Please slow down. You must wait 1 seconds before trying this endpoint again. [error-too-many-requests]"}` {
		t.Fatalf("3rd request in a 1s window: %d %s", got.status, got.body)
	}
	reset, _ := strconv.ParseInt(got.header.Get("X-RateLimit-Reset"), 10, 64)
	time.Sleep(time.Until(time.UnixMilli(reset)) + 50*time.Millisecond)
	got = e.post(t, `{}`)
	expect(t, got, 400, want400)
	if got.header.Get("X-RateLimit-Remaining") != "1" {
		t.Fatalf("a new window did not start: %v", got.header)
	}
}

// stopCaddy stops the running config now (tests that read log files need
// them flushed and closed).
func stopCaddy(t *testing.T) {
	t.Helper()
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRoundTrips counts the commands the gateway sends MySQL per outcome
// (through the proxy, on one warm connection). Where the engine has
// procedures (MariaDB, MySQL), a close by credentials that closed a room
// through this gateway before is one CALL of the fast close's procedure;
// anything else that CALL finds (a rejection, a revocation) changes
// nothing, and the read that decides the answer follows: 2. Without the
// fast close (the "procedure" subtest: its procedure dropped), a close is
// one read and one CALL of the close's procedure, and elsewhere one read
// and the portable transaction (BEGIN, UPDATE, two INSERTs, COMMIT); a
// rejection is the one read, whether or not the room has PBX events. The
// first close of a token through a gateway reads the credentials and the
// room apart, as every request of a token not known to close rooms does.
func TestRoundTrips(t *testing.T) {
	t.Run("portable", func(t *testing.T) { roundTrips(t, envOptions{portable: true}) })
	t.Run("procedure", func(t *testing.T) { roundTrips(t, envOptions{ordinary: true}) })
	t.Run("fast", func(t *testing.T) { roundTrips(t, envOptions{}) })
}

func roundTrips(t *testing.T, o envOptions) {
	o.extra, o.proxied = []string{"max_open_conns 1", "rate_limit off"}, true
	e, proxy := startEnv(t, o)
	if !o.portable && !e.procedurePath(t) {
		t.Skipf("%s has no procedure path", e.engine(t))
	}
	fast := !o.portable && !o.ordinary
	e.db.AddRoom(t, "WARM", e.visitor, time.Now().UTC(), nil)
	e.db.AddRoom(t, "CALL", e.visitor, time.Now().UTC(), "call-1")
	e.db.Exec(t, "INSERT INTO pbx_events (id, unique_id, event, call_unique_id, hold_time, ts) VALUES ('p1', 'u1', 'AgentConnect', 'call-1', '3', ?)", time.Now().UTC())
	plain := e.db.AddUser(t, "plain", "user")
	e.db.AddRoom(t, "WARM2", e.visitor, time.Now().UTC(), nil)
	e.db.AddRoom(t, "FIRST", e.visitor, time.Now().UTC(), nil)
	newAgent := e.db.AddUser(t, "agent2", "livechat-agent")
	// Two closes prepare the statements of both paths on the connection.
	expect(t, e.post(t, closeBody("WARM", e.visitor.Token)), 200, `{"rid":"WARM","success":true}`)
	expect(t, e.post(t, closeBody("WARM2", e.visitor.Token)), 200, `{"rid":"WARM2","success":true}`)
	write := 5 // the portable transaction
	if !o.portable {
		write = 1 // the CALL
	}
	known, knownRejection := 1+write, 1 // a recent closer's close, and rejection
	if fast {
		known, knownRejection = 1, 2
	}
	t.Logf("engine %s: a close's write is %d round trip(s), a recent closer's close %d", e.engine(t), write, known)
	cases := []struct {
		name    string
		send    func() response
		status  int
		queries int
	}{
		{"close", func() response { return e.post(t, closeBody(e.roomID, e.visitor.Token)) }, 200, known},
		{"close with PBX events", func() response { return e.post(t, closeBody("CALL", e.visitor.Token)) }, 200, known},
		{"room-closed", func() response { return e.post(t, closeBody(e.roomID, e.visitor.Token)) }, 400, knownRejection},
		{"invalid-room", func() response { return e.post(t, closeBody("NOPE", e.visitor.Token)) }, 400, knownRejection},
		{"invalid-token", func() response { return e.post(t, closeBody(e.roomID, "nope")) }, 400, knownRejection},
		{"validation", func() response { return e.post(t, `{}`) }, 400, 1},
		{"unauthorized", func() response {
			return e.do(t, http.MethodPost, closePath, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": "nope"}, closeBody(e.roomID, e.visitor.Token))
		}, 401, 1},
		{"no credentials", func() response { return e.do(t, http.MethodPost, closePath, nil, closeBody(e.roomID, e.visitor.Token)) }, 401, 0},
		{"forbidden", func() response { return e.postAs(t, plain, closeBody("WARM", e.visitor.Token)) }, 403, 1},
		{"forbidden again", func() response { return e.postAs(t, plain, closeBody("WARM", e.visitor.Token)) }, 403, 1},
		{"first close of a token", func() response { return e.postAs(t, newAgent, closeBody("FIRST", e.visitor.Token)) }, 200, 2 + write},
		{"a known closer's rejection", func() response { return e.postAs(t, newAgent, closeBody("FIRST", e.visitor.Token)) }, 400, knownRejection},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := proxy.Commands()
			got := c.send()
			n := proxy.Commands() - before
			if got.status != c.status {
				t.Fatalf("got %d %s, want %d", got.status, got.body, c.status)
			}
			if n != c.queries {
				t.Fatalf("%d round trips, want %d", n, c.queries)
			}
		})
	}
}
