package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/sqlstmt"
)

// One round trip answers authentication and both permission checks: the
// token row is found by its primary key, and the permission flags are two
// EXISTS probes over primary keys.
const (
	credentialColumns = `t.user_id, t.hashed_token, t.type, t.created_at, u.username, u.name,
  EXISTS (SELECT 1 FROM user_roles ur JOIN permission_roles pr ON pr.role = ur.role
          WHERE ur.user_id = t.user_id AND pr.permission = ?),
  EXISTS (SELECT 1 FROM user_roles ur JOIN permission_roles pr ON pr.role = ur.role
          WHERE ur.user_id = t.user_id AND pr.permission = ?)`
	credentialFromWhere = `
FROM user_login_tokens t LEFT JOIN users u ON u.id = t.user_id
WHERE t.user_id = ? AND t.hashed_token = ?`

	credentialsSQL = "SELECT " + credentialColumns + credentialFromWhere
)

// Everything a close reads comes back in one round trip: the visitor, the
// room, and the call's PBX events, as one JSON array from a subquery
// (MariaDB 10.5+, MySQL 8 and TiDB all have JSON_ARRAY and JSON_ARRAYAGG;
// the events' order is set in Go, as MySQL's JSON_ARRAYAGG takes no ORDER
// BY). credentialsAndRoomSQL puts the subquery in the credentials query's
// select list, where it runs only when the token exists. Even unrun, it is
// planned on every execution, which makes that query dearer than the
// credentials alone (85 against 45 µs of MariaDB's CPU for an unknown token
// here), so a caller uses it only where a close is likely.
const (
	roomSubquery = `(SELECT JSON_ARRAY(v.token, v.id, v.username, r.id, r.open,
    DATE_FORMAT(r.ts, '%Y-%m-%d %H:%i:%s.%f'), r.call_unique_id,
    (SELECT JSON_ARRAYAGG(JSON_ARRAY(p.event, p.hold_time, DATE_FORMAT(p.ts, '%Y-%m-%d %H:%i:%s.%f'), p.id))
     FROM pbx_events p
     WHERE (p.call_unique_id = r.call_unique_id OR p.call_unique_id_fallback = r.call_unique_id)
       AND p.event IN ('AgentConnect', 'Hold', 'Unhold')))
  FROM livechat_visitors v
  LEFT JOIN rooms r ON r.id = ? AND r.t = 'v' AND r.visitor_token = v.token
  WHERE v.token = ?)`

	roomSQL               = "SELECT " + roomSubquery
	credentialsAndRoomSQL = "SELECT " + credentialColumns + ",\n  " + roomSubquery + credentialFromWhere
)

// The close's three writes. The UPDATE re-checks open inside the
// transaction: the row lock makes concurrent closes queue, and every one
// after the first matches no row. These are the portable path, which runs
// on every engine; migration 0005's procedure makes the same three writes
// in one round trip where the engine has procedures (see New).
const (
	closeRoomSQL = `UPDATE rooms SET open = FALSE, closed_at = ?, closer = 'visitor',
  closed_by_id = ?, closed_by_username = ?, call_duration = ?, call_waiting_time = ?,
  call_total_hold_time = ?, visitor_status = 'offline', updated_at = ?,
  msgs = msgs + 1, lm = ?, last_message_id = ?, tags = COALESCE(?, tags)
WHERE id = ? AND t = 'v' AND open = TRUE`

	insertMessageSQL = `INSERT INTO messages (id, rid, t, msg, groupable, user_id, username, name, ts, updated_at)
VALUES (?, ?, ?, ?, FALSE, ?, ?, ?, ?, ?)`

	insertEventSQL = `INSERT INTO room_events (rid, type, payload, created_at) VALUES (?, 'room.closed', ?, ?)`
)

// CloseProcedure is migration 0005's stored procedure; callCloseSQL calls
// it with closeWrite.procedureArgs and the time left.
const (
	CloseProcedure = "rocketchat_voip_close_room"
	callCloseSQL   = "CALL " + CloseProcedure + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

// maxAttempts bounds how often a transaction that lost a deadlock or a lock
// wait is run again before the error reaches the client as a 503.
const maxAttempts = 3

// Store holds the request path's statements, prepared once per pool.
type Store struct {
	db                                    *sql.DB
	credentials, credentialsAndRoom, room *sql.Stmt
	closeRoom, insertMessage, insertEvent *sql.Stmt
	callClose                             *sql.Stmt // nil: the portable path
	callFastClose                         *sql.Stmt // nil: no fast close
	path                                  WritePath
	all                                   []*sql.Stmt // for Close
	now                                   func() time.Time
	newID                                 func() string
}

// WritePath says how a store writes a close, and why.
type WritePath struct {
	// Procedure: one CALL of CloseProcedure. Otherwise the portable
	// transaction (BEGIN, UPDATE, two INSERTs, COMMIT).
	Procedure bool
	Engine    dbconnect.Engine
	Version   string // the server's VERSION()
	// Why the portable path is used, when it is.
	Why string
	// FastClose: a recent closer's close is one CALL of FastCloseProcedure
	// when it succeeds. Otherwise FastWhy says why not.
	FastClose bool
	FastWhy   string
}

// Fixable reports whether the operator could make closes cheaper: the
// engine has procedures, and the close's or the recent closer's is not
// used (missing, or the user lacks EXECUTE on it).
func (p WritePath) Fixable() bool {
	return p.Engine.HasProcedures() && (!p.Procedure || !p.FastClose)
}

func (p WritePath) String() string {
	if p.Procedure && p.FastClose {
		return "procedure " + CloseProcedure + " (a close is its read and one CALL), and by " + FastCloseProcedure +
			" for credentials that closed a room here recently (one CALL when the close succeeds)"
	}
	if p.Procedure {
		return "procedure " + CloseProcedure + " (a close is its read and one CALL; no one-CALL close for recent closers: " + p.FastWhy + ")"
	}
	return "portable transaction (a close is its read, BEGIN, UPDATE, two INSERTs, COMMIT): " + p.Why
}

// ErrNoExecutePrivilege is New's error when the database user may not call
// CloseProcedure.
var ErrNoExecutePrivilege = errors.New("the database user lacks the EXECUTE privilege on the procedure " + CloseProcedure)

// New prepares every statement on db, and chooses how closes are written:
// where the engine has stored procedures (MariaDB and MySQL, Galera and
// Group Replication included) by calling migration 0005's procedure,
// elsewhere (TiDB, Vitess) by the portable transaction. A user who may not
// call the procedure is ErrNoExecutePrivilege, so that a gateway fails at
// its start rather than answer 503 to every close; a procedure missing
// from a database migrated past 0005 (a dump restored without its
// routines) leaves the portable path, and WritePath says why.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	return newStore(ctx, db, true)
}

func newStore(ctx context.Context, db *sql.DB, procedureAllowed bool) (*Store, error) {
	s := &Store{db: db, now: time.Now, newID: randomID}
	var err error
	s.all, err = sqlstmt.Prepare(ctx, db,
		sqlstmt.Query{Into: &s.credentials, SQL: credentialsSQL},
		sqlstmt.Query{Into: &s.credentialsAndRoom, SQL: credentialsAndRoomSQL},
		sqlstmt.Query{Into: &s.room, SQL: roomSQL},
		sqlstmt.Query{Into: &s.closeRoom, SQL: closeRoomSQL},
		sqlstmt.Query{Into: &s.insertMessage, SQL: insertMessageSQL},
		sqlstmt.Query{Into: &s.insertEvent, SQL: insertEventSQL},
	)
	if err != nil {
		return nil, err
	}
	if err := s.choosePath(ctx, procedureAllowed); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// choosePath sets s.path, and s.callClose when the procedure is used.
func (s *Store) choosePath(ctx context.Context, procedureAllowed bool) error {
	var err error
	s.path.Engine, s.path.Version, err = dbconnect.DetectEngine(ctx, s.db)
	switch {
	case err != nil:
		return err
	case !procedureAllowed:
		s.path.Why = "chosen by the caller"
		return nil
	case !s.path.Engine.HasProcedures():
		s.path.Why = string(s.path.Engine) + " has no stored procedures the gateway can use"
		return nil
	}
	call, err := s.db.PrepareContext(ctx, callCloseSQL)
	if err == nil {
		// A prepared CALL is not checked for EXECUTE until it runs; run it
		// on a room id that matches nothing. It writes nothing and answers
		// room-closed.
		_, err = call.ExecContext(ctx, make([]any, 16)...)
		// A server that takes no writes now (a replica, a secondary)
		// checked the privilege before it refused.
		if errors.Is(procedureError(err), ErrRoomClosed) || dbconnect.NotWritable(err) {
			s.callClose, s.path.Procedure = call, true
			s.all = append(s.all, call)
			s.path.FastWhy = s.prepareFastClose(ctx)
			s.path.FastClose = s.path.FastWhy == ""
			return nil
		}
		call.Close()
	}
	var me *mysql.MySQLError
	switch {
	case errors.As(err, &me) && me.Number == 1305: // ER_SP_DOES_NOT_EXIST
		s.path.Why = "the procedure " + CloseProcedure + " is missing (restored from a dump without --routines?): " +
			"create it again with the mysql client from internal/schema/migrations/0005_close_procedure.sql"
		return nil
	case errors.As(err, &me) && me.Number == 1370: // ER_PROCACCESS_DENIED_ERROR
		var dbName sql.NullString
		s.db.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&dbName) //nolint:errcheck // only for the message
		return fmt.Errorf("%w: GRANT EXECUTE ON PROCEDURE %s.%s TO the gateway's user (see docs/grants.sql): %w",
			ErrNoExecutePrivilege, dbName.String, CloseProcedure, err)
	default:
		return fmt.Errorf("trying the procedure %s: %w", CloseProcedure, err)
	}
}

// WritePath says how the store writes a close.
func (s *Store) WritePath() WritePath { return s.path }

// Close releases the prepared statements.
func (s *Store) Close() error {
	sqlstmt.Close(s.all)
	return nil
}

// Now is the store's clock, the one Verify and the close's times use.
func (s *Store) Now() time.Time { return s.now() }

// ReadCredentials looks up the credentials of userID and the token hashed
// as hashedToken; Verify then decides. No such token is not an error: the
// Credentials say Found false.
func (s *Store) ReadCredentials(ctx context.Context, userID, hashedToken string) (Credentials, error) {
	var c Credentials
	err := s.credentials.QueryRowContext(ctx, PermissionInboundVoipCalls, PermissionBypassRateLimitAPI, userID, hashedToken).
		Scan(c.scanTargets()...)
	return c, foundRow(&c, err)
}

// ReadCredentialsAndRoom is ReadCredentials and ReadRoom in one round trip.
func (s *Store) ReadCredentialsAndRoom(ctx context.Context, userID, hashedToken, rid, visitorToken string) (Credentials, Found, error) {
	var c Credentials
	var f Found
	err := s.credentialsAndRoom.QueryRowContext(ctx, PermissionInboundVoipCalls, PermissionBypassRateLimitAPI,
		rid, visitorToken, userID, hashedToken).Scan(append(c.scanTargets(), f.scanTargets()...)...)
	return c, f, foundRow(&c, err)
}

func foundRow(c *Credentials, err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return nil // c.Found stays false
	}
	c.Found = err == nil
	return err
}

// ReadRoom reads what a close of rid by the visitor with visitorToken would
// close.
func (s *Store) ReadRoom(ctx context.Context, rid, visitorToken string) (Found, error) {
	var f Found
	err := s.room.QueryRowContext(ctx, rid, visitorToken).Scan(f.scanTargets()...)
	return f, err
}

// Agent is the authenticated user who ends the call.
type Agent struct {
	ID, Username, Name string
}

// CloseRequest is what a room.close request asks for.
type CloseRequest struct {
	Rid          string
	VisitorToken string
	Agent        Agent
	Comment      string   // non-empty: a voip-call-wrapup message with this text
	Tags         []string // non-empty: replaces the room's tags
}

// Result describes a close.
type Result struct {
	MessageID    string
	ClosedAt     time.Time
	CallDuration int64
	// RoundTrips counts the statements sent to the database, retries
	// included, whatever the outcome.
	RoundTrips int
}

// CloseRoom closes the room that f holds, or returns ErrInvalidToken,
// ErrInvalidRoom, ErrRoomClosed, or a database error. After a database
// error nothing was written, unless it wraps
// dbconnect.ErrCommitOutcomeUnknown: then the COMMIT (or the CALL, which
// commits) was sent and may have landed.
func (s *Store) CloseRoom(ctx context.Context, req CloseRequest, f Found) (Result, error) {
	r, err := decodeRoom(f.raw, req.Rid, req.VisitorToken)
	if err != nil {
		return Result{}, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	waiting, hold, err := callMetrics(r.callUniqueID, r.pbxEvents, now)
	if err != nil {
		return Result{}, err
	}
	res := Result{MessageID: s.newID(), ClosedAt: now, CallDuration: now.Sub(r.ts).Milliseconds()}
	w := newCloseWrite(req, now, res.MessageID)
	w.closedByID, w.closedByUsername = r.visitorID, r.visitorUsername
	w.callDuration, w.waiting, w.hold = res.CallDuration, waiting, hold
	w.payload, _ = json.Marshal(w.event(idName{ID: r.visitorID.String, Username: r.visitorUsername.String}, res.CallDuration))

	brokeOnce := false
	for attempt := 1; ; attempt++ {
		if s.callClose != nil {
			err = s.writeByProcedure(ctx, &res.RoundTrips, &w)
		} else {
			err = s.writeInTransaction(ctx, &res.RoundTrips, &w)
		}
		switch {
		case err == nil:
			return res, nil
		case (connectionBroke(err) || dbconnect.NotWritable(err)) && !brokeOnce && ctx.Err() == nil:
			// The server went away before COMMIT (or the CALL) was sent, or
			// refused the work as read-only or no longer the primary, so
			// nothing was written: once more, on a new connection (to
			// another server when the DSN names several).
			brokeOnce = true
		case attempt >= maxAttempts || !retryable(err):
			return Result{RoundTrips: res.RoundTrips}, err
		}
	}
}

// closeWrite is what a close writes, every value decided in Go; both write
// paths take their arguments from it.
type closeWrite struct {
	rid                          string
	now                          time.Time
	closedByID, closedByUsername sql.NullString
	callDuration                 int64
	waiting                      sql.NullInt64
	hold                         int64
	messageID                    string
	tags                         any // NULL keeps the room's tags
	tagList                      []string
	messageType, msg             string
	agentID                      string
	agentUsername, agentName     sql.NullString
	payload                      []byte
}

// newCloseWrite is what a close of req at now writes whatever the room:
// the room's own values (the visitor, the call's metrics, the payload)
// are the caller's to fill in.
func newCloseWrite(req CloseRequest, now time.Time, messageID string) closeWrite {
	w := closeWrite{
		rid: req.Rid, now: now, messageID: messageID, messageType: MessageTypeEnded,
		agentID: req.Agent.ID, agentUsername: nullIfEmpty(req.Agent.Username), agentName: nullIfEmpty(req.Agent.Name),
		tagList: req.Tags,
	}
	if req.Comment != "" {
		w.messageType, w.msg = MessageTypeWrapup, req.Comment
	}
	if len(req.Tags) > 0 {
		b, _ := json.Marshal(req.Tags)
		w.tags = string(b)
	}
	return w
}

// event is the outbox payload of the close, closed by the visitor
// closedBy, callDuration ms after the room's creation.
func (w *closeWrite) event(closedBy idName, callDuration int64) closedEvent {
	return closedEvent{
		Rid: w.rid, Closer: "visitor", ClosedBy: closedBy,
		Agent:        idName{ID: w.agentID, Username: w.agentUsername.String},
		ClosedAt:     w.now.Format("2006-01-02T15:04:05.000Z"),
		CallDuration: callDuration, MessageID: w.messageID, MessageType: w.messageType, Tags: w.tagList,
	}
}

func (w *closeWrite) closeRoomArgs() []any {
	return []any{w.now, w.closedByID, w.closedByUsername, w.callDuration, w.waiting, w.hold, w.now,
		w.now, w.messageID, w.tags, w.rid}
}

func (w *closeWrite) insertMessageArgs() []any {
	return []any{w.messageID, w.rid, w.messageType, w.msg, w.agentID, w.agentUsername, w.agentName, w.now, w.now}
}

func (w *closeWrite) insertEventArgs() []any { return []any{w.rid, w.payload, w.now} }

// procedureArgs are CloseProcedure's parameters, in its order, but for the
// last: the time left.
func (w *closeWrite) procedureArgs() []any {
	return []any{w.rid, w.now, w.closedByID, w.closedByUsername, w.callDuration, w.waiting, w.hold,
		w.messageID, w.tags, w.messageType, w.msg, w.agentID, w.agentUsername, w.agentName, w.payload}
}

// writeInTransaction is the portable path: the three writes in a
// transaction of their own, five round trips.
func (s *Store) writeInTransaction(ctx context.Context, roundTrips *int, w *closeWrite) error {
	return s.inTx(ctx, roundTrips, func(tx *sql.Tx) error {
		*roundTrips++
		upd, err := tx.StmtContext(ctx, s.closeRoom).ExecContext(ctx, w.closeRoomArgs()...)
		if err != nil {
			return err
		}
		if n, err := upd.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return ErrRoomClosed
		}
		*roundTrips++
		if _, err := tx.StmtContext(ctx, s.insertMessage).ExecContext(ctx, w.insertMessageArgs()...); err != nil {
			return err
		}
		*roundTrips++
		_, err = tx.StmtContext(ctx, s.insertEvent).ExecContext(ctx, w.insertEventArgs()...)
		return err
	})
}

// writeByProcedure makes the same writes in one CALL, which commits on the
// server: once it is sent, an error that is not the server's own means the
// outcome is unknown, as for a COMMIT (dbconnect.CommitError). The
// procedure is told how much of ctx's time is left, and rolls back rather
// than commit later than that (see migration 0005).
func (s *Store) writeByProcedure(ctx context.Context, roundTrips *int, w *closeWrite) error {
	if err := ctx.Err(); err != nil {
		return err // not sent
	}
	var timeLeft sql.NullInt64 // NULL: no bound
	if deadline, ok := ctx.Deadline(); ok {
		timeLeft = sql.NullInt64{Int64: time.Until(deadline).Microseconds(), Valid: true}
	}
	*roundTrips++
	_, err := s.callClose.ExecContext(ctx, append(w.procedureArgs(), timeLeft)...)
	return procedureError(dbconnect.CommitError(err))
}

// errProcedureTimedOut is the procedure's answer when it ran past the time
// it was given, and rolled back.
var errProcedureTimedOut = errors.New("the close's procedure ran past db_timeout and rolled back")

// procedureError turns the procedure's signals into ErrRoomClosed and
// errProcedureTimedOut.
func procedureError(err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.SQLState == [5]byte{'4', '5', '0', '0', '0'} {
		switch me.Message {
		case "room-closed":
			return ErrRoomClosed
		case "timed-out":
			return fmt.Errorf("%w: %w", errProcedureTimedOut, err)
		}
	}
	return err
}

// inTx runs fn in a transaction, counting BEGIN and COMMIT or ROLLBACK in
// *roundTrips.
func (s *Store) inTx(ctx context.Context, roundTrips *int, fn func(*sql.Tx) error) error {
	*roundTrips++
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	*roundTrips++
	if err := fn(tx); err != nil {
		tx.Rollback() //nolint:errcheck // the first error is the one that matters
		return err
	}
	return tx.Commit()
}

// connectionBroke reports a connection lost before COMMIT was sent.
func connectionBroke(err error) bool {
	return (errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn)) &&
		!errors.Is(err, dbconnect.ErrCommitOutcomeUnknown)
}

// retryable reports a deadlock or lock wait timeout: InnoDB rolled the
// transaction back, and running it again is safe.
func retryable(err error) bool { return dbconnect.RolledBack(err) }

func nullIfEmpty(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

// RolesGranting counts the roles that grant permission, for operators'
// checks (no role granting inbound-voip-calls means nobody can close rooms).
func RolesGranting(ctx context.Context, db *sql.DB, permission string) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM permission_roles WHERE permission = ?", permission).Scan(&n)
	return n, err
}

// idAlphabet is Meteor's Random.id alphabet (no 0, 1, I, O, l, o, U, V).
const idAlphabet = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"

// randomID returns a 17-character id like Rocket.Chat's Random.id().
func randomID() string {
	var b [17]byte
	var r [17]byte
	rand.Read(r[:]) //nolint:errcheck // crypto/rand.Read never fails
	for i := range b {
		// 256 % 55 bias is irrelevant for an id that only needs to be unique.
		b[i] = idAlphabet[int(r[i])%len(idAlphabet)]
	}
	return string(b[:])
}
