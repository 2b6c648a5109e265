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
	"math"
	"strconv"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
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

const (
	lookupSQL = `SELECT v.id, v.token, v.username, r.id, r.open, r.ts, r.call_unique_id
FROM livechat_visitors v
LEFT JOIN rooms r ON r.id = ? AND r.t = 'v' AND r.visitor_token = v.token
WHERE v.token = ?`

	pbxEventsSQL = `SELECT event, hold_time, ts FROM pbx_events
WHERE (call_unique_id = ? OR call_unique_id_fallback = ?) AND event IN ('AgentConnect', 'Hold', 'Unhold')
ORDER BY ts, id`

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
	db                                                       *sql.DB
	lookup, pbxEvents, closeRoom, insertMessage, insertEvent *sql.Stmt
	now                                                      func() time.Time
}

// New prepares the store's statements on db.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db, now: time.Now}
	for _, p := range []struct {
		dst   **sql.Stmt
		query string
	}{
		{&s.lookup, lookupSQL},
		{&s.pbxEvents, pbxEventsSQL},
		{&s.closeRoom, closeSQL},
		{&s.insertMessage, insertMessageSQL},
		{&s.insertEvent, insertEventSQL},
	} {
		stmt, err := db.PrepareContext(ctx, p.query)
		if err != nil {
			s.Close()
			return nil, err
		}
		*p.dst = stmt
	}
	return s, nil
}

// Close releases the prepared statements.
func (s *Store) Close() error {
	for _, st := range []*sql.Stmt{s.lookup, s.pbxEvents, s.closeRoom, s.insertMessage, s.insertEvent} {
		if st != nil {
			st.Close()
		}
	}
	return nil
}

type room struct {
	visitorID, visitorUsername sql.NullString
	callUniqueID               sql.NullString
	ts                         time.Time
}

// find returns the visitor's open voip room, or one of the Err* outcomes.
func (s *Store) find(ctx context.Context, rid, visitorToken string) (room, error) {
	var (
		r                        room
		gotToken                 string
		roomID, roomTs, roomOpen = sql.NullString{}, sql.NullTime{}, sql.NullBool{}
		visitorIDStr             string
	)
	err := s.lookup.QueryRowContext(ctx, rid, visitorToken).
		Scan(&visitorIDStr, &gotToken, &r.visitorUsername, &roomID, &roomOpen, &roomTs, &r.callUniqueID)
	if errors.Is(err, sql.ErrNoRows) {
		return room{}, ErrInvalidToken
	}
	if err != nil {
		return room{}, err
	}
	// The collation pads spaces; ids and tokens must match byte for byte.
	if gotToken != visitorToken {
		return room{}, ErrInvalidToken
	}
	if !roomID.Valid || roomID.String != rid || rid == "" {
		return room{}, ErrInvalidRoom
	}
	if !roomOpen.Bool {
		return room{}, ErrRoomClosed
	}
	r.visitorID = sql.NullString{String: visitorIDStr, Valid: true}
	r.ts = roomTs.Time
	return r, nil
}

// callMetrics computes callWaitingTime and callTotalHoldTime the way
// Rocket.Chat does: the AgentConnect event's hold time in ms, and the sum of
// Hold/Unhold pairs taken in time order, a trailing Hold counting until now.
func (s *Store) callMetrics(ctx context.Context, callUniqueID sql.NullString, now time.Time) (waiting sql.NullInt64, hold int64, err error) {
	if !callUniqueID.Valid || callUniqueID.String == "" {
		return waiting, 0, nil
	}
	rows, err := s.pbxEvents.QueryContext(ctx, callUniqueID.String, callUniqueID.String)
	if err != nil {
		return waiting, 0, err
	}
	defer rows.Close()
	var holds []time.Time
	seenConnect := false
	for rows.Next() {
		var event string
		var holdTime sql.NullString
		var ts time.Time
		if err := rows.Scan(&event, &holdTime, &ts); err != nil {
			return waiting, 0, err
		}
		switch event {
		case "AgentConnect":
			if !seenConnect {
				seenConnect = true
				if secs, err := strconv.ParseFloat(holdTime.String, 64); err == nil && !math.IsInf(secs, 0) {
					waiting = sql.NullInt64{Int64: int64(math.Round(secs * 1000)), Valid: true}
				}
			}
		default: // Hold or Unhold, paired by position as Rocket.Chat pairs them
			holds = append(holds, ts)
		}
	}
	if err := rows.Err(); err != nil {
		return waiting, 0, err
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

// CloseRoom closes the room, or returns ErrInvalidToken, ErrInvalidRoom,
// ErrRoomClosed, or a database error. After a database error nothing was
// written, unless it wraps dbconnect.ErrCommitOutcomeUnknown: then the
// COMMIT was sent and may have landed.
func (s *Store) CloseRoom(ctx context.Context, req CloseRequest) (Result, error) {
	res, err := s.closeOnce(ctx, req)
	if err != nil && connectionBroke(err) && ctx.Err() == nil {
		// The server went away before COMMIT was sent, so nothing was
		// written: once more, on a new connection (to another server when
		// the DSN names several).
		res, err = s.closeOnce(ctx, req)
	}
	return res, err
}

// connectionBroke reports a connection lost before COMMIT was sent.
func connectionBroke(err error) bool {
	return (errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn)) &&
		!errors.Is(err, dbconnect.ErrCommitOutcomeUnknown)
}

func (s *Store) closeOnce(ctx context.Context, req CloseRequest) (Result, error) {
	r, err := s.find(ctx, req.Rid, req.VisitorToken)
	if err != nil {
		return Result{}, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	waiting, hold, err := s.callMetrics(ctx, r.callUniqueID, now)
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
		if err == nil {
			return res, nil
		}
		if attempt >= maxAttempts || !retryable(err) {
			return Result{}, err
		}
	}
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
