// Package outbox delivers the room_events outbox: each event is POSTed to a
// webhook at least once, the events of one room in id order. Delivery state
// lives in MySQL, so restarts, reloads and crashes lose nothing, and several
// gateways share the work through expiring claims (leases) rather than
// SKIP LOCKED, which TiDB and older servers lack.
package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/sqlstmt"
)

// Delivery states of a room_events row.
const (
	StatePending   = "pending"
	StateDelivered = "delivered"
	StateParked    = "parked"
)

// Event is one claimed outbox row.
type Event struct {
	ID        int64
	Rid       string
	Type      string
	Payload   json.RawMessage
	CreatedAt time.Time
	Attempts  int
}

const (
	// candidatesSQL finds the first deliverable event of each room: pending,
	// due, not claimed by a live lease, and with no earlier event of its room
	// still pending or parked (which keeps each room's events in id order;
	// other rooms are not held up).
	candidatesSQL = `SELECT e.id FROM room_events e
WHERE e.delivery_state = 'pending'
  AND (e.next_attempt_at IS NULL OR e.next_attempt_at <= ?)
  AND (e.claim_until IS NULL OR e.claim_until < ?)
  AND NOT EXISTS (SELECT 1 FROM room_events p
                  WHERE p.rid = e.rid AND p.id < e.id AND p.delivery_state IN ('pending', 'parked'))
ORDER BY e.id LIMIT ?`

	// claimSQL takes the candidates whose lease is still free; the row locks
	// make concurrent claimers queue, and each row goes to one of them.
	claimSQL = `UPDATE room_events SET claimed_by = ?, claim_until = ?
WHERE id IN (%s) AND delivery_state = 'pending' AND (claim_until IS NULL OR claim_until < ?)`

	claimedSQL = `SELECT id, rid, type, payload, created_at, attempts FROM room_events
WHERE claimed_by = ? AND delivery_state = 'pending' ORDER BY id`

	deliveredSQL = `UPDATE room_events SET delivery_state = 'delivered', delivered_at = ?, claimed_by = NULL, claim_until = NULL
WHERE claimed_by = ? AND id IN (%s)`

	// failedSQL records a failed attempt: parked once attempts reach the
	// maximum, otherwise due again at next_attempt_at. attempts is assigned
	// last: MySQL evaluates later assignments with the new value, MariaDB's
	// SIMULTANEOUS_ASSIGNMENT mode with the old, and this reads the same in
	// both.
	failedSQL = `UPDATE room_events SET last_error = ?, claimed_by = NULL, claim_until = NULL,
  next_attempt_at = ?,
  delivery_state = CASE WHEN attempts + 1 >= ? THEN 'parked' ELSE 'pending' END,
  parked_at = CASE WHEN attempts + 1 >= ? THEN ? ELSE NULL END,
  attempts = attempts + 1
WHERE id = ? AND claimed_by = ?`

	statusSQL = `SELECT
  (SELECT COUNT(*) FROM room_events WHERE delivery_state = 'pending'),
  (SELECT COUNT(*) FROM room_events WHERE delivery_state = 'parked'),
  (SELECT MIN(created_at) FROM room_events WHERE delivery_state = 'pending')`
)

// Store holds the outbox's prepared statements.
type Store struct {
	db                                 *sql.DB
	candidates, claimed, failed, stats *sql.Stmt
	all                                []*sql.Stmt // for Close
}

// NewStore prepares the outbox statements on db.
func NewStore(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db}
	var err error
	s.all, err = sqlstmt.Prepare(ctx, db,
		sqlstmt.Query{Into: &s.candidates, SQL: candidatesSQL},
		sqlstmt.Query{Into: &s.claimed, SQL: claimedSQL},
		sqlstmt.Query{Into: &s.failed, SQL: failedSQL},
		sqlstmt.Query{Into: &s.stats, SQL: statusSQL},
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

// onWritable runs a write, and once more when the server refused it as
// read-only or not the group's primary: nothing was done, and the connector
// has passed that server over, so the rerun goes to the next.
func onWritable(ctx context.Context, write func() error) error {
	err := write()
	if dbconnect.NotWritable(err) && ctx.Err() == nil {
		err = write()
	}
	return err
}

// Claim leases up to limit deliverable events to owner until now+lease and
// returns them in id order.
func (s *Store) Claim(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) (events []Event, err error) {
	err = onWritable(ctx, func() error {
		events, err = s.claim(ctx, owner, now, lease, limit)
		return err
	})
	return events, err
}

func (s *Store) claim(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]Event, error) {
	rows, err := s.candidates.QueryContext(ctx, now, now, limit)
	if err != nil {
		return nil, err
	}
	var ids []any
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(ids) == 0 {
		return nil, err
	}
	// The IN list varies with the batch, so this one statement is prepared
	// per claim (still server-side, never interpolated).
	query := fmt.Sprintf(claimSQL, strings.TrimSuffix(strings.Repeat("?,", len(ids)), ","))
	args := append([]any{owner, now.Add(lease)}, ids...)
	args = append(args, now)
	if _, err := s.db.ExecContext(ctx, query, args...); err != nil {
		return nil, err
	}
	rows, err = s.claimed.QueryContext(ctx, owner)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var events []Event
	for rows.Next() {
		var e Event
		var payload []byte
		if err := rows.Scan(&e.ID, &e.Rid, &e.Type, &payload, &e.CreatedAt, &e.Attempts); err != nil {
			return nil, err
		}
		e.Payload = payload
		events = append(events, e)
	}
	return events, rows.Err()
}

// MarkDelivered records the deliveries of events claimed by owner, in one
// statement for the batch (prepared per call, as its IN list varies).
func (s *Store) MarkDelivered(ctx context.Context, ids []int64, owner string, now time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	args := make([]any, 0, 2+len(ids))
	args = append(args, now, owner)
	for _, id := range ids {
		args = append(args, id)
	}
	query := fmt.Sprintf(deliveredSQL, strings.TrimSuffix(strings.Repeat("?,", len(ids)), ","))
	return onWritable(ctx, func() error {
		_, err := s.db.ExecContext(ctx, query, args...)
		return err
	})
}

// MarkFailed records a failed attempt of an event claimed by owner; it
// reports whether the event is now parked.
func (s *Store) MarkFailed(ctx context.Context, e Event, owner string, now, next time.Time, maxAttempts int, reason string) (parked bool, err error) {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	err = onWritable(ctx, func() error {
		_, err := s.failed.ExecContext(ctx, reason, next, maxAttempts, maxAttempts, now, e.ID, owner)
		return err
	})
	return e.Attempts+1 >= maxAttempts, err
}

// Status is the outbox at a glance.
type Status struct {
	Pending, Parked int64
	// OldestPending is the creation time of the oldest pending event; zero
	// when none is pending.
	OldestPending time.Time
}

// Status counts pending and parked events.
func (s *Store) Status(ctx context.Context) (Status, error) {
	return scanStatus(s.stats.QueryRowContext(ctx))
}

func scanStatus(row *sql.Row) (Status, error) {
	var st Status
	var oldest sql.NullTime
	err := row.Scan(&st.Pending, &st.Parked, &oldest)
	st.OldestPending = oldest.Time
	return st, err
}

// Replay makes events deliverable again: the parked ones (parkedOnly), or
// every event from id fromID on, delivered or parked; both together narrow
// to parked events from fromID on. It returns how many it reset.
func Replay(ctx context.Context, db *sql.DB, parkedOnly bool, fromID int64) (int64, error) {
	res, err := db.ExecContext(ctx, `UPDATE room_events
SET delivery_state = 'pending', attempts = 0, next_attempt_at = NULL, parked_at = NULL,
  claimed_by = NULL, claim_until = NULL, last_error = NULL
WHERE id >= ? AND (delivery_state = 'parked' OR (? = FALSE AND delivery_state = 'delivered'))`, fromID, parkedOnly)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ReadStatus is Status for a caller without a Store (the command line).
func ReadStatus(ctx context.Context, db *sql.DB) (Status, error) {
	return scanStatus(db.QueryRowContext(ctx, statusSQL))
}
