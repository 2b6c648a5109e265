package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
)

// FastCloseProcedure is migration 0006's procedure: a close in one round
// trip for credentials that closed a room recently. It closes the room only
// when every condition of a success holds, as the gateway expects it, and
// otherwise changes nothing and says so (ErrNotFast); the caller then takes
// the ordinary path, which decides the exact answer.
const (
	FastCloseProcedure = "rocketchat_voip_fast_close"
	callFastCloseSQL   = "CALL " + FastCloseProcedure + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

// ErrNotFast is FastClose's answer when some condition of a success did not
// hold as expected (a token revoked or expired, a role or permission
// changed, another visitor or room, a room closed, a value the procedure
// cannot write as Go would), or the server refused the CALL: nothing was
// written, and the ordinary path decides the answer.
var ErrNotFast = errors.New("the fast close does not apply: nothing written")

// maxFastParam is the width of the fast procedure's string parameters; a
// longer value names no row, and the ordinary path says which answer that is.
const maxFastParam = 1024

// FastCloseRequest is a close by credentials that closed a room recently,
// with what the gateway expects of them.
type FastCloseRequest struct {
	CloseRequest // Agent: the user as last read, Username and Name "" for NULL
	HashedToken  string
	// LoginExpiration as configured: a resume token older than this has
	// expired (0: never).
	LoginExpiration time.Duration
	// BypassRateLimit, when not nil, is whether the user's roles grant
	// api-bypass-rate-limit, as the rate limit applied before the close
	// assumed; nil when no rate limit applies, so that it changes nothing.
	BypassRateLimit *bool
}

// HasFastClose reports whether FastClose can close rooms; without it,
// FastClose is always ErrNotFast.
func (s *Store) HasFastClose() bool { return s.callFastClose != nil }

// FastClose closes req's room in one CALL when every condition of the
// success answer holds: ErrNotFast when one does not (nothing written), or
// a database error after which, as for the CALL of CloseRoom, nothing was
// written unless it wraps dbconnect.ErrCommitOutcomeUnknown. The values Go
// decides (time, message id, message, tags, the payload's frame) are the
// ones CloseRoom would write; those that come from the room are written by
// the procedure as CloseRoom derives them (see migration 0006).
func (s *Store) FastClose(ctx context.Context, req FastCloseRequest) (Result, error) {
	if s.callFastClose == nil || !fastAskable(req) {
		return Result{}, ErrNotFast
	}
	now := s.now().UTC()
	var createdAfter any // NULL: no expiry
	if req.LoginExpiration > 0 {
		// Verify accepts a resume token while now is before created_at +
		// LoginExpiration, that is created_at after now - LoginExpiration.
		// created_at has whole microseconds, so comparing with the bound
		// truncated to microseconds decides the same.
		bound := now.Add(-req.LoginExpiration).Truncate(time.Microsecond)
		if bound.Year() < 1000 { // before every DATETIME: every created_at is after it
			bound = time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC)
		}
		createdAfter = bound
	}
	now = now.Truncate(time.Millisecond)
	res := Result{MessageID: s.newID(), ClosedAt: now}
	w := newCloseWrite(req.CloseRequest, now, res.MessageID)
	head, middle, tail, err := payloadFrame(&w)
	if err != nil {
		return Result{}, err
	}
	var bypass any // NULL: not checked
	if req.BypassRateLimit != nil {
		bypass = *req.BypassRateLimit
	}
	var timeLeft sql.NullInt64 // NULL: no bound
	if deadline, ok := ctx.Deadline(); ok {
		timeLeft = sql.NullInt64{Int64: time.Until(deadline).Microseconds(), Valid: true}
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err // not sent
	}
	res.RoundTrips = 1
	_, err = s.callFastClose.ExecContext(ctx,
		req.Agent.ID, req.HashedToken, createdAfter, req.Agent.Username, req.Agent.Name, bypass,
		req.Rid, req.VisitorToken, now, w.messageID, w.tags, w.messageType, w.msg,
		head, middle, tail, timeLeft,
	)
	switch err = procedureError(dbconnect.CommitError(err)); {
	case err == nil:
		return res, nil
	case errors.Is(err, errProcedureTimedOut), errors.Is(err, dbconnect.ErrCommitOutcomeUnknown):
		return Result{RoundTrips: 1}, err
	default:
		// The server's own error (the procedure rolled back before it
		// answered: a deadlock, a lock wait, a refused write, its
		// not-fast), or a connection lost before the CALL was sent.
		return Result{RoundTrips: 1}, notFast(err)
	}
}

func notFast(err error) error {
	if isNotFastSignal(err) {
		return ErrNotFast
	}
	return fmt.Errorf("%w: %w", ErrNotFast, err)
}

// fastAskable reports whether the procedure can be asked at all: every
// string valid UTF-8 (MySQL refuses anything else as a parameter) and
// within its parameters' width, and a room id, which an empty one never
// names.
func fastAskable(req FastCloseRequest) bool {
	if req.Rid == "" {
		return false
	}
	for _, s := range []string{req.Agent.ID, req.HashedToken, req.Agent.Username, req.Agent.Name, req.Rid, req.VisitorToken} {
		if len(s) > maxFastParam || !utf8.ValidString(s) {
			return false
		}
	}
	if !utf8.ValidString(req.Comment) {
		return false
	}
	for _, t := range req.Tags {
		if !utf8.ValidString(t) {
			return false
		}
	}
	return true
}

// payloadFrame is the outbox payload that CloseRoom would write for w, cut
// where the room's values go: head ends inside closedBy's _id, middle runs
// from the end of that object to callDuration's value, tail is the rest.
// The procedure puts the visitor's id (and ',"username":"…' when it has
// one), and the duration, between them. The keys are Go's, so each cut is
// found once: a string value has every quote escaped.
func payloadFrame(w *closeWrite) (head, middle, tail string, err error) {
	b, err := json.Marshal(w.event(idName{}, 0))
	if err != nil {
		return "", "", "", err
	}
	const (
		closedBy = `,"closedBy":{"_id":"`
		agent    = `"},"agent":{`
		duration = `,"callDuration":0,"messageId":`
	)
	i := bytes.Index(b, []byte(closedBy+agent))
	j := bytes.Index(b, []byte(duration))
	if i < 0 || j < i {
		return "", "", "", errors.New("the outbox payload has an unexpected shape")
	}
	i += len(closedBy)
	j += len(`,"callDuration":`)
	return string(b[:i]), string(b[i:j]), string(b[j+1:]), nil
}

// prepareFastClose prepares the fast procedure's CALL and tries it on
// nothing, as choosePath does for 0005's; it says why not when it cannot
// be used.
func (s *Store) prepareFastClose(ctx context.Context) (why string) {
	call, err := s.db.PrepareContext(ctx, callFastCloseSQL)
	if err == nil {
		// A prepared CALL is not checked for EXECUTE until it runs: an empty
		// room id matches nothing, and the procedure answers not-fast.
		_, err = call.ExecContext(ctx, make([]any, 17)...)
		// A server that takes no writes now (a replica, a secondary)
		// checked the privilege before it refused.
		if isNotFastSignal(err) || dbconnect.NotWritable(err) {
			s.callFastClose = call
			s.all = append(s.all, call)
			return ""
		}
		call.Close()
	}
	var me *mysql.MySQLError
	switch {
	case errors.As(err, &me) && me.Number == 1305: // ER_SP_DOES_NOT_EXIST
		return "the procedure " + FastCloseProcedure + " is missing (restored from a dump without --routines?): " +
			"create it again with the mysql client from internal/schema/migrations/0006_fast_close_procedure.sql"
	case errors.As(err, &me) && me.Number == 1370: // ER_PROCACCESS_DENIED_ERROR
		return "the database user lacks the EXECUTE privilege on the procedure " + FastCloseProcedure +
			" (GRANT EXECUTE ON PROCEDURE <database>." + FastCloseProcedure + " TO the gateway's user)"
	default:
		return fmt.Sprintf("trying the procedure %s: %v", FastCloseProcedure, err)
	}
}

func isNotFastSignal(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.SQLState == [5]byte{'4', '5', '0', '0', '0'} && me.Message == "not-fast"
}
