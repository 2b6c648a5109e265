package rocketchatvoip

// These tests pin the HTTP logic of the request path (the order of checks,
// the exact answers, which statements run, the db_concurrency slot) with a
// stand-in for the database. What the database does is tested on a real
// server only: internal/store's tests and systemtest/.

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/closerhint"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dblimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/ratelimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

const (
	seamUserID       = "agent1"
	seamToken        = "AUTH-TOKEN-SECRET-1f9c"
	seamVisitorToken = "VISITOR-TOKEN-SECRET-8d2e"
	seamClientIP     = "192.0.2.1" // httptest.NewRequest's RemoteAddr
)

var seamNow = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// stubStore is a requestStore that answers from its fields and records the
// calls made to it (by the one request goroutine).
type stubStore struct {
	creds    store.Credentials
	readErr  error  // from ReadCredentials and ReadCredentialsAndRoom
	roomErr  error  // from ReadRoom
	closeErr error  // from CloseRoom
	panicIn  string // the method that panics
	block    bool   // ReadCredentials waits for its context to end
	// blockRoom: ReadRoom and ReadCredentialsAndRoom wait for their
	// context to end.
	blockRoom bool
	// onReadCredentials runs in ReadCredentials, before it answers.
	onReadCredentials func()

	calls []string
}

func (s *stubStore) called(name string) {
	s.calls = append(s.calls, name)
	if s.panicIn == name {
		panic("stub: " + name)
	}
}

func (s *stubStore) Now() time.Time { return seamNow }

func (s *stubStore) ReadCredentials(ctx context.Context, userID, hashedToken string) (store.Credentials, error) {
	s.called("ReadCredentials")
	if s.onReadCredentials != nil {
		s.onReadCredentials()
	}
	if s.block {
		<-ctx.Done()
		return store.Credentials{}, ctx.Err()
	}
	return s.creds, s.readErr
}

func (s *stubStore) ReadCredentialsAndRoom(ctx context.Context, userID, hashedToken, rid, visitorToken string) (store.Credentials, store.Found, error) {
	s.called("ReadCredentialsAndRoom")
	if s.blockRoom {
		<-ctx.Done()
		return store.Credentials{}, store.Found{}, ctx.Err()
	}
	return s.creds, store.Found{}, s.readErr
}

func (s *stubStore) ReadRoom(ctx context.Context, rid, visitorToken string) (store.Found, error) {
	s.called("ReadRoom")
	if s.blockRoom {
		<-ctx.Done()
		return store.Found{}, ctx.Err()
	}
	return store.Found{}, s.roomErr
}

func (s *stubStore) CloseRoom(ctx context.Context, req store.CloseRequest, f store.Found) (store.Result, error) {
	s.called("CloseRoom")
	if req.VisitorToken != seamVisitorToken || req.Agent.ID != seamUserID || req.Agent.Username != "agent.one" {
		return store.Result{}, errors.New("stub: the close asked for the wrong room or agent")
	}
	if s.closeErr != nil {
		return store.Result{RoundTrips: 3}, s.closeErr
	}
	return store.Result{RoundTrips: 5}, nil
}

func (s *stubStore) HasFastClose() bool { return false }

func (s *stubStore) FastClose(ctx context.Context, req store.FastCloseRequest) (store.Result, error) {
	s.called("FastClose")
	return store.Result{}, store.ErrNotFast
}

// stubDatabase is a database holding a stubStore; it counts how often the
// pool was held and let go.
type stubDatabase struct {
	store    *stubStore // nil: not prepared yet
	closing  bool       // Acquire refuses
	closers  *closerhint.Set
	acquired int
	done     int
}

func (d *stubDatabase) Acquire() bool {
	if d.closing {
		return false
	}
	d.acquired++
	return true
}
func (d *stubDatabase) Done()                { d.done++ }
func (d *stubDatabase) Closers() closerHints { return d.closers }
func (d *stubDatabase) Store() requestStore {
	if d.store == nil {
		return nil
	}
	return d.store
}

// credentialsOf is the row the database returns for the seam's agent.
func credentialsOf(canClose, bypass bool) store.Credentials {
	return store.Credentials{
		Found: true, UserID: seamUserID, HashedToken: store.HashLoginToken(seamToken), TokenType: store.TokenTypeResume,
		CreatedAt: seamNow.Add(-time.Hour), Username: sql.NullString{String: "agent.one", Valid: true}, Name: sql.NullString{String: "Agent One", Valid: true},
		CanCloseRooms: canClose, BypassRateLimit: bypass,
	}
}

// seamHandler is a Handler wired as Provision wires it, on db, with
// db_concurrency 1 and a rate limit of 5 a minute; logs go to the returned
// observer.
// configure, if given, sets fields of the config before its defaults.
func seamHandler(t *testing.T, db database, configure ...func(*Handler)) (*Handler, *observer.ObservedLogs) {
	t.Helper()
	initMetrics()
	core, logs := observer.New(zapcore.DebugLevel)
	h := &Handler{DSN: "stub", DBTimeout: caddy.Duration(300 * time.Millisecond), RateLimit: &RateLimit{Requests: 5, Window: caddy.Duration(time.Minute)}}
	for _, f := range configure {
		f(h)
	}
	h.applyDefaults()
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	h.wire(zap.New(core), db, dblimit.New(1, 1), ratelimit.New(h.RateLimit.Requests, time.Duration(h.RateLimit.Window)))
	return h, logs
}

// serve sends one request through ServeHTTP; next answers 599 so that a
// request passed on shows.
func serve(h *Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	next := nextFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(599); return nil })
	if err := h.ServeHTTP(w, r, next); err != nil {
		w.Code = -1
	}
	return w
}

type nextFunc func(http.ResponseWriter, *http.Request) error

func (f nextFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

func roomCloseRequest(userID, token, body string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, defaultPath, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	if userID != "" {
		r.Header.Set("X-User-Id", userID)
	}
	if token != "" {
		r.Header.Set("X-Auth-Token", token)
	}
	return r
}

const (
	seamValidBody = `{"rid":"ROOM1","token":"` + seamVisitorToken + `"}`
	seamBody401   = `{"status":"error","message":"You must be logged in to do this."}`
	seamBody503   = `{"success":false,"error":"service-unavailable"}`
	seamBodyRid   = `{"success":false,"error":"must have required property 'rid' [invalid-params]","errorType":"invalid-params"}`
	seamBody429   = `{"success":false,"error":"Error, too many requests. Please slow down. You must wait 60 seconds before trying this endpoint again. [error-too-many-requests]"}`
)

// The checks run in Rocket.Chat's order: 401, then 429, then 400 for the
// body, then 403, then the visitor, the room and the close; each answer is
// exact, only the statements its step needs run, and the slot and the pool
// are given back whatever the outcome.
func TestCheckOrder(t *testing.T) {
	unknown := store.Credentials{} // no such token
	cases := []struct {
		name          string
		userID, token string
		body          string
		stub          stubStore
		rateLimited   bool // the client has used up its window
		closing       bool // the pool is being closed
		unprepared    bool // the statements are not prepared yet
		status        int
		wantBody      string
		calls         []string
		noDB          bool // answered before the pool is held
		failure       bool // logged at error level, not debug
	}{
		{name: "no credentials", body: "{", status: 401, wantBody: seamBody401, noDB: true},
		{name: "a user id without a token", userID: seamUserID, body: seamValidBody, status: 401, wantBody: seamBody401, noDB: true},
		{name: "a token without a user id", token: seamToken, body: seamValidBody, status: 401, wantBody: seamBody401, noDB: true},
		{name: "a user id that is not UTF-8", userID: "agent\xff", token: seamToken, body: seamValidBody, status: 401, wantBody: seamBody401, noDB: true},
		{name: "an unknown token comes before the rate limit and the body", userID: seamUserID, token: seamToken, body: "{", rateLimited: true,
			stub: stubStore{creds: unknown}, status: 401, wantBody: seamBody401, calls: []string{"ReadCredentials"}},
		{name: "an expired token", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: func() store.Credentials {
				c := credentialsOf(true, false)
				c.CreatedAt = seamNow.Add(-defaultLoginExpiration)
				return c
			}()},
			status: 401, wantBody: seamBody401, calls: []string{"ReadCredentials"}},
		{name: "the rate limit comes before the body", userID: seamUserID, token: seamToken, body: "{}", rateLimited: true,
			stub: stubStore{creds: credentialsOf(false, false)}, status: 429, wantBody: seamBody429, calls: []string{"ReadCredentials"}},
		{name: "api-bypass-rate-limit is not limited", userID: seamUserID, token: seamToken, body: "{}", rateLimited: true,
			stub: stubStore{creds: credentialsOf(false, true)}, status: 400, wantBody: seamBodyRid, calls: []string{"ReadCredentials"}},
		{name: "the body comes before the permission", userID: seamUserID, token: seamToken, body: "{}",
			stub: stubStore{creds: credentialsOf(false, false)}, status: 400, wantBody: seamBodyRid, calls: []string{"ReadCredentials"}},
		{name: "no permission reads no room", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: credentialsOf(false, false)}, status: 403,
			wantBody: `{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}`, calls: []string{"ReadCredentials"}},
		{name: "no visitor has the token", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: credentialsOf(true, false), closeErr: store.ErrInvalidToken}, status: 400,
			wantBody: `{"success":false,"error":"invalid-token"}`, calls: []string{"ReadCredentials", "ReadRoom", "CloseRoom"}},
		{name: "no room of the visitor", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: credentialsOf(true, false), closeErr: store.ErrInvalidRoom}, status: 400,
			wantBody: `{"success":false,"error":"invalid-room"}`, calls: []string{"ReadCredentials", "ReadRoom", "CloseRoom"}},
		{name: "the room is closed", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: credentialsOf(true, false), closeErr: store.ErrRoomClosed}, status: 400,
			wantBody: `{"success":false,"error":"room-closed"}`, calls: []string{"ReadCredentials", "ReadRoom", "CloseRoom"}},
		{name: "closed", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: credentialsOf(true, false)}, status: 200,
			wantBody: `{"rid":"ROOM1","success":true}`, calls: []string{"ReadCredentials", "ReadRoom", "CloseRoom"}},
		{name: "the credentials' read fails", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{readErr: errors.New("stub: connection refused")}, status: 503, wantBody: seamBody503,
			calls: []string{"ReadCredentials"}, failure: true},
		{name: "the room's read fails", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: credentialsOf(true, false), roomErr: errors.New("stub: connection refused")}, status: 503, wantBody: seamBody503,
			calls: []string{"ReadCredentials", "ReadRoom"}, failure: true},
		{name: "the close fails", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: credentialsOf(true, false), closeErr: errors.New("stub: lock wait timeout")}, status: 503, wantBody: seamBody503,
			calls: []string{"ReadCredentials", "ReadRoom", "CloseRoom"}, failure: true},
		{name: "the database outlasts db_timeout", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{block: true}, status: 503, wantBody: seamBody503, calls: []string{"ReadCredentials"}, failure: true},
		{name: "the pool is closing", userID: seamUserID, token: seamToken, body: seamValidBody, closing: true,
			status: 503, wantBody: seamBody503, noDB: true, failure: true},
		// The pool warns about a database not yet in service every few
		// seconds; each request logs it at debug level only.
		{name: "the statements are not prepared yet", userID: seamUserID, token: seamToken, body: seamValidBody, unprepared: true,
			status: 503, wantBody: seamBody503},
		{name: "a panic is a 500", userID: seamUserID, token: seamToken, body: seamValidBody,
			stub: stubStore{creds: credentialsOf(true, false), panicIn: "CloseRoom"}, status: 500,
			wantBody: `{"success":false,"error":"internal-error"}`, calls: []string{"ReadCredentials", "ReadRoom", "CloseRoom"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := &stubDatabase{store: &c.stub, closing: c.closing, closers: closerhint.New()}
			if c.unprepared {
				db.store = nil
			}
			h, logs := seamHandler(t, db)
			if c.rateLimited {
				for range h.RateLimit.Requests {
					h.limiter.Take(seamClientIP)
				}
			}
			w := serve(h, roomCloseRequest(c.userID, c.token, c.body))
			if w.Code != c.status || w.Body.String() != c.wantBody {
				t.Fatalf("got %d %s\nwant %d %s", w.Code, w.Body.String(), c.status, c.wantBody)
			}
			for k, v := range map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache",
				"Content-Length": strconv.Itoa(len(c.wantBody))} {
				if got := w.Header().Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if c.status == 429 {
				if w.Header()["X-RateLimit-Limit"][0] != "5" || w.Header()["X-RateLimit-Remaining"][0] != "0" {
					t.Errorf("rate limit headers %v", w.Header())
				}
			}
			if !slices.Equal(c.stub.calls, c.calls) {
				t.Errorf("store calls %v, want %v", c.stub.calls, c.calls)
			}
			holds := 1
			switch {
			case c.noDB:
				holds = 0
			case slices.Contains(c.calls, "ReadRoom"):
				// Credentials not yet known here are authenticated before
				// the body is read; the room and the close hold the pool
				// (and a slot) a second time.
				holds = 2
			}
			expectSlotsFree(t, h, db, holds)
			level := zapcore.DebugLevel
			if c.failure {
				level = zapcore.ErrorLevel
			}
			expectLog(t, logs, level)
			if c.stub.panicIn != "" && logs.FilterMessage("panic while handling room.close").FilterLevelExact(zapcore.ErrorLevel).Len() != 1 {
				t.Error("the panic was not logged at error level")
			}
		})
	}
}

// expectSlotsFree checks that the requests held the pool holds times and
// let go of it as often, and that the db_concurrency slot (the only one) is
// free.
func expectSlotsFree(t *testing.T, h *Handler, db *stubDatabase, holds int) {
	t.Helper()
	if db.acquired != holds || db.done != holds {
		t.Errorf("pool held %d times and let go %d times, want %d", db.acquired, db.done, holds)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond) // a free slot is taken at once
	defer cancel()
	if err := h.dbLimit.Acquire(ctx); err != nil {
		t.Errorf("the db_concurrency slot was not given back")
		return
	}
	h.dbLimit.Release(0, 0)
}

// expectLog checks the line a request logs at its end (its level), and that
// no line shows a token.
func expectLog(t *testing.T, logs *observer.ObservedLogs, level zapcore.Level) {
	t.Helper()
	var lines []observer.LoggedEntry
	for _, e := range logs.All() {
		if strings.HasPrefix(e.Message, "room.close") {
			lines = append(lines, e)
		}
		for _, f := range e.Context {
			s := f.String
			if f.Interface != nil {
				if err, ok := f.Interface.(error); ok {
					s += err.Error()
				}
			}
			if strings.Contains(s, seamToken) || strings.Contains(s, seamVisitorToken) || strings.Contains(s, store.HashLoginToken(seamToken)) {
				t.Errorf("a log line shows a token: %s %s=%s", e.Message, f.Key, s)
			}
		}
	}
	if len(lines) != 1 || lines[0].Level != level {
		t.Errorf("log lines %+v, want one at %v", lines, level)
	}
}

// compat chooses the 401 body: Rocket.Chat 6's by default, 7's with
// compat 7, whether the credentials cost a query or not.
func TestUnauthorizedBodyFollowsCompat(t *testing.T) {
	for compat, want := range map[int]string{
		0: seamBody401,
		6: seamBody401,
		7: `{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}`,
	} {
		stub := &stubStore{}
		h, _ := seamHandler(t, &stubDatabase{store: stub, closers: closerhint.New()}, func(h *Handler) { h.Compat = compat })
		for _, r := range []*http.Request{roomCloseRequest("", "", seamValidBody), roomCloseRequest(seamUserID, seamToken, seamValidBody)} {
			if w := serve(h, r); w.Code != 401 || w.Body.String() != want {
				t.Errorf("compat %d: got %d %s, want 401 %s", compat, w.Code, w.Body.String(), want)
			}
		}
		if !slices.Equal(stub.calls, []string{"ReadCredentials"}) {
			t.Errorf("compat %d: store calls %v", compat, stub.calls)
		}
	}
}

// A request whose db_concurrency slot does not come free within db_timeout
// gets 503 without a statement run: shed (overloaded), not a database
// failure, so its only lines are the debug one and, within a second, a
// warning that counts it.
func TestWaitingForASlotTimesOut(t *testing.T) {
	stub := &stubStore{creds: credentialsOf(true, false)}
	db := &stubDatabase{store: stub, closers: closerhint.New()}
	h, logs := seamHandler(t, db)
	if err := h.dbLimit.Acquire(context.Background()); err != nil { // another request has the only slot
		t.Fatal(err)
	}
	start := time.Now()
	w := serve(h, roomCloseRequest(seamUserID, seamToken, seamValidBody))
	if w.Code != 503 || w.Body.String() != seamBody503 || len(stub.calls) != 0 {
		t.Fatalf("got %d %s, calls %v; want 503 and none", w.Code, w.Body.String(), stub.calls)
	}
	if took := time.Since(start); took < time.Duration(h.DBTimeout) {
		t.Fatalf("answered after %v, before db_timeout %v", took, time.Duration(h.DBTimeout))
	}
	h.dbLimit.Release(0, 0)
	expectSlotsFree(t, h, db, 1)
	shedLines := func() []observer.LoggedEntry {
		return logs.FilterMessageSnippet("requests shed").FilterField(zap.String("outcome", OutcomeOverloaded)).All()
	}
	for deadline := time.Now().Add(3 * shedLogEvery); len(shedLines()) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
	}
	if lines := shedLines(); len(lines) != 1 || lines[0].Level != zapcore.WarnLevel || lines[0].ContextMap()["requests"] != int64(1) {
		t.Fatalf("shed lines %+v, want one warning counting 1 request", lines)
	}
	if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 0 {
		t.Fatalf("%d error lines for a shed request", n)
	}
}

// A client that hangs up while its request waits on the database is not a
// database failure: 499, no body, logged at info.
func TestClientGoneIsNotADatabaseFailure(t *testing.T) {
	stub := &stubStore{block: true}
	db := &stubDatabase{store: stub, closers: closerhint.New()}
	h, logs := seamHandler(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	r := roomCloseRequest(seamUserID, seamToken, seamValidBody).WithContext(ctx)
	time.AfterFunc(20*time.Millisecond, cancel)
	w := serve(h, r)
	if w.Code != statusClientClosed || w.Body.Len() != 0 {
		t.Fatalf("got %d %q, want 499 and no body", w.Code, w.Body.String())
	}
	expectSlotsFree(t, h, db, 1)
	expectLog(t, logs, zapcore.InfoLevel)
}

// Credentials that closed a room read the next room in the same query as
// the credentials; credentials that lost the permission are forgotten.
func TestCloserHintChoosesTheQuery(t *testing.T) {
	stub := &stubStore{creds: credentialsOf(true, false)}
	db := &stubDatabase{store: stub, closers: closerhint.New()}
	h, _ := seamHandler(t, db)
	h.RateLimit.Off, h.limiter = true, nil
	steps := []struct {
		name     string
		canClose bool
		body     string
		status   int
		calls    []string
	}{
		{"first close: credentials, then the room", true, seamValidBody, 200, []string{"ReadCredentials", "ReadRoom", "CloseRoom"}},
		{"next close: both in one query", true, seamValidBody, 200, []string{"ReadCredentialsAndRoom", "CloseRoom"}},
		{"an invalid body needs no room", true, "{}", 400, []string{"ReadCredentials"}},
		{"the permission is gone", false, seamValidBody, 403, []string{"ReadCredentialsAndRoom"}},
		{"forgotten: credentials alone again", false, seamValidBody, 403, []string{"ReadCredentials"}},
	}
	for _, s := range steps {
		stub.calls, stub.creds = nil, credentialsOf(s.canClose, false)
		w := serve(h, roomCloseRequest(seamUserID, seamToken, s.body))
		if w.Code != s.status || !slices.Equal(stub.calls, s.calls) {
			t.Fatalf("%s: got %d, calls %v; want %d, %v", s.name, w.Code, stub.calls, s.status, s.calls)
		}
	}
	expectSlotsFree(t, h, db, len(steps)+1) // the first close holds it twice: credentials, then room and close
}

// Everything but POST of the exact path goes to the next handler, and no
// statement runs for it.
func TestOtherRequestsPassThrough(t *testing.T) {
	stub := &stubStore{creds: credentialsOf(true, false)}
	db := &stubDatabase{store: stub, closers: closerhint.New()}
	h, _ := seamHandler(t, db)
	for _, c := range []struct{ method, target string }{
		{http.MethodGet, defaultPath},
		{http.MethodPut, defaultPath},
		{http.MethodPost, defaultPath + "/"},
		{http.MethodPost, "/api/v1/voip/room.Close"},
		{http.MethodPost, "/api/v1/voip%2Froom.close"},
		{http.MethodPost, "/api/v1/livechat/room.close"},
	} {
		r := httptest.NewRequest(c.method, c.target, strings.NewReader(seamValidBody))
		r.Header.Set("X-User-Id", seamUserID)
		r.Header.Set("X-Auth-Token", seamToken)
		if w := serve(h, r); w.Code != 599 {
			t.Errorf("%s %s: answered %d, want it passed on", c.method, c.target, w.Code)
		}
	}
	if len(stub.calls) != 0 || db.acquired != 0 {
		t.Fatalf("passed-on requests used the database: %v, held %d times", stub.calls, db.acquired)
	}
}

// A request that waited for its slot longer than it then held it, and ran
// out of db_timeout on the database, is shed (overloaded), not a database
// failure: no error line, and the adaptive bound is not halved. This holds
// for a known closer (one slot held for the whole request) and for a first
// close, whose room is read with a second slot after its body: there the
// time left of db_timeout is the second slot's budget, which the client's
// context knows nothing of.
func TestStarvedForASlotIsShedNotFailed(t *testing.T) {
	for _, known := range []bool{true, false} {
		name := map[bool]string{true: "a known closer", false: "a first close"}[known]
		t.Run(name, func(t *testing.T) {
			stub := &stubStore{creds: credentialsOf(true, false), blockRoom: true}
			db := &stubDatabase{store: stub, closers: closerhint.New()}
			h, logs := seamHandler(t, db)
			// Two slots, the bound above its floor of one, so that a
			// failure would show as the bound halved.
			h.dbLimit = dblimit.New(1, 2)
			h.dbLimit.SetBounds(2, 2)
			h.dbLimit.SetBounds(1, 2)
			// Others take both slots and keep them for most of db_timeout,
			// so the room's read waits long and then runs into the deadline.
			holdBriefly := func() { time.AfterFunc(230*time.Millisecond, func() { h.dbLimit.Release(0, 0) }) }
			take := func() {
				if err := h.dbLimit.Acquire(context.Background()); err != nil {
					t.Error(err)
					return
				}
				holdBriefly()
			}
			if known {
				db.closers.Add(seamUserID, store.HashLoginToken(seamToken))
				take()
				take()
			} else {
				// While the request holds one slot to read its credentials,
				// another request takes the free one and a third queues
				// for the request's own.
				stub.onReadCredentials = func() {
					take()
					go take()
					for h.dbLimit.Waiting() == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			}
			w := serve(h, roomCloseRequest(seamUserID, seamToken, seamValidBody))
			if w.Code != 503 || w.Body.String() != seamBody503 {
				t.Fatalf("got %d %s, want 503 %s", w.Code, w.Body.String(), seamBody503)
			}
			entries := logs.FilterMessage("room.close handled").All()
			if len(entries) != 1 || entries[0].ContextMap()["outcome"] != OutcomeOverloaded {
				t.Fatalf("logged %+v, want one debug line with outcome overloaded", logs.All())
			}
			if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 0 {
				t.Fatalf("%d error lines for a shed request: %+v", n, logs.All())
			}
			if got := h.dbLimit.Limit(); got != 2 {
				t.Fatalf("the bound is %d after a shed request, want 2 (not halved)", got)
			}
		})
	}
}

// A body's budget is taken as its bytes arrive, not from the Content-Length
// the client announces: a request announcing max_body and sending nothing
// holds one first step, and everything goes back once it is answered.
func TestBodyBudgetTakenAsBytesArrive(t *testing.T) {
	stub := &stubStore{creds: credentialsOf(true, false)}
	db := &stubDatabase{store: stub, closers: closerhint.New()}
	h, _ := seamHandler(t, db)
	db.closers.Add(seamUserID, store.HashLoginToken(seamToken)) // a known closer: the body comes first
	body := seamValidBody[:len(seamValidBody)-1] + `,"options":{"comment":"` + strings.Repeat("c", 200<<10) + `"}}`
	pr, pw := io.Pipe()
	r := roomCloseRequest(seamUserID, seamToken, "")
	r.Body, r.ContentLength = pr, int64(len(body))
	answered := make(chan *httptest.ResponseRecorder)
	go func() { answered <- serve(h, r) }()
	for bodies.budget.Used() == 0 {
		time.Sleep(time.Millisecond)
	}
	if got := bodies.budget.Used(); got != firstBodyStep {
		t.Fatalf("a body of which nothing arrived holds %d bytes of the budget, want %d", got, firstBodyStep)
	}
	if _, err := io.WriteString(pw, body); err != nil {
		t.Fatal(err)
	}
	w := <-answered
	if w.Code != 200 || w.Body.String() != `{"rid":"ROOM1","success":true}` {
		t.Fatalf("got %d %s", w.Code, w.Body.String())
	}
	if got := bodies.budget.Used(); got != 0 {
		t.Fatalf("%d bytes of the budget still held after the answer", got)
	}
}
