package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
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
// after the first matches no row.
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

// maxAttempts bounds how often a transaction that lost a deadlock or a lock
// wait is run again before the error reaches the client as a 503.
const maxAttempts = 3

// Store holds the request path's statements, prepared once per pool.
type Store struct {
	db                                    *sql.DB
	credentials, credentialsAndRoom, room *sql.Stmt
	closeRoom, insertMessage, insertEvent *sql.Stmt
	all                                   []*sql.Stmt // for Close
	now                                   func() time.Time
}

// New prepares every statement on db.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db, now: time.Now}
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
	return s, nil
}

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
// dbconnect.ErrCommitOutcomeUnknown: then the COMMIT was sent and may have
// landed.
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
	msgType, msg := MessageTypeEnded, ""
	if req.Comment != "" {
		msgType, msg = MessageTypeWrapup, req.Comment
	}
	var tags any // NULL keeps the room's tags
	if len(req.Tags) > 0 {
		b, _ := json.Marshal(req.Tags)
		tags = string(b)
	}
	res := Result{MessageID: randomID(), ClosedAt: now, CallDuration: now.Sub(r.ts).Milliseconds()}
	payload, _ := json.Marshal(closedEvent{
		Rid: req.Rid, Closer: "visitor",
		ClosedBy:     idName{ID: r.visitorID.String, Username: r.visitorUsername.String},
		Agent:        idName{ID: req.Agent.ID, Username: req.Agent.Username},
		ClosedAt:     now.Format("2006-01-02T15:04:05.000Z"),
		CallDuration: res.CallDuration, MessageID: res.MessageID, MessageType: msgType, Tags: req.Tags,
	})

	brokeOnce := false
	for attempt := 1; ; attempt++ {
		err = s.inTx(ctx, &res.RoundTrips, func(tx *sql.Tx) error {
			res.RoundTrips++
			upd, err := tx.StmtContext(ctx, s.closeRoom).ExecContext(ctx,
				now, r.visitorID, r.visitorUsername, res.CallDuration, waiting, hold, now,
				now, res.MessageID, tags, req.Rid)
			if err != nil {
				return err
			}
			if n, err := upd.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return ErrRoomClosed
			}
			res.RoundTrips++
			if _, err := tx.StmtContext(ctx, s.insertMessage).ExecContext(ctx,
				res.MessageID, req.Rid, msgType, msg, req.Agent.ID, nullIfEmpty(req.Agent.Username), nullIfEmpty(req.Agent.Name), now, now); err != nil {
				return err
			}
			res.RoundTrips++
			_, err = tx.StmtContext(ctx, s.insertEvent).ExecContext(ctx, req.Rid, payload, now)
			return err
		})
		switch {
		case err == nil:
			return res, nil
		case (connectionBroke(err) || dbconnect.NotWritable(err)) && !brokeOnce && ctx.Err() == nil:
			// The server went away before COMMIT was sent, or refused the
			// work as read-only or no longer the primary, so nothing was
			// written: once more, on a new connection (to another server
			// when the DSN names several).
			brokeOnce = true
		case attempt >= maxAttempts || !retryable(err):
			return Result{RoundTrips: res.RoundTrips}, err
		}
	}
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
func retryable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205)
}

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
