package rocketchatvoip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/edgevoip/caddy-rocketchat-voip/auth"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/params"
	"github.com/edgevoip/caddy-rocketchat-voip/roomstore"
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
	OutcomeUnavailable    = "unavailable"
	OutcomeClientClosed   = "client_closed" // the client hung up before the answer; nginx's 499
	OutcomeInternalError  = "internal_error"
)

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
	userID  string
	rid     string
	err     error
}

func (h *Handler) serveRoomClose(w http.ResponseWriter, r *http.Request) {
	st := &requestState{start: time.Now()}
	wrote := false
	respond := func(status int, outcome string, body []byte) {
		st.outcome = outcome
		wrote = true
		writeJSON(w, status, body)
	}
	defer func() {
		if rec := recover(); rec != nil {
			h.logger.Error("panic while handling room.close", zap.Any("panic", rec), zap.Stack("stack"))
			if !wrote {
				respond(http.StatusInternalServerError, OutcomeInternalError, bodyInternalError)
			}
		}
		h.finish(r, st)
	}()

	body, err := readBody(w, r, h.MaxBody)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			respond(http.StatusRequestEntityTooLarge, OutcomeTooLarge, bodyTooLarge)
		} else {
			st.err = err
			respond(http.StatusBadRequest, OutcomeUnreadableBody, bodyUnreadable)
		}
		return
	}

	// Credentials that can name no login token cost no query.
	userID, token := singleHeader(r.Header, "X-User-Id"), singleHeader(r.Header, "X-Auth-Token")
	if !auth.Askable(userID, token) {
		respond(http.StatusUnauthorized, OutcomeUnauthorized, h.unauthorized)
		return
	}

	if !h.pool.acquire() {
		// Only a request of a config already cleaned up, whose DSN no newer
		// config uses, gets here.
		respond(http.StatusServiceUnavailable, OutcomeUnavailable, bodyUnavailable)
		return
	}
	defer h.pool.release()
	stores := h.pool.stores.Load()
	if stores == nil {
		// The schema gate has not prepared this pool yet (the config is
		// still starting).
		respond(http.StatusServiceUnavailable, OutcomeUnavailable, bodyUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.DBTimeout))
	defer cancel()

	// The body is parsed first (no I/O) so that, when it is valid, one query
	// reads the credentials, the permissions and the room together; its
	// error is answered in its turn, after authentication and the limiter.
	p, invalid := params.Parse(r.Header.Get("Content-Type"), body)
	hashed := auth.HashLoginToken(token)
	dbStart := time.Now()
	// Only so many requests work on the database at once (db_concurrency,
	// adapted to the database's round-trip time); the rest wait here, within
	// db_timeout. A database serves a few concurrent requests best and
	// loses throughput to contention past that.
	if err := h.dbLimit.Acquire(ctx); err != nil {
		st.dbTime += time.Since(dbStart)
		st.err = fmt.Errorf("waiting for a database slot: %w", err)
		h.respondDatabaseError(r, respond)
		return
	}
	slotFrom, roundTrips := time.Now(), 0
	defer func() {
		switch st.outcome {
		case OutcomeUnavailable:
			h.dbLimit.ReleaseFailed()
		case OutcomeRoomClosed: // read alone, or a transaction that found it closed: unknown
			h.dbLimit.Release(0, 0)
		default:
			h.dbLimit.Release(time.Since(slotFrom), roundTrips)
		}
	}()
	var (
		creds    auth.Credentials
		found    roomstore.Found
		roomRead bool
	)
	// Credentials that recently closed a room read the room in the same
	// query; all others (unknown tokens above all) take the cheaper query
	// that a 401 or a 403 needs, and read the room later if they get there.
	if invalid == nil && h.pool.closers.Has(userID, hashed) {
		creds, found, err = stores.rooms.ReadWithCredentials(ctx, userID, hashed, p.Rid, p.Token)
		roomRead = true
	} else {
		creds, err = stores.auth.Read(ctx, userID, hashed)
	}
	st.dbTime += time.Since(dbStart)
	if err != nil {
		st.err = err
		h.respondDatabaseError(r, respond)
		return
	}
	roundTrips++

	// 1. authentication
	user, err := stores.auth.Verify(creds, userID, hashed, time.Duration(h.LoginExpiration))
	if err != nil {
		h.pool.closers.Remove(userID, hashed)
		respond(http.StatusUnauthorized, OutcomeUnauthorized, h.unauthorized)
		return
	}
	st.userID = user.ID
	if user.CanCloseRooms {
		h.pool.closers.Add(userID, hashed)
	} else {
		h.pool.closers.Remove(userID, hashed)
	}

	// 2. rate limit, counted only for authenticated requests
	if h.limiter != nil && !user.BypassRateLimit {
		d := h.limiter.Take(clientIP(r))
		// Set as Rocket.Chat spells them; Header().Set would write X-Ratelimit-*.
		hdr := w.Header()
		hdr["X-RateLimit-Limit"] = []string{strconv.Itoa(d.Limit)}
		hdr["X-RateLimit-Remaining"] = []string{strconv.Itoa(d.Remaining)}
		hdr["X-RateLimit-Reset"] = []string{strconv.FormatInt(d.Reset.UnixMilli(), 10)}
		if !d.Allowed {
			respond(http.StatusTooManyRequests, OutcomeRateLimited, tooManyRequestsBody(d.RetryAfterSeconds(h.limiter.Now())))
			return
		}
	}

	// 3. body validation
	if invalid != nil {
		respond(http.StatusBadRequest, OutcomeInvalidParams, invalidParamsBody(invalid))
		return
	}
	st.rid = p.Rid

	// 4. permission
	if !user.CanCloseRooms {
		respond(http.StatusForbidden, OutcomeForbidden, bodyForbidden)
		return
	}

	// 5-8. visitor, room, close
	req := roomstore.CloseRequest{
		Rid:          p.Rid,
		VisitorToken: p.Token,
		Agent:        roomstore.Agent{ID: user.ID, Username: user.Username, Name: user.Name},
		Tags:         p.Tags,
		Comment:      p.Comment,
	}
	dbStart = time.Now()
	if !roomRead {
		if found, err = stores.rooms.Read(ctx, p.Rid, p.Token); err == nil {
			roundTrips++
		}
	}
	if err == nil {
		if _, err = stores.rooms.CloseFound(ctx, req, found); err == nil {
			roundTrips += 5 // BEGIN, UPDATE, two INSERTs, COMMIT
		}
	}
	st.dbTime += time.Since(dbStart)
	switch {
	case err == nil:
		respond(http.StatusOK, OutcomeClosed, successBody(p.Rid))
	case errors.Is(err, roomstore.ErrInvalidToken):
		respond(http.StatusBadRequest, OutcomeInvalidToken, bodyInvalidToken)
	case errors.Is(err, roomstore.ErrInvalidRoom):
		respond(http.StatusBadRequest, OutcomeInvalidRoom, bodyInvalidRoom)
	case errors.Is(err, roomstore.ErrRoomClosed):
		respond(http.StatusBadRequest, OutcomeRoomClosed, bodyRoomClosed)
	default:
		st.err = err
		h.respondDatabaseError(r, respond)
	}
}

// statusClientClosed is what the access log shows for a request whose client
// hung up before it was answered, as nginx logs it.
const statusClientClosed = 499

// respondDatabaseError answers a request whose database work failed: 503,
// unless the failure is only the client hanging up (its context was
// cancelled), which says nothing about the database.
func (h *Handler) respondDatabaseError(r *http.Request, respond func(int, string, []byte)) {
	if errors.Is(r.Context().Err(), context.Canceled) {
		respond(statusClientClosed, OutcomeClientClosed, nil)
		return
	}
	respond(http.StatusServiceUnavailable, OutcomeUnavailable, bodyUnavailable)
}

// finish sets the placeholders, counts the request and logs it: debug for
// every request, warn for a failed read, error for a database failure. Tokens
// are never logged; user and room ids are not secrets.
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

// readBody reads at most max bytes of the body; a longer body is an
// *http.MaxBytesError. (A zero-copy read through unsafe was measured at
// about 100 ns less per request, against the tens of microseconds of the
// database work that follows: not worth unsafe.)
func readBody(w http.ResponseWriter, r *http.Request, max int64) (string, error) {
	if r.ContentLength > max {
		return "", &http.MaxBytesError{Limit: max}
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	return string(b), err
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
