package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/corpus"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/params"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// twoPaths is two databases seeded alike and a store on each with the same
// clock and message id: the first closes by the ordinary path (the
// combined read, Verify, CloseRoom), the second tries FastClose first and
// takes the ordinary path when it says ErrNotFast, as the handler does.
type twoPaths struct {
	t   *testing.T
	db  [2]*testdb.DB
	st  [2]*store.Store
	now time.Time
	id  string
}

const (
	pathOrdinary = 0
	pathFast     = 1
)

func newTwoPaths(t *testing.T) *twoPaths {
	if !testServerHasProcedures(t) {
		t.Skip("the test server has no stored procedures: there is no fast close")
	}
	tp := &twoPaths{t: t}
	for i := range tp.db {
		tp.db[i] = testdb.New(t)
		st, err := store.NewForTest(context.Background(), tp.db[i].DB, true, func() time.Time { return tp.now }, func() string { return tp.id })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if !st.HasFastClose() {
			t.Fatalf("no fast close on a server with procedures: %v", st.WritePath())
		}
		tp.st[i] = st
	}
	return tp
}

// exec runs a statement on both databases.
func (tp *twoPaths) exec(query string, args ...any) {
	tp.t.Helper()
	for _, db := range tp.db {
		db.Exec(tp.t, query, args...)
	}
}

// fastCase is a close by credentials that closed a room before, with what
// the gateway expects of them from that close.
type fastCase struct {
	name            string
	userID, token   string
	loginExpiration time.Duration
	req             store.CloseRequest // Agent: what the gateway expects
	bypass          *bool              // the rate limit's assumption; nil: no rate limit
	wantFast        bool               // the close is the fast one (else it fell back)
}

// run closes c both ways and returns the two outcomes, and whether the
// fast path closed by itself.
func (tp *twoPaths) run(c fastCase) (outcomes [2]string, fast bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hashed := store.HashLoginToken(c.token)
	outcomes[pathOrdinary] = ordinaryClose(ctx, tp.st[pathOrdinary], c, hashed)
	res, err := tp.st[pathFast].FastClose(ctx, store.FastCloseRequest{
		CloseRequest: c.req, HashedToken: hashed, LoginExpiration: c.loginExpiration, BypassRateLimit: c.bypass,
	})
	switch {
	case err == nil:
		outcomes[pathFast] = "closed" + bypassNote(c.bypass, c.bypass != nil && *c.bypass)
		if res.RoundTrips != 1 {
			tp.t.Errorf("%s: the fast close took %d round trips", c.name, res.RoundTrips)
		}
		return outcomes, true
	case errors.Is(err, store.ErrNotFast):
		outcomes[pathFast] = ordinaryClose(ctx, tp.st[pathFast], c, hashed)
	default:
		outcomes[pathFast] = "error: " + err.Error()
	}
	return outcomes, false
}

// ordinaryClose is the handler's ordinary path for a recent closer, down
// to the outcome (with the bypass the rate limit would see, when it
// applies).
func ordinaryClose(ctx context.Context, st *store.Store, c fastCase, hashed string) string {
	creds, found, err := st.ReadCredentialsAndRoom(ctx, c.userID, hashed, c.req.Rid, c.req.VisitorToken)
	if err != nil {
		return "error: " + err.Error()
	}
	user, err := store.Verify(creds, c.userID, hashed, c.loginExpiration, st.Now())
	if err != nil {
		return "unauthorized"
	}
	note := bypassNote(c.bypass, user.BypassRateLimit)
	if !user.CanCloseRooms {
		return "forbidden" + note
	}
	req := c.req
	req.Agent = store.Agent{ID: user.ID, Username: user.Username, Name: user.Name}
	switch _, err := st.CloseRoom(ctx, req, found); {
	case err == nil:
		return "closed" + note
	case errors.Is(err, store.ErrInvalidToken), errors.Is(err, store.ErrInvalidRoom), errors.Is(err, store.ErrRoomClosed):
		return err.Error() + note
	default:
		return "error: " + err.Error()
	}
}

func bypassNote(limited *bool, bypass bool) string {
	if limited == nil {
		return ""
	}
	return fmt.Sprintf(" (bypasses the rate limit: %v)", bypass)
}

// sameRows compares every row of the tables a close writes.
func (tp *twoPaths) sameRows() {
	tp.t.Helper()
	for _, table := range []string{"rooms", "messages", "room_events"} {
		ordinary, fast := dumpTable(tp.t, tp.db[pathOrdinary], table), dumpTable(tp.t, tp.db[pathFast], table)
		if len(ordinary) != len(fast) {
			tp.t.Fatalf("%s: %d rows by the ordinary path, %d with the fast close", table, len(ordinary), len(fast))
		}
		for i := range ordinary {
			if !slices.Equal(ordinary[i], fast[i]) {
				tp.t.Errorf("%s row %d differs:\nordinary %q\nfast     %q", table, i, ordinary[i], fast[i])
			}
		}
	}
}

// seed gives both databases two agents, visitors and their rooms.
func (tp *twoPaths) seed(opened time.Time) {
	tp.exec("INSERT INTO users (id, username, name) VALUES ('agent1', 'user.agent1', 'Agent One'), ('agent2', 'bot.two', 'Bot Two')")
	tp.exec("INSERT INTO user_roles (user_id, role) VALUES ('agent1', 'livechat-agent'), ('agent2', 'livechat-agent'), ('agent2', 'bot')")
	tp.exec("INSERT INTO user_login_tokens (user_id, hashed_token, type, created_at) VALUES (?, ?, 'resume', ?), (?, ?, 'resume', ?)",
		"agent1", store.HashLoginToken("T1"), tp.now.Add(-time.Hour), "agent2", store.HashLoginToken("T2"), tp.now.Add(-time.Hour))
	tp.exec(`INSERT INTO livechat_visitors (id, token, username, name) VALUES
  ('V1', 'vtok1', 'guest-1', 'Guest 1'), ('V2', 'vtok2', NULL, NULL), ('V3<&>', 'vtok3', 'guest "3"', 'Guest 3'), ('V4', 'vtok4', 'guest-4', NULL)`)
	for _, r := range []struct {
		id, visitor, token string
		call               any
	}{
		{"PLAIN", "V1", "vtok1", nil}, {"CALL", "V1", "vtok1", "call-1"}, {"ANON", "V2", "vtok2", nil},
		{"BOT", "V1", "vtok1", nil}, {"BOTBYPASS", "V1", "vtok1", nil}, {"NOEVENTS", "V1", "vtok1", "call-none"},
		{"EMPTYCALL", "V1", "vtok1", ""}, {"FINEHOLD", "V1", "vtok1", "call-fine"}, {"NULLHOLD", "V1", "vtok1", "call-null"},
		{"PADDED", "V1", "vtok1", "call-padded"}, {"BADHOLD", "V1", "vtok1", "call-bad"}, {"ESCAPED", "V3<&>", "vtok3", nil},
		{"OTHER", "V4", "vtok4", nil}, {"TRAIL", "V1", "vtok1", nil},
		{"PAIR", "V1", "vtok1", "call-pair"}, {"LONE", "V1", "vtok1", "call-lone"}, {"HOLDONLY", "V1", "vtok1", "call-holdonly"},
		{"R1", "V1", "vtok1", nil}, {"R2", "V1", "vtok1", nil}, {"R3", "V1", "vtok1", nil}, {"R4", "V1", "vtok1", nil},
		{"R5", "V1", "vtok1", nil}, {"R6", "V1", "vtok1", nil}, {"R7", "V1", "vtok1", nil}, {"R8", "V1", "vtok1", nil},
		{"R9", "V1", "vtok1", nil}, {"R10", "V1", "vtok1", nil}, {"R11", "V1", "vtok1", nil}, {"R12", "V1", "vtok1", nil},
	} {
		tp.exec(`INSERT INTO rooms (id, t, name, open, ts, visitor_id, visitor_token, visitor_username, visitor_status,
  call_unique_id, msgs, tags, updated_at) VALUES (?, 'v', ?, TRUE, ?, ?, ?, 'guest', 'online', ?, 3, '["old"]', ?)`,
			r.id, r.id, opened, r.visitor, r.token, r.call, opened)
	}
	events := []struct {
		call, event string
		hold        any
		after       time.Duration
	}{
		{"call-1", "AgentConnect", "2.5", 10 * time.Second}, {"call-1", "Hold", "9", 20 * time.Second},
		{"call-1", "Unhold", nil, 35 * time.Second}, {"call-1", "Hold", nil, 50 * time.Second},
		{"call-fine", "AgentConnect", "2.0005", time.Second},
		{"call-null", "AgentConnect", nil, time.Second}, {"call-null", "AgentConnect", "7.125", 2 * time.Second},
		{"call-null", "Hold", nil, 3 * time.Second}, {"call-null", "Unhold", nil, 3 * time.Second},
		{"call-padded", "AgentConnect ", "1", time.Second}, {"call-padded", "Hold", nil, 4 * time.Second},
		{"call-padded", "AgentConnect", "3.25", 5 * time.Second},
		{"call-bad", "AgentConnect", "abc", time.Second},
		// The shapes the procedure reads without window functions: one
		// AgentConnect and a Hold/Unhold pair, one and a lone Hold, a pair
		// whose events share a time (ordered by id) without an AgentConnect.
		{"call-pair", "AgentConnect", "4.5", time.Second}, {"call-pair", "Unhold", nil, 12*time.Second + 345678*time.Microsecond},
		{"call-pair", "Hold", nil, 5*time.Second + 999*time.Microsecond},
		{"call-lone", "AgentConnect", "1", time.Second}, {"call-lone", "Hold", nil, 3*time.Second + 500*time.Microsecond},
		{"call-holdonly", "Unhold", nil, 7 * time.Second}, {"call-holdonly", "Hold", nil, 7 * time.Second},
	}
	for i, e := range events {
		tp.exec("INSERT INTO pbx_events (id, unique_id, event, call_unique_id, hold_time, ts) VALUES (?, ?, ?, ?, ?, ?)",
			fmt.Sprintf("p%02d", i), fmt.Sprintf("u%02d", i), e.event, e.call, e.hold, opened.Add(e.after))
	}
}

// Every store outcome, both ways: the same outcome and the same rows, and
// the fast close closes by itself exactly where every condition of the
// success holds as the gateway expects it (otherwise a test of both paths
// would pass with a fast close that never closes).
func TestFastCloseMatchesOrdinaryPath(t *testing.T) {
	tp := newTwoPaths(t)
	const exp = 90 * 24 * time.Hour
	tp.now = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	opened := time.Date(2026, 3, 1, 11, 58, 30, 250e6, time.UTC)
	tp.seed(opened)
	f, tr := false, true
	agent1 := store.Agent{ID: "agent1", Username: "user.agent1", Name: "Agent One"}
	agent2 := store.Agent{ID: "agent2", Username: "bot.two", Name: "Bot Two"}
	closeBy := func(a store.Agent, rid, token string) store.CloseRequest {
		return store.CloseRequest{Rid: rid, VisitorToken: token, Agent: a}
	}
	type step struct {
		before []string // statements run on both databases first
		clock  time.Duration
		fastCase
	}
	steps := []step{
		{fastCase: fastCase{name: "plain room, comment and tags", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: store.CloseRequest{Rid: "PLAIN", VisitorToken: "vtok1", Agent: agent1, Comment: "done ✓ <b>&\u2028", Tags: []string{"a", "<t>&", "é"}}}},
		{fastCase: fastCase{name: "call with PBX events, a trailing hold", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "CALL", "vtok1")}},
		{fastCase: fastCase{name: "call with one AgentConnect and a Hold/Unhold pair", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "PAIR", "vtok1")}},
		{fastCase: fastCase{name: "call with one AgentConnect and a lone Hold", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "LONE", "vtok1")}},
		{fastCase: fastCase{name: "call with two holds at one time and no AgentConnect", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "HOLDONLY", "vtok1")}},
		{fastCase: fastCase{name: "visitor without a username", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "ANON", "vtok2")}},
		{fastCase: fastCase{name: "no rate limit: the bypass is not asked", userID: "agent2", token: "T2", loginExpiration: exp, wantFast: true,
			req: closeBy(agent2, "BOT", "vtok1")}},
		{fastCase: fastCase{name: "a user who bypasses the rate limit", userID: "agent2", token: "T2", loginExpiration: exp, bypass: &tr, wantFast: true,
			req: closeBy(agent2, "BOTBYPASS", "vtok1")}},
		{fastCase: fastCase{name: "call id without events", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "NOEVENTS", "vtok1")}},
		{fastCase: fastCase{name: "empty call id", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "EMPTYCALL", "vtok1")}},
		{fastCase: fastCase{name: "first AgentConnect without a hold time", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "NULLHOLD", "vtok1")}},
		{fastCase: fastCase{name: "an event padded with a space counts as a hold", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(agent1, "PADDED", "vtok1")}},
		{fastCase: fastCase{name: "hold time with 4 decimals", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "FINEHOLD", "vtok1")}},
		{fastCase: fastCase{name: "hold time not a number", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "BADHOLD", "vtok1")}},
		{fastCase: fastCase{name: "visitor id and username that JSON escapes", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "ESCAPED", "vtok3")}},
		{fastCase: fastCase{name: "room closed", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "PLAIN", "vtok1")}},
		{fastCase: fastCase{name: "unknown visitor token", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "R1", "vtok-none")}},
		{fastCase: fastCase{name: "visitor token with a trailing space", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "R1", "vtok1 ")}},
		{fastCase: fastCase{name: "another visitor's room", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "OTHER", "vtok1")}},
		{fastCase: fastCase{name: "room id with a trailing space", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "TRAIL ", "vtok1")}},
		{fastCase: fastCase{name: "room id in another case", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "trail", "vtok1")}},
		{fastCase: fastCase{name: "empty room id", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(agent1, "", "vtok1")}},
		{before: []string{"INSERT INTO user_roles (user_id, role) VALUES ('agent1', 'admin')"},
			fastCase: fastCase{name: "bypass role granted since", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
				req: closeBy(agent1, "R1", "vtok1")}},
		{fastCase: fastCase{name: "bypass expected and still granted", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &tr, wantFast: true,
			req: closeBy(agent1, "R2", "vtok1")}},
		{before: []string{"DELETE FROM user_roles WHERE user_id = 'agent1' AND role = 'admin'"},
			fastCase: fastCase{name: "bypass role removed", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &tr,
				req: closeBy(agent1, "R3", "vtok1")}},
		{before: []string{"DELETE FROM permission_roles WHERE permission = 'api-bypass-rate-limit' AND role = 'bot'"},
			fastCase: fastCase{name: "bypass permission taken from the role", userID: "agent2", token: "T2", loginExpiration: exp, bypass: &tr,
				req: closeBy(agent2, "R4", "vtok1")}},
		{before: []string{"UPDATE users SET username = 'user.agent1.new' WHERE id = 'agent1'"},
			fastCase: fastCase{name: "username changed", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
				req: closeBy(agent1, "R5", "vtok1")}},
		{before: []string{"UPDATE users SET username = 'user.agent1', name = 'Agent One ' WHERE id = 'agent1'"},
			fastCase: fastCase{name: "name changed by a trailing space", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
				req: closeBy(agent1, "R6", "vtok1")}},
		{before: []string{"DELETE FROM users WHERE id = 'agent1'"},
			fastCase: fastCase{name: "users row gone", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
				req: closeBy(agent1, "R7", "vtok1")}},
		{fastCase: fastCase{name: "users row gone, expected so", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
			req: closeBy(store.Agent{ID: "agent1"}, "R8", "vtok1")}},
		{before: []string{"INSERT INTO permission_roles (permission, role) VALUES ('inbound-voip-calls', 'supervisor')",
			"INSERT INTO user_roles (user_id, role) VALUES ('agent1', 'supervisor')",
			"DELETE FROM user_roles WHERE user_id = 'agent1' AND role = 'livechat-agent'"},
			fastCase: fastCase{name: "permission through another role", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f, wantFast: true,
				req: closeBy(store.Agent{ID: "agent1"}, "R9", "vtok1")}},
		{before: []string{"DELETE FROM user_roles WHERE user_id = 'agent1' AND role = 'supervisor'"},
			fastCase: fastCase{name: "role revoked", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
				req: closeBy(store.Agent{ID: "agent1"}, "R9", "vtok1")}},
		{before: []string{"INSERT INTO user_roles (user_id, role) VALUES ('agent1', 'livechat-agent')",
			"DELETE FROM permission_roles WHERE permission = 'inbound-voip-calls' AND role = 'livechat-agent'"},
			fastCase: fastCase{name: "permission revoked from the role", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
				req: closeBy(store.Agent{ID: "agent1"}, "R9", "vtok1")}},
		{before: []string{"INSERT INTO permission_roles (permission, role) VALUES ('inbound-voip-calls', 'livechat-agent')"},
			fastCase: fastCase{name: "another user's token", userID: "agent2", token: "T1", loginExpiration: exp, bypass: &tr,
				req: closeBy(agent2, "R9", "vtok1")}},
		{fastCase: fastCase{name: "user id in another case", userID: "Agent1", token: "T1", loginExpiration: exp, bypass: &f,
			req: closeBy(store.Agent{ID: "Agent1"}, "R9", "vtok1")}},
		{before: []string{"DELETE FROM user_login_tokens WHERE user_id = 'agent1'"},
			fastCase: fastCase{name: "token revoked", userID: "agent1", token: "T1", loginExpiration: exp, bypass: &f,
				req: closeBy(store.Agent{ID: "agent1"}, "R9", "vtok1")}},
		// A resume token created exactly exp before the clock's next step,
		// whose microseconds are not whole.
		{before: []string{fmt.Sprintf("INSERT INTO user_login_tokens (user_id, hashed_token, type, created_at) VALUES ('agent1', '%s', 'resume', '%s')",
			store.HashLoginToken("T3"), tp.now.Add(time.Nanosecond-exp).Truncate(time.Millisecond).Add(time.Millisecond).Format("2006-01-02 15:04:05.000"))},
			fastCase: fastCase{name: "resume token just before its expiry", userID: "agent1", token: "T3", loginExpiration: exp, bypass: &f, wantFast: true,
				req: closeBy(store.Agent{ID: "agent1"}, "R12", "vtok1")}},
		{clock: time.Millisecond - 456789*time.Nanosecond,
			fastCase: fastCase{name: "resume token at its expiry", userID: "agent1", token: "T3", loginExpiration: exp, bypass: &f,
				req: closeBy(store.Agent{ID: "agent1"}, "R10", "vtok1")}},
		{fastCase: fastCase{name: "login_expiration 0", userID: "agent1", token: "T3", loginExpiration: 0, bypass: &f, wantFast: true,
			req: closeBy(store.Agent{ID: "agent1"}, "R10", "vtok1")}},
		{before: []string{fmt.Sprintf("UPDATE user_login_tokens SET type = 'personalAccessToken' WHERE hashed_token = '%s'", store.HashLoginToken("T3"))},
			fastCase: fastCase{name: "personal access token past the expiry", userID: "agent1", token: "T3", loginExpiration: exp, bypass: &f, wantFast: true,
				req: closeBy(store.Agent{ID: "agent1"}, "R11", "vtok1")}},
	}
	for i, s := range steps {
		for _, q := range s.before {
			tp.exec(q)
		}
		tp.now = tp.now.Add(s.clock)
		tp.id = fmt.Sprintf("MSG%02d", i)
		outcomes, fast := tp.run(s.fastCase)
		if outcomes[pathOrdinary] != outcomes[pathFast] {
			t.Errorf("%s: ordinary path %q, fast close %q", s.name, outcomes[pathOrdinary], outcomes[pathFast])
		}
		if fast != s.wantFast {
			t.Errorf("%s (%s): closed by the fast close alone %v, want %v", s.name, outcomes[pathFast], fast, s.wantFast)
		}
	}
	tp.sameRows()
}

// The conformance corpus's valid bodies, closed both ways by a recent
// closer, each with the room it names (when it names the seeded one)
// opened again first: the same outcomes and rows.
func TestFastCloseOnTheCorpus(t *testing.T) {
	tp := newTwoPaths(t)
	tp.now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tp.seed(tp.now.Add(-time.Minute))
	tp.exec("INSERT INTO livechat_visitors (id, token, username) VALUES ('VC', 'tok-1', 'guest-c')")
	for _, rid := range []string{"r-1", "ROOM1", "r"} {
		tp.exec(`INSERT INTO rooms (id, t, open, ts, visitor_token, call_unique_id, updated_at) VALUES (?, 'v', TRUE, ?, 'tok-1', 'call-1', ?)`,
			rid, tp.now.Add(-time.Minute), tp.now.Add(-time.Minute))
	}
	f := false
	valid, fastOnes := 0, 0
	for i, c := range corpus.Cases() {
		p, err := params.Parse(c.ContentType, c.Body)
		if err != nil {
			continue // answered before any close
		}
		valid++
		tp.exec("UPDATE rooms SET open = TRUE WHERE id IN ('r-1', 'ROOM1', 'r')")
		tp.id = fmt.Sprintf("C%03d", i)
		tp.now = tp.now.Add(time.Second)
		outcomes, fast := tp.run(fastCase{name: c.Name, userID: "agent1", token: "T1", loginExpiration: 0, bypass: &f,
			req: store.CloseRequest{Rid: p.Rid, VisitorToken: p.Token, Comment: p.Comment, Tags: p.Tags,
				Agent: store.Agent{ID: "agent1", Username: "user.agent1", Name: "Agent One"}}})
		if outcomes[pathOrdinary] != outcomes[pathFast] {
			t.Errorf("%s: ordinary path %q, fast close %q", c.Name, outcomes[pathOrdinary], outcomes[pathFast])
		}
		if fast {
			fastOnes++
		}
	}
	if valid < 100 || fastOnes < valid/4 {
		t.Fatalf("%d valid bodies, %d closed by the fast close: the corpus no longer exercises it", valid, fastOnes)
	}
	t.Logf("%d valid bodies, %d closed by the fast close alone", valid, fastOnes)
	tp.sameRows()
}

// Exactly one of many concurrent fast closes of a room closes it; the
// others change nothing and say ErrNotFast (the ordinary path then answers
// room-closed).
func TestFastCloseConcurrentExactlyOnce(t *testing.T) {
	tp := newTwoPaths(t)
	tp.now = time.Now().UTC()
	tp.seed(tp.now.Add(-time.Minute))
	st := tp.st[pathFast]
	tp.id = "MSGC" // only the winner writes a message
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := st.FastClose(ctx, store.FastCloseRequest{
				CloseRequest: store.CloseRequest{Rid: "R1", VisitorToken: "vtok1", Agent: store.Agent{ID: "agent1", Username: "user.agent1", Name: "Agent One"}},
				HashedToken:  store.HashLoginToken("T1"), LoginExpiration: 2 * time.Hour,
			})
			errs <- err
		}()
	}
	wins := 0
	for range 20 {
		switch err := <-errs; {
		case err == nil:
			wins++
		case !errors.Is(err, store.ErrNotFast):
			t.Errorf("unexpected error: %v", err)
		}
	}
	db := tp.db[pathFast]
	if wins != 1 || db.Count(t, "messages") != 1 || db.Count(t, "room_events") != 1 {
		t.Fatalf("%d wins, %d messages, %d outbox rows; want 1 each", wins, db.Count(t, "messages"), db.Count(t, "room_events"))
	}
}
