// Package roomstore closes Rocket.Chat voip rooms in MySQL: it finds the
// visitor and the room, reads the call's PBX events, and then performs every
// write of the close in one transaction that only one request can win.
package roomstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/auth"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/sqlstmt"
)

// The outcomes that are not a success, in the contract's order.
var (
	ErrInvalidToken = errors.New("invalid-token") // no visitor has the token
	ErrInvalidRoom  = errors.New("invalid-room")  // no voip room of that visitor has the id
	ErrRoomClosed   = errors.New("room-closed")   // the room is not open, or another request closed it first
)

// Message types of the wrap-up message.
const (
	MessageTypeWrapup = "voip-call-wrapup"
	MessageTypeEnded  = "voip-call-ended"
)

// maxAttempts bounds how often a transaction that lost a deadlock or a lock
// wait is run again before the error reaches the client as a 503.
const maxAttempts = 3

// Everything a close reads comes back in one round trip: the visitor, the
// room, and the call's PBX events, as one JSON array from a subquery
// (MariaDB 10.5+, MySQL 8 and TiDB all have JSON_ARRAY and JSON_ARRAYAGG;
// the events' order is set in Go, as MySQL's JSON_ARRAYAGG takes no ORDER
// BY). ReadWithCredentials puts the subquery in the authentication query's
// select list, where it runs only when the token exists. Even unrun, it is
// planned on every execution, which makes that query dearer than the
// authentication alone (85 against 45 µs of MariaDB's CPU for an unknown
// token here), so a caller should use it only where a close is likely, and
// auth.Store.Read, then Read, elsewhere.
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

	// lookupSQL reads the room alone (arguments: rid, visitor token).
	lookupSQL = "SELECT " + roomSubquery
)

const (
	// The WHERE clause re-checks open inside the transaction: the row lock
	// makes concurrent closes queue, and every one after the first matches
	// no row.
	closeSQL = `UPDATE rooms SET open = FALSE, closed_at = ?, closer = 'visitor',
  closed_by_id = ?, closed_by_username = ?, call_duration = ?, call_waiting_time = ?,
  call_total_hold_time = ?, visitor_status = 'offline', updated_at = ?,
  msgs = msgs + 1, lm = ?, last_message_id = ?, tags = COALESCE(?, tags)
WHERE id = ? AND t = 'v' AND open = TRUE`

	insertMessageSQL = `INSERT INTO messages (id, rid, t, msg, groupable, user_id, username, name, ts, updated_at)
VALUES (?, ?, ?, ?, FALSE, ?, ?, ?, ?, ?)`

	insertEventSQL = `INSERT INTO room_events (rid, type, payload, created_at) VALUES (?, 'room.closed', ?, ?)`
)

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

// Result describes a close that committed.
type Result struct {
	MessageID    string
	ClosedAt     time.Time
	CallDuration int64
}

// Store holds the statements prepared in Provision.
type Store struct {
	db                                                  *sql.DB
	lookup, read, closeRoom, insertMessage, insertEvent *sql.Stmt
	all                                                 []*sql.Stmt // for Close
	now                                                 func() time.Time
}

// New prepares the store's statements on db.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db, now: time.Now}
	var err error
	s.all, err = sqlstmt.Prepare(ctx, db, map[**sql.Stmt]string{
		&s.lookup:        lookupSQL,
		&s.read:          auth.CredentialsQuery(roomSubquery, ""),
		&s.closeRoom:     closeSQL,
		&s.insertMessage: insertMessageSQL,
		&s.insertEvent:   insertEventSQL,
	})
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

// Found is what a close reads before its transaction: the visitor, the
// room and the call's PBX events, as the database returned them (a JSON
// array, NULL when no visitor has the token).
type Found struct{ raw []byte }

func (f *Found) scanTargets() []any { return []any{&f.raw} }

// ReadWithCredentials reads, in one round trip, the credentials of userID
// and the token hashed as hashedToken (see auth.Store.Verify) and the room
// that a close of rid by the visitor with visitorToken would close.
func (s *Store) ReadWithCredentials(ctx context.Context, userID, hashedToken, rid, visitorToken string) (auth.Credentials, Found, error) {
	var c auth.Credentials
	var f Found
	err := s.read.QueryRowContext(ctx, auth.QueryArgs(userID, hashedToken, rid, visitorToken)...).
		Scan(append(c.ScanTargets(), f.scanTargets()...)...)
	if errors.Is(err, sql.ErrNoRows) {
		return c, f, nil // c.Found stays false
	}
	c.Found = err == nil
	return c, f, err
}

type room struct {
	visitorID, visitorUsername sql.NullString
	callUniqueID               sql.NullString
	ts                         time.Time
	pbxEvents                  json.RawMessage
}

// room returns the visitor's open voip room named by rid, or one of the
// Err* outcomes.
func (f *Found) room(rid, visitorToken string) (room, error) {
	if len(f.raw) == 0 {
		return room{}, ErrInvalidToken
	}
	var cols []json.RawMessage // token, visitor id, username, room id, open, ts, call id, events
	if err := json.Unmarshal(f.raw, &cols); err != nil || len(cols) != 8 {
		return room{}, fmt.Errorf("reading the room: %q is not the 8 values expected (%v)", f.raw, err)
	}
	str := func(b json.RawMessage) (v sql.NullString) {
		json.Unmarshal(b, &v.String) //nolint:errcheck // null stays invalid
		v.Valid = string(b) != "null"
		return v
	}
	// The collation pads spaces; ids and tokens must match byte for byte.
	if token := str(cols[0]); !token.Valid || token.String != visitorToken {
		return room{}, ErrInvalidToken
	}
	if id := str(cols[3]); !id.Valid || id.String != rid || rid == "" {
		return room{}, ErrInvalidRoom
	}
	if open := string(cols[4]); open != "1" && open != "true" {
		return room{}, ErrRoomClosed
	}
	ts, err := time.ParseInLocation("2006-01-02 15:04:05.000000", str(cols[5]).String, time.UTC)
	if err != nil {
		return room{}, fmt.Errorf("reading the room: %w", err)
	}
	r := room{visitorID: str(cols[1]), visitorUsername: str(cols[2]), callUniqueID: str(cols[6]), ts: ts}
	if string(cols[7]) != "null" {
		r.pbxEvents = cols[7]
	}
	return r, nil
}

// callMetrics computes callWaitingTime and callTotalHoldTime the way
// Rocket.Chat does: the AgentConnect event's hold time in ms, and the sum of
// Hold/Unhold pairs taken in time order, a trailing Hold counting until now.
func callMetrics(callUniqueID sql.NullString, pbxEvents []byte, now time.Time) (waiting sql.NullInt64, hold int64, err error) {
	if !callUniqueID.Valid || callUniqueID.String == "" || len(pbxEvents) == 0 {
		return waiting, 0, nil
	}
	var events [][4]*string // event, hold_time, ts, id
	if err := json.Unmarshal(pbxEvents, &events); err != nil {
		return waiting, 0, fmt.Errorf("reading PBX events: %w", err)
	}
	for _, e := range events {
		if e[0] == nil || e[2] == nil || e[3] == nil {
			return waiting, 0, errors.New("reading PBX events: a NULL where none can be")
		}
	}
	// ORDER BY ts, id: the timestamps are fixed-width text, ids compare as
	// bytes (utf8mb4_bin).
	sort.Slice(events, func(i, j int) bool {
		if *events[i][2] != *events[j][2] {
			return *events[i][2] < *events[j][2]
		}
		return *events[i][3] < *events[j][3]
	})
	var holds []time.Time
	seenConnect := false
	for _, e := range events {
		switch *e[0] {
		case "AgentConnect":
			if !seenConnect && e[1] != nil {
				if secs, err := strconv.ParseFloat(*e[1], 64); err == nil && !math.IsInf(secs, 0) {
					waiting = sql.NullInt64{Int64: int64(math.Round(secs * 1000)), Valid: true}
				}
			}
			seenConnect = true
		default: // Hold or Unhold, paired by position as Rocket.Chat pairs them
			ts, err := time.ParseInLocation("2006-01-02 15:04:05.000000", *e[2], time.UTC)
			if err != nil {
				return waiting, 0, fmt.Errorf("reading PBX events: %w", err)
			}
			holds = append(holds, ts)
		}
	}
	for i := 0; i < len(holds); i += 2 {
		end := now
		if i+1 < len(holds) {
			end = holds[i+1]
		}
		hold += end.Sub(holds[i]).Milliseconds()
	}
	return waiting, hold, nil
}

// Read reads the room that a close of rid by the visitor with visitorToken
// would close, without the credentials (for a request whose credentials
// were read alone).
func (s *Store) Read(ctx context.Context, rid, visitorToken string) (Found, error) {
	var f Found
	err := s.lookup.QueryRowContext(ctx, rid, visitorToken).Scan(f.scanTargets()...)
	return f, err
}

// CloseRoom reads the room and closes it: Read, then CloseFound.
func (s *Store) CloseRoom(ctx context.Context, req CloseRequest) (Result, error) {
	f, err := s.Read(ctx, req.Rid, req.VisitorToken)
	if err != nil {
		return Result{}, err
	}
	return s.CloseFound(ctx, req, f)
}

// CloseFound closes the room that f holds, or returns ErrInvalidToken,
// ErrInvalidRoom, ErrRoomClosed, or a database error. After a database
// error nothing was written, unless it wraps
// dbconnect.ErrCommitOutcomeUnknown: then the COMMIT was sent and may have
// landed.
func (s *Store) CloseFound(ctx context.Context, req CloseRequest, f Found) (Result, error) {
	r, err := f.room(req.Rid, req.VisitorToken)
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
	res := Result{MessageID: RandomID(), ClosedAt: now, CallDuration: now.Sub(r.ts).Milliseconds()}
	payload, _ := json.Marshal(closedEvent{
		Rid: req.Rid, Closer: "visitor",
		ClosedBy:     idName{ID: r.visitorID.String, Username: r.visitorUsername.String},
		Agent:        idName{ID: req.Agent.ID, Username: req.Agent.Username},
		ClosedAt:     now.Format("2006-01-02T15:04:05.000Z"),
		CallDuration: res.CallDuration, MessageID: res.MessageID, MessageType: msgType, Tags: req.Tags,
	})

	brokeOnce := false
	for attempt := 1; ; attempt++ {
		err = s.closeTx(ctx, func(tx *sql.Tx) error {
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
			if _, err := tx.StmtContext(ctx, s.insertMessage).ExecContext(ctx,
				res.MessageID, req.Rid, msgType, msg, req.Agent.ID, nullIfEmpty(req.Agent.Username), nullIfEmpty(req.Agent.Name), now, now); err != nil {
				return err
			}
			_, err = tx.StmtContext(ctx, s.insertEvent).ExecContext(ctx, req.Rid, payload, now)
			return err
		})
		switch {
		case err == nil:
			return res, nil
		case connectionBroke(err) && !brokeOnce && ctx.Err() == nil:
			// The server went away before COMMIT was sent, so nothing was
			// written: once more, on a new connection (to another server
			// when the DSN names several).
			brokeOnce = true
		case attempt >= maxAttempts || !retryable(err):
			return Result{}, err
		}
	}
}

// connectionBroke reports a connection lost before COMMIT was sent.
func connectionBroke(err error) bool {
	return (errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn)) &&
		!errors.Is(err, dbconnect.ErrCommitOutcomeUnknown)
}

func (s *Store) closeTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback() //nolint:errcheck // the first error is the one that matters
		return err
	}
	return tx.Commit()
}

// retryable reports a deadlock or lock wait timeout: InnoDB rolled the
// transaction back, and running it again is safe.
func retryable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205)
}

func nullIfEmpty(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

type idName struct {
	ID       string `json:"_id"`
	Username string `json:"username,omitempty"`
}

// closedEvent is the payload of the room.closed outbox row.
type closedEvent struct {
	Rid          string   `json:"rid"`
	Closer       string   `json:"closer"`
	ClosedBy     idName   `json:"closedBy"`
	Agent        idName   `json:"agent"`
	ClosedAt     string   `json:"closedAt"`
	CallDuration int64    `json:"callDuration"`
	MessageID    string   `json:"messageId"`
	MessageType  string   `json:"messageType"`
	Tags         []string `json:"tags,omitempty"`
}

// idAlphabet is Meteor's Random.id alphabet (no 0, 1, I, O, l, o, U, V).
const idAlphabet = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"

// RandomID returns a 17-character id like Rocket.Chat's Random.id().
func RandomID() string {
	var b [17]byte
	var r [17]byte
	rand.Read(r[:]) //nolint:errcheck // crypto/rand.Read never fails
	for i := range b {
		// 256 % 55 bias is irrelevant for an id that only needs to be unique.
		b[i] = idAlphabet[int(r[i])%len(idAlphabet)]
	}
	return string(b[:])
}
