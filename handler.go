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
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

// Outcome names one row of the contract table (and the extra rows of the
// gateway's own). They are the values of {http.rocketchat_voip.outcome}.
const (
	OutcomeClosed         = "closed"
	OutcomeUnauthorized   = "unauthorized"
	OutcomeRateLimited    = "rate_limited"
	OutcomeInvalidParams  = "invalid_params"
	OutcomeForbidden      = "forbidden"
	OutcomeInvalidToken   = "invalid_token"
	OutcomeInvalidRoom    = "invalid_room"
	OutcomeRoomClosed     = "room_closed"
	OutcomeTooLarge       = "too_large"
	OutcomeUnreadableBody = "unreadable_body"
	OutcomeUnavailable    = "unavailable"   // the database failed, or was slower than db_timeout, on a request that had a slot
	OutcomeOverloaded     = "overloaded"    // shed: the database slots stayed busy for all or most of db_timeout
	OutcomeBodyBudget     = "body_budget"   // shed: body_budget stayed in use for as long as a request waits for it
	OutcomeClientClosed   = "client_closed" // the client hung up before the answer; nginx's 499
	OutcomeInternalError  = "internal_error"
)

// outcomes lists every Outcome, so that each metric series exists (at 0)
// from the start; TestMetrics checks that exactly these series exist.
var outcomes = []string{
	OutcomeClosed, OutcomeUnauthorized, OutcomeRateLimited, OutcomeInvalidParams, OutcomeForbidden,
	OutcomeInvalidToken, OutcomeInvalidRoom, OutcomeRoomClosed, OutcomeTooLarge, OutcomeUnreadableBody,
	OutcomeUnavailable, OutcomeOverloaded, OutcomeBodyBudget, OutcomeClientClosed, OutcomeInternalError,
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
	h.serveRoomClose(w, r)
	return nil
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

func (h *Handler) serveRoomClose(w http.ResponseWriter, r *http.Request) {
	st := &requestState{start: time.Now()}
	defer h.finish(r, st)
	rep := h.answer(w, r, st)
	st.outcome = rep.outcome
	writeJSON(w, rep.status, rep.body)
}

// answer is roomClose with a panic turned into a 500.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, st *requestState) (rep reply) {
	defer func() {
		if rec := recover(); rec != nil {
			h.logger.Error("panic while handling room.close", zap.Any("panic", rec), zap.Stack("stack"))
			rep = replyInternalError
		}
	}()
	return h.roomClose(w, r, st)
}

// roomClose is the contract, in Rocket.Chat's order of checks: 413 first
// (its body parser runs before the route), then 401, 429, 400, 403 and the
// close.
//
// Only credentials that recently closed a room here have their body read
// first, so that credentials and room are read in one query. Any other
// request is authenticated before its body is read: a 401 or 429 does not
// depend on the body once its Content-Length is within max_body, so a flood
// of made-up credentials costs one indexed query each and never the memory
// of its bodies (docs/contract.md, "Body reading").
func (h *Handler) roomClose(w http.ResponseWriter, r *http.Request, st *requestState) reply {
	if r.ContentLength > h.MaxBody {
		return replyTooLarge
	}
	// Credentials that can name no login token cost no query.
	userID, token := singleHeader(r.Header, "X-User-Id"), singleHeader(r.Header, "X-Auth-Token")
	if !store.Askable(userID, token) {
		return h.beforeBody(w, r, st, h.replyUnauthorized)
	}
	hashed := store.HashLoginToken(token) // the token itself goes no further
	if h.db.Closers().Has(userID, hashed) {
		st.authenticated = true
		return h.closeBodyFirst(w, r, st, userID, hashed)
	}
	return h.closeAuthenticatedFirst(w, r, st, userID, hashed)
}

// closeBodyFirst reads the body, then authenticates (with the room in the
// same query when the body is valid) and closes, holding one database slot.
func (h *Handler) closeBodyFirst(w http.ResponseWriter, r *http.Request, st *requestState, userID, hashed string) reply {
	body, release, rep := h.readBody(w, r, st)
	if release == nil {
		return rep
	}
	defer release()
	// The body is parsed before any I/O so that, when it is valid, the
	// credentials and the room can be read together; its error is answered
	// in its turn, after authentication and the rate limit.
	p, invalid := params.Parse(r.Header.Get("Content-Type"), body)

	return h.withDatabase(r, st, func(ctx context.Context, db *dbSession) reply {
		user, err := db.authenticate(ctx, userID, hashed, p, invalid == nil)
		if errors.Is(err, store.ErrUnauthorized) {
			return h.replyUnauthorized
		} else if err != nil {
			return db.failed(err)
		}
		st.userID = user.ID
		if limited, rep := h.rateLimit(w, r, user); limited {
			return rep
		}
		if rep, ok := checkParams(st, user, p, invalid); !ok {
			return rep
		}
		return closeRoom(ctx, db, user, p)
	})
}

// closeAuthenticatedFirst authenticates and applies the rate limit before
// the body is read, then reads the body and, for a valid one from a user
// who may close rooms, reads the room and closes it. The database slot is
// not held while the body arrives.
func (h *Handler) closeAuthenticatedFirst(w http.ResponseWriter, r *http.Request, st *requestState, userID, hashed string) reply {
	var user store.User
	rep := h.withDatabase(r, st, func(ctx context.Context, db *dbSession) reply {
		var err error
		user, err = db.authenticate(ctx, userID, hashed, params.Params{}, false)
		if errors.Is(err, store.ErrUnauthorized) {
			return h.replyUnauthorized
		} else if err != nil {
			return db.failed(err)
		}
		return reply{}
	})
	if rep.outcome == OutcomeUnauthorized {
		return h.beforeBody(w, r, st, rep)
	} else if rep.outcome != "" {
		return rep
	}
	st.userID, st.authenticated = user.ID, true
	if limited, rep := h.rateLimit(w, r, user); limited {
		return h.beforeBody(w, r, st, rep)
	}

	body, release, rep := h.readBody(w, r, st)
	if release == nil {
		return rep
	}
	defer release()
	p, invalid := params.Parse(r.Header.Get("Content-Type"), body)
	if rep, ok := checkParams(st, user, p, invalid); !ok {
		return rep
	}
	// Both steps together stay within db_timeout.
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.DBTimeout)-st.dbTime)
	defer cancel()
	return h.withDatabase(r.WithContext(ctx), st, func(ctx context.Context, db *dbSession) reply {
		return closeRoom(ctx, db, user, p)
	})
}

// checkParams is steps 3 and 4: body validation, then permission.
func checkParams(st *requestState, user store.User, p params.Params, invalid error) (reply, bool) {
	if invalid != nil {
		return reply{http.StatusBadRequest, OutcomeInvalidParams, invalidParamsBody(invalid)}, false
	}
	st.rid = strings.Clone(p.Rid) // the log line outlives the body
	if !user.CanCloseRooms {
		return replyForbidden, false
	}
	return reply{}, true
}

// closeRoom is steps 5-8: visitor, room, close.
func closeRoom(ctx context.Context, db *dbSession, user store.User, p params.Params) reply {
	err := db.closeRoom(ctx, store.CloseRequest{
		Rid:          p.Rid,
		VisitorToken: p.Token,
		Agent:        store.Agent{ID: user.ID, Username: user.Username, Name: user.Name},
		Tags:         p.Tags,
		Comment:      p.Comment,
	})
	switch {
	case err == nil:
		return reply{http.StatusOK, OutcomeClosed, successBody(p.Rid)}
	case errors.Is(err, store.ErrInvalidToken):
		return replyInvalidToken
	case errors.Is(err, store.ErrInvalidRoom):
		return replyInvalidRoom
	case errors.Is(err, store.ErrRoomClosed):
		return replyRoomClosed
	default:
		return db.failed(err)
	}
}

// rateLimit applies Rocket.Chat's API rate limit to an authenticated user,
// setting its headers as Rocket.Chat spells them.
func (h *Handler) rateLimit(w http.ResponseWriter, r *http.Request, user store.User) (limited bool, rep reply) {
	if h.limiter == nil || user.BypassRateLimit {
		return false, reply{}
	}
	d := h.limiter.Take(clientIP(r))
	// Set directly: Header().Set would write X-Ratelimit-*.
	hdr := w.Header()
	hdr["X-RateLimit-Limit"] = []string{strconv.Itoa(d.Limit)}
	hdr["X-RateLimit-Remaining"] = []string{strconv.Itoa(d.Remaining)}
	hdr["X-RateLimit-Reset"] = []string{strconv.FormatInt(d.Reset.UnixMilli(), 10)}
	if d.Allowed {
		return false, reply{}
	}
	return true, reply{http.StatusTooManyRequests, OutcomeRateLimited, tooManyRequestsBody(d.RetryAfterSeconds(h.limiter.Now()))}
}

// statusClientClosed is what the access log shows for a request whose client
// hung up before it was answered, as nginx logs it.
const statusClientClosed = 499

// finish sets the placeholders, counts the request and logs it: debug for
// every request, warn for a failed read, error for a database failure, and
// for requests shed under load one warn line a second at most, with their
// count (an attack must not flood the log, nor page anyone about the
// database). Tokens are never logged; user and room ids are not secrets.
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
	case st.outcome == OutcomeOverloaded || st.outcome == OutcomeBodyBudget:
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
		msg := "room.close: requests shed, every database slot stayed busy for their whole db_timeout"
		if outcome == OutcomeBodyBudget {
			msg = "room.close: requests shed, body_budget stayed in use while they waited for it"
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
