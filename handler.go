package rocketchatvoip

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/params"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/ratelimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

// Outcome names one row of the contract table (and the extra rows of the
// gateway's own). They are the values of {http.rocketchat_voip.outcome}.
const (
	OutcomeClosed          = "closed"
	OutcomeUnauthorized    = "unauthorized"
	OutcomeRateLimited     = "rate_limited"
	OutcomeInvalidParams   = "invalid_params"
	OutcomeForbidden       = "forbidden"
	OutcomeInvalidToken    = "invalid_token"
	OutcomeInvalidRoom     = "invalid_room"
	OutcomeRoomClosed      = "room_closed"
	OutcomeTooLarge        = "too_large"
	OutcomeUnreadableBody  = "unreadable_body"
	OutcomeUnavailable     = "unavailable"      // the database failed, or was slower than db_timeout, on a request that had a slot
	OutcomeOverloaded      = "overloaded"       // shed: the database slots stayed busy for all or most of db_timeout
	OutcomeBodyBudget      = "body_budget"      // shed: body_budget stayed in use for as long as a request waits for it
	OutcomeStale           = "stale"            // the data a sync keeps is older than max_staleness
	OutcomeUnknownUpstream = "unknown_upstream" // credentials unknown to MySQL, passed to the next handler (unknown_credentials upstream)
	OutcomeClientClosed    = "client_closed"    // the client hung up before the answer; nginx's 499
	OutcomeInternalError   = "internal_error"
)

// outcomes lists every Outcome, so that each metric series exists (at 0)
// from the start; TestMetrics checks that exactly these series exist.
var outcomes = []string{
	OutcomeClosed, OutcomeUnauthorized, OutcomeRateLimited, OutcomeInvalidParams, OutcomeForbidden,
	OutcomeInvalidToken, OutcomeInvalidRoom, OutcomeRoomClosed, OutcomeTooLarge, OutcomeUnreadableBody,
	OutcomeUnavailable, OutcomeOverloaded, OutcomeBodyBudget, OutcomeStale, OutcomeUnknownUpstream, OutcomeClientClosed,
	OutcomeInternalError,
}

// Placeholders set on every handled request.
const (
	placeholderOutcome = "http.rocketchat_voip.outcome"
	placeholderUserID  = "http.rocketchat_voip.user_id"
	placeholderRid     = "http.rocketchat_voip.rid"
)

// ServeHTTP answers POST <path>; everything else goes to next untouched. A
// handled request is never passed on, whatever its outcome.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method != http.MethodPost || r.URL.Path != h.Path || hasEncodedSlash(r.URL.RawPath) {
		return next.ServeHTTP(w, r)
	}
	if stale, err := h.serveIfStale(w, r, func() error { return next.ServeHTTP(w, r) }); stale {
		return err
	}
	return h.serveRoomClose(w, r, next)
}

// requestState is what one handled request learned, for the response, the
// placeholders and the log line.
type requestState struct {
	start   time.Time
	dbTime  time.Duration // time spent waiting on MySQL
	outcome string
	// authenticated: the credentials are known to be real (a recent
	// closer's, or checked by an earlier step), so the request waits for a
	// database slot ahead of those whose credentials are not.
	authenticated bool
	userID        string
	rid           string
	err           error
	// nextErr: what the next handler returned, when it answered the request
	// (outcome unknown_upstream).
	nextErr error
}

// reply is a handled request's answer.
type reply struct {
	status  int
	outcome string
	body    []byte
}

var (
	replyForbidden     = reply{http.StatusForbidden, OutcomeForbidden, bodyForbidden}
	replyInvalidToken  = reply{http.StatusBadRequest, OutcomeInvalidToken, bodyInvalidToken}
	replyInvalidRoom   = reply{http.StatusBadRequest, OutcomeInvalidRoom, bodyInvalidRoom}
	replyRoomClosed    = reply{http.StatusBadRequest, OutcomeRoomClosed, bodyRoomClosed}
	replyTooLarge      = reply{http.StatusRequestEntityTooLarge, OutcomeTooLarge, bodyTooLarge}
	replyUnreadable    = reply{http.StatusBadRequest, OutcomeUnreadableBody, bodyUnreadable}
	replyUnavailable   = reply{http.StatusServiceUnavailable, OutcomeUnavailable, bodyUnavailable}
	replyOverloaded    = reply{http.StatusServiceUnavailable, OutcomeOverloaded, bodyUnavailable}
	replyBodyBudget    = reply{http.StatusServiceUnavailable, OutcomeBodyBudget, bodyUnavailable}
	replyClientClosed  = reply{statusClientClosed, OutcomeClientClosed, nil}
	replyInternalError = reply{http.StatusInternalServerError, OutcomeInternalError, bodyInternalError}
)

func (h *Handler) serveRoomClose(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	st := &requestState{start: time.Now()}
	defer h.finish(r, st)
	rep := h.answer(w, r, st, next)
	st.outcome = rep.outcome
	if rep.outcome == OutcomeUnknownUpstream {
		return st.nextErr
	}
	writeJSON(w, rep.status, rep.body)
	return nil
}

// answer is roomClose with a panic turned into a 500.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, st *requestState, next caddyhttp.Handler) (rep reply) {
	defer func() {
		if rec := recover(); rec != nil {
			h.logger.Error("panic while handling room.close", zap.Any("panic", rec), zap.Stack("stack"))
			rep = replyInternalError
		}
	}()
	return h.roomClose(w, r, st, next)
}

// roomClose is the contract, in Rocket.Chat's order of checks: 413 first
// (its body parser runs before the route), then 401, 429, 400, 403 and the
// close. Each step answers the request by returning (reply, true).
//
// Only credentials that recently closed a room here have their body read
// first, so that credentials and room are read in one query, with one
// database slot. Any other request is authenticated and rate limited before
// its body is read: a 401 or 429 does not depend on the body once its
// Content-Length is within max_body, so a flood of made-up credentials
// costs one indexed query each and never the memory of its bodies
// (docs/contract.md, "Body reading").
func (h *Handler) roomClose(w http.ResponseWriter, r *http.Request, st *requestState, next caddyhttp.Handler) reply {
	if r.ContentLength > h.MaxBody {
		return replyTooLarge
	}
	userID, token := singleHeader(r.Header, "X-User-Id"), singleHeader(r.Header, "X-Auth-Token")
	if !store.Askable(userID, token) {
		// 401 with no query: these credentials can name no login token.
		return h.beforeBody(w, r, st, h.replyUnauthorized)
	}
	c := h.newCloseRequest(w, r, st, next, userID, store.HashLoginToken(token)) // the token itself goes no further
	defer c.end()
	if c.knownCloser {
		if rep, answered := c.readBody(); answered {
			return rep
		}
		if rep, answered := c.fastClose(); answered {
			return rep // 200 in one round trip, or 503
		}
	}
	if rep, answered := c.authenticate(); answered {
		return rep // 401, or passed on (unknown_credentials upstream)
	}
	if rep, answered := c.rateLimit(); answered {
		return rep // 429
	}
	if rep, answered := c.readBody(); answered {
		return rep // unless read first
	}
	if rep, answered := c.checkBody(); answered {
		return rep // 400 invalid-params
	}
	if rep, answered := c.checkPermission(); answered {
		return rep // 403
	}
	return c.closeRoom() // 200, or 400 for the visitor or the room
}

// closeRequest is one handled request on its way through roomClose's steps.
type closeRequest struct {
	h    *Handler
	w    http.ResponseWriter
	r    *http.Request
	st   *requestState
	db   *dbSession
	next caddyhttp.Handler

	userID, hashed string
	// knownCloser: the credentials recently closed a room here (they are
	// not yet checked: a 401 is still possible).
	knownCloser bool
	user        store.User // once authenticated

	body     heldBody // once read
	bodyRead bool
	p        params.Params
	invalid  error // the body's, answered in its turn
}

func (h *Handler) newCloseRequest(w http.ResponseWriter, r *http.Request, st *requestState, next caddyhttp.Handler, userID, hashed string) *closeRequest {
	c := &closeRequest{h: h, w: w, r: r, st: st, db: h.newDBSession(r, st), next: next, userID: userID, hashed: hashed}
	c.knownCloser = h.db.Closers().Has(userID, hashed)
	st.authenticated = c.knownCloser
	return c
}

// end gives back what the request holds: its database slot and its body's
// budget.
func (c *closeRequest) end() {
	c.db.letGo()
	c.body.release()
}

// readBody reads and parses the body, once. The database slot is not held
// while it arrives. A body that is not valid is answered in its turn, after
// the credentials and the rate limit.
func (c *closeRequest) readBody() (reply, bool) {
	if c.bodyRead {
		return reply{}, false
	}
	c.db.letGo()
	body, rep, answered := c.h.readBody(c.w, c.r, c.st, c.userID)
	if answered {
		return rep, true
	}
	c.body, c.bodyRead = body, true
	c.p, c.invalid = params.Parse(c.r.Header.Get("Content-Type"), body.bytes)
	return reply{}, false
}

// beforeBody answers rep, which came before the body was read, if it was
// not: the slot is given back first, since an unknown length is read to its
// end (beforeBody's own).
func (c *closeRequest) beforeBody(rep reply) (reply, bool) {
	if c.bodyRead {
		return rep, true
	}
	c.db.letGo()
	return c.h.beforeBody(c.w, c.r, c.st, rep), true
}

// authenticate is step 1: the credentials must name a live login token. A
// known closer's valid body has its room read in the same query.
func (c *closeRequest) authenticate() (reply, bool) {
	var err error
	rep, answered := c.db.withDatabase(func(ctx context.Context) (reply, bool) {
		if c.bodyRead && c.invalid == nil {
			c.user, err = c.db.authenticateWithRoom(ctx, c.userID, c.hashed, c.p)
		} else {
			c.user, err = c.db.authenticate(ctx, c.userID, c.hashed)
		}
		if err != nil && !errors.Is(err, store.ErrUnauthorized) {
			return c.db.failed(err), true
		}
		return reply{}, false
	})
	switch {
	case answered:
		return rep, true // the database failed, or the request was shed
	case err != nil && c.h.UnknownCredentials == UnknownCredentialsUpstream:
		return c.passOn()
	case err != nil:
		return c.beforeBody(c.h.replyUnauthorized)
	}
	c.st.userID, c.st.authenticated = c.user.ID, true
	return reply{}, false
}

// rateLimit is step 2: Rocket.Chat's API rate limit, with its headers as
// Rocket.Chat spells them.
func (c *closeRequest) rateLimit() (reply, bool) {
	limiter := c.h.limiter
	if limiter == nil || c.user.BypassRateLimit {
		return reply{}, false
	}
	d := limiter.Take(clientIP(c.r))
	setRateLimitHeaders(c.w, d)
	if d.Allowed {
		return reply{}, false
	}
	return c.beforeBody(reply{http.StatusTooManyRequests, OutcomeRateLimited, tooManyRequestsBody(d.RetryAfterSeconds(limiter.Now()))})
}

// setRateLimitHeaders sets the rate limit's headers as Rocket.Chat spells
// them.
func setRateLimitHeaders(w http.ResponseWriter, d ratelimit.Decision) {
	// Set directly: Header().Set would write X-Ratelimit-*.
	hdr := w.Header()
	hdr["X-RateLimit-Limit"] = []string{strconv.Itoa(d.Limit)}
	hdr["X-RateLimit-Remaining"] = []string{strconv.Itoa(d.Remaining)}
	hdr["X-RateLimit-Reset"] = []string{strconv.FormatInt(d.Reset.UnixMilli(), 10)}
}

// checkBody is step 3: the body must be valid.
func (c *closeRequest) checkBody() (reply, bool) {
	if c.invalid != nil {
		return reply{http.StatusBadRequest, OutcomeInvalidParams, invalidParamsBody(c.invalid)}, true
	}
	c.st.rid = c.p.Rid
	return reply{}, false
}

// checkPermission is step 4: the user must have inbound-voip-calls.
func (c *closeRequest) checkPermission() (reply, bool) {
	if !c.user.CanCloseRooms {
		return replyForbidden, true
	}
	return reply{}, false
}

// closeRoom is steps 5-8: visitor, room, close.
func (c *closeRequest) closeRoom() reply {
	rep, _ := c.db.withDatabase(func(ctx context.Context) (reply, bool) {
		err := c.db.closeRoom(ctx, store.CloseRequest{
			Rid:          c.p.Rid,
			VisitorToken: c.p.Token,
			Agent:        store.Agent{ID: c.user.ID, Username: c.user.Username, Name: c.user.Name},
			Tags:         c.p.Tags,
			Comment:      c.p.Comment,
		})
		switch {
		case err == nil:
			return reply{http.StatusOK, OutcomeClosed, successBody(c.p.Rid)}, true
		case errors.Is(err, store.ErrInvalidToken):
			return replyInvalidToken, true
		case errors.Is(err, store.ErrInvalidRoom):
			return replyInvalidRoom, true
		case errors.Is(err, store.ErrRoomClosed):
			return replyRoomClosed, true
		default:
			return c.db.failed(err), true
		}
	})
	return rep
}

// statusClientClosed is what the access log shows for a request whose client
// hung up before it was answered, as nginx logs it.
const statusClientClosed = 499

// finish sets the placeholders, counts the request and logs it: debug for
// every request, warn for a failed read, error for a database failure, and
// for requests shed under load or whose body stalled one warn line a second
// at most, with their count (an attack must not flood the log, nor page
// anyone about the database). Tokens are never logged; user and room ids are not secrets.
func (h *Handler) finish(r *http.Request, st *requestState) {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(placeholderOutcome, st.outcome)
		repl.Set(placeholderUserID, st.userID)
		repl.Set(placeholderRid, st.rid)
	}
	took := time.Since(st.start)
	observeRequest(st.outcome, took)
	if st.dbTime > 0 {
		metrics.dbDuration.Observe(st.dbTime.Seconds())
	}
	level, msg := zapcore.DebugLevel, "room.close handled"
	switch {
	case errors.Is(st.err, errDatabaseNotReady):
		// The pool warns about it every few seconds, not per request.
	case st.outcome == OutcomeOverloaded || st.outcome == OutcomeBodyBudget || errors.Is(st.err, errBodyStalled):
		h.shed.add(st.outcome)
	case st.outcome == OutcomeUnavailable:
		level, msg = zapcore.ErrorLevel, "room.close: database failure"
	case st.outcome == OutcomeClientClosed:
		level, msg = zapcore.InfoLevel, "room.close: the client closed the connection before the answer"
	case st.err != nil:
		level, msg = zapcore.WarnLevel, "room.close: request failed"
	}
	if ce := h.logger.Check(level, msg); ce != nil {
		ce.Write(
			zap.String("outcome", st.outcome),
			zap.String("user_id", st.userID),
			zap.String("rid", st.rid),
			zap.Duration("duration", took),
			zap.Duration("db_duration", st.dbTime),
			zap.Error(st.err),
		)
	}
}

// shedLog counts a handler's requests shed under load and logs them at most
// once a second per outcome, each line with the count since the last. It is
// the handler's, so that its lines go to the logger of the config that shed
// them; Cleanup writes what is still pending.
type shedLog struct {
	logger  *zap.Logger
	mu      sync.Mutex
	pending map[string]int // outcome -> requests shed and not yet logged
	last    time.Time      // when the last line was written
	due     bool           // a line is scheduled
}

const shedLogEvery = time.Second

func (s *shedLog) add(outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		s.pending = map[string]int{}
	}
	s.pending[outcome]++
	if s.due {
		return
	}
	if wait := shedLogEvery - time.Since(s.last); wait > 0 {
		s.due = true
		time.AfterFunc(wait, s.flush)
		return
	}
	s.flushLocked()
}

// flush writes the pending counts.
func (s *shedLog) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushLocked()
}

func (s *shedLog) flushLocked() {
	for outcome, n := range s.pending {
		msg := "room.close: requests shed, every database slot stayed busy for all or most of their db_timeout"
		switch outcome {
		case OutcomeBodyBudget:
			msg = "room.close: requests shed, body_budget stayed in use while they waited for it"
		case OutcomeUnreadableBody:
			msg = "room.close: requests answered 400, their clients sent no bytes of the body for db_timeout"
		}
		s.logger.Warn(msg, zap.String("outcome", outcome), zap.Int("requests", n))
	}
	clear(s.pending)
	s.last, s.due = time.Now(), false
}

// clientIP is Caddy's idea of the client address, which honours
// trusted_proxies.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// hasEncodedSlash reports a %2F in the request's escaped path. Go decodes it
// into URL.Path, but Rocket.Chat's router does not take it for a separator,
// so such a path is not room.close there and must not be here. Other escapes
// (room%2Eclose) decode to the same route in both.
func hasEncodedSlash(rawPath string) bool {
	return rawPath != "" && (strings.Contains(rawPath, "%2F") || strings.Contains(rawPath, "%2f"))
}

// singleHeader returns the one value of a credential header, or "" when it
// is missing or repeated: Node joins repeated values into "a, b", which names
// no user and no token, so Rocket.Chat answers 401.
func singleHeader(h http.Header, name string) string {
	if v := h[name]; len(v) == 1 {
		return v[0]
	}
	return ""
}
