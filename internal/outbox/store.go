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
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/sqlstmt"
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
	// candidatesSQL reads the first due entries of room_events_due, pending
	// events in the order they fall due (never-tried ones first), at most
	// limit of them however long the backlog, and says of each whether an
	// earlier event of its room is still pending or parked. Only those that
	// are not blocked may be delivered, which keeps each room's events in id
	// order without holding up other rooms. Claimed events are due again
	// when their lease ends (claimSQL), so they are out of the range. The
	// range is read in index order, so it needs no ORDER BY, and the index
	// is named so that no server's plan walks another (every pending or
	// every delivered event) for it.
	candidatesSQL = `SELECT c.id, EXISTS (SELECT 1 FROM room_events p
                     WHERE p.rid = c.rid AND p.id < c.id AND p.delivery_state IN ('pending', 'parked')) AS blocked
FROM (SELECT id, rid FROM room_events FORCE INDEX (room_events_due)
      WHERE delivery_state = 'pending'
        AND (next_attempt_at IS NULL OR next_attempt_at <= ?)
        AND (claim_until IS NULL OR claim_until < ?)
      LIMIT ?) c`

	// nextDueSQL is when the earliest pending event falls due after a time:
	// one look-up of the first entry of room_events_due past it (MIN, so
	// that no plan can choose to walk the never-tried entries before it).
	nextDueSQL = `SELECT MIN(next_attempt_at) FROM room_events
WHERE delivery_state = 'pending' AND next_attempt_at > ?`

	// claimSQL takes the candidates whose lease is still free; the row locks
	// make concurrent claimers queue, and each row goes to one of them. The
	// event falls due again when the lease ends, for another gateway to take
	// should this one die.
	claimSQL = `UPDATE room_events SET claimed_by = ?, claim_until = ?, next_attempt_at = ?
WHERE id IN (%s) AND delivery_state = 'pending' AND (claim_until IS NULL OR claim_until < ?)`

	claimedSQL = `SELECT id, rid, type, payload, created_at, attempts FROM room_events
WHERE claimed_by = ? AND delivery_state = 'pending' ORDER BY id`

	// deferSQL moves blocked candidates out of the due range until a later
	// recheck, so that the claim's scan does not read them at every poll;
	// wakeSQL brings them back as soon as the event before them is
	// delivered. The defer joins the blocker again, read current as an
	// UPDATE reads: one delivered (and its wake run) since the scan, by
	// another gateway or another claim loop of this one, leaves its
	// follower due, rather than deferred until the recheck with no wake to
	// come. The check is the scan's own EXISTS, in a derived table that the
	// GROUP BY keeps materialized (MySQL refuses a subquery on the table an
	// UPDATE writes, and a join on every earlier event would read a long
	// room's whole backlog per event).
	deferSQL = `UPDATE room_events e
JOIN (SELECT b.id FROM room_events b
      WHERE b.id IN (%s) AND EXISTS (SELECT 1 FROM room_events p
        WHERE p.rid = b.rid AND p.id < b.id AND p.delivery_state IN ('pending', 'parked'))
      GROUP BY b.id) still_blocked ON still_blocked.id = e.id
SET e.next_attempt_at = ?
WHERE e.delivery_state = 'pending' AND (e.claim_until IS NULL OR e.claim_until < ?)`

	deliveredSQL = `UPDATE room_events SET delivery_state = 'delivered', delivered_at = ?, claimed_by = NULL, claim_until = NULL
WHERE claimed_by = ? AND id IN (%s)`

	// wakeSQL makes the deferred, never-tried events of the rooms just
	// delivered due at once: the next of each room goes out at the next
	// poll rather than at its recheck. It reads room_events_rid_delivery
	// for those rooms only.
	wakeSQL = `UPDATE room_events SET next_attempt_at = NULL
WHERE rid IN (%s) AND delivery_state = 'pending'
  AND attempts = 0 AND claimed_by IS NULL AND next_attempt_at IS NOT NULL`

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

	// countsSQL counts the backlog: it reads an index entry per pending or
	// parked event, so the deliverer runs it less often as it grows.
	countsSQL = `SELECT
  (SELECT COUNT(*) FROM room_events WHERE delivery_state = 'pending'),
  (SELECT COUNT(*) FROM room_events WHERE delivery_state = 'parked')`

	// oldestSQL is the creation time of the lowest pending id (ids follow
	// creation to within concurrent closes' milliseconds): two index reads.
	oldestSQL = `SELECT created_at FROM room_events
WHERE id = (SELECT MIN(id) FROM room_events WHERE delivery_state = 'pending')`

	// purgeWindowSQL reads the next delivered events after a cursor, in id
	// order, in a plain (lock-free) read; purgeSQL then deletes those of
	// them older than the retention by primary key, which locks those rows
	// and no gap, so a close's INSERT never waits on a purge. Events are
	// delivered in about id order, so a round of windows stops at the first
	// with nothing old enough, having read one window past the purged ones.
	purgeWindowSQL = `SELECT id, delivered_at FROM room_events
WHERE delivery_state = 'delivered' AND id > ? ORDER BY id LIMIT ?`
	purgeSQL       = `DELETE FROM room_events WHERE id IN (%s) AND delivery_state = 'delivered'`
	purgeRecordSQL = `INSERT INTO room_events_purge (singleton, through_id, purged_at) VALUES (1, ?, ?)
ON DUPLICATE KEY UPDATE through_id = GREATEST(through_id, ?), purged_at = ?`
	purgedThroughSQL = `SELECT COALESCE(MAX(through_id), 0) FROM room_events_purge`
)

// Store holds the outbox's prepared statements.
type Store struct {
	db *sql.DB
	candidates, nextDue, claimed, failed,
	counts, oldest, purgeWindow, purgeRecord *sql.Stmt
	all []*sql.Stmt // for Close
	// afterScan, when set (by tests), runs between a claim's scan and its
	// writes.
	afterScan func()
}

// A poll's statements, for the plan test and bench/cmd/outboxbacklog to
// explain and time as this build runs them.
const (
	CandidatesSQL = candidatesSQL
	NextDueSQL    = nextDueSQL
)

// NewStore prepares the outbox statements on db.
func NewStore(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db}
	var err error
	s.all, err = sqlstmt.Prepare(ctx, db,
		sqlstmt.Query{Into: &s.candidates, SQL: candidatesSQL},
		sqlstmt.Query{Into: &s.nextDue, SQL: nextDueSQL},
		sqlstmt.Query{Into: &s.claimed, SQL: claimedSQL},
		sqlstmt.Query{Into: &s.failed, SQL: failedSQL},
		sqlstmt.Query{Into: &s.counts, SQL: countsSQL},
		sqlstmt.Query{Into: &s.oldest, SQL: oldestSQL},
		sqlstmt.Query{Into: &s.purgeWindow, SQL: purgeWindowSQL},
		sqlstmt.Query{Into: &s.purgeRecord, SQL: purgeRecordSQL},
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

// onWritable runs a write again when nothing of it was done: once when the
// server refused it as read-only or not the group's primary (the connector
// has passed that server over, so the rerun goes to the next), and up to
// rolledBackRuns times in all when InnoDB rolled it back for a deadlock or
// a lock wait, after a short random pause that lets the other transaction
// finish. Claims and marks of several claim loops (of one gateway or more)
// deadlock now and then (a mark's range of claimed_by against a wake's
// range of rid), and a mark given up on has its batch sent again after
// the lease, so it takes more than a couple of deadlocks to give up. Every
// write it runs is idempotent.
func onWritable(ctx context.Context, write func() error) error {
	refused := false
	for attempt := 1; ; attempt++ {
		err := write()
		switch {
		case err == nil || ctx.Err() != nil:
			return err
		case dbconnect.NotWritable(err) && !refused:
			refused = true
		case dbconnect.RolledBack(err) && attempt < rolledBackRuns:
			select {
			case <-ctx.Done():
				return err
			case <-time.After(time.Duration(mrand.Int64N(int64(attempt) * int64(5*time.Millisecond)))):
			}
		default:
			return err
		}
	}
}

// rolledBackRuns is how often onWritable runs a write that InnoDB keeps
// rolling back.
const rolledBackRuns = 8

// Claim leases up to limit deliverable events to owner until now+lease and
// returns them in id order. It reads at most scan due events; those it
// finds waiting behind an earlier event of their room are deferred until
// recheck (or until that event is delivered: MarkDelivered). full says the
// scan was full, so that more may be due right away.
func (s *Store) Claim(ctx context.Context, owner string, now time.Time, lease time.Duration, limit, scan int, recheck time.Time) (events []Event, full bool, err error) {
	err = onWritable(ctx, func() error {
		events, full, err = s.claim(ctx, owner, now, lease, limit, scan, recheck)
		return err
	})
	return events, full, err
}

func (s *Store) claim(ctx context.Context, owner string, now time.Time, lease time.Duration, limit, scan int, recheck time.Time) (events []Event, full bool, err error) {
	now = columnPrecision(now)
	rows, err := s.candidates.QueryContext(ctx, now, now, scan)
	if err != nil {
		return nil, false, err
	}
	var ids, blocked []any
	read := 0
	for rows.Next() {
		var id int64
		var isBlocked bool
		if err := rows.Scan(&id, &isBlocked); err != nil {
			rows.Close()
			return nil, false, err
		}
		read++
		switch {
		case isBlocked:
			blocked = append(blocked, id)
		case len(ids) < limit:
			ids = append(ids, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	full = read == scan
	if s.afterScan != nil {
		s.afterScan()
	}
	if len(blocked) > 0 {
		// The IN lists vary with the batch, so these statements are
		// prepared per claim (still server-side, never interpolated): one
		// kept per list length would be kept on each of the pool's
		// connections, and a few gateways would reach the server's
		// max_prepared_stmt_count (16,382 by default).
		args := append(blocked, recheck, now)
		if _, err := s.db.ExecContext(ctx, fmt.Sprintf(deferSQL, placeholders(len(blocked))), args...); err != nil {
			return nil, false, err
		}
	}
	if len(ids) == 0 {
		return nil, full, nil
	}
	until := now.Add(lease)
	args := append(append([]any{owner, until, until}, ids...), now)
	if _, err := s.db.ExecContext(ctx, fmt.Sprintf(claimSQL, placeholders(len(ids))), args...); err != nil {
		return nil, false, err
	}
	rows, err = s.claimed.QueryContext(ctx, owner)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	for rows.Next() {
		var e Event
		var payload []byte
		if err := rows.Scan(&e.ID, &e.Rid, &e.Type, &payload, &e.CreatedAt, &e.Attempts); err != nil {
			return nil, false, err
		}
		e.Payload = payload
		events = append(events, e)
	}
	return events, full, rows.Err()
}

// NextDue is when the earliest pending event falls due after since; ok is
// false when none does.
func (s *Store) NextDue(ctx context.Context, since time.Time) (at time.Time, ok bool, err error) {
	var next sql.NullTime
	err = s.nextDue.QueryRowContext(ctx, columnPrecision(since)).Scan(&next)
	return next.Time, next.Valid, err
}

// columnPrecision cuts t to the milliseconds of the DATETIME(3) columns it
// is compared with: MariaDB reads a range of room_events_due only for a
// bound of the column's precision, and given a finer one it walks every
// pending entry instead.
func columnPrecision(t time.Time) time.Time { return t.Truncate(time.Millisecond) }

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// MarkDelivered records the deliveries of events claimed by owner, in one
// statement for the batch (prepared per call, as its IN list varies), and
// makes the next events of their rooms due.
func (s *Store) MarkDelivered(ctx context.Context, events []Event, owner string, now time.Time) error {
	if len(events) == 0 {
		return nil
	}
	args := make([]any, 0, 2+len(events))
	args = append(args, now, owner)
	rids := make([]any, len(events))
	for i, e := range events {
		args = append(args, e.ID)
		rids[i] = e.Rid
	}
	return onWritable(ctx, func() error {
		if _, err := s.db.ExecContext(ctx, fmt.Sprintf(deliveredSQL, placeholders(len(events))), args...); err != nil {
			return err
		}
		_, err := s.db.ExecContext(ctx, fmt.Sprintf(wakeSQL, placeholders(len(rids))), rids...)
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

// Counts counts pending and parked events: a read of one index entry per
// event, so its cost grows with the backlog.
func (s *Store) Counts(ctx context.Context) (pending, parked int64, err error) {
	err = s.counts.QueryRowContext(ctx).Scan(&pending, &parked)
	return pending, parked, err
}

// OldestPending is the creation time of the oldest pending event, zero when
// none is pending, at the same small cost however long the backlog.
func (s *Store) OldestPending(ctx context.Context) (time.Time, error) {
	return scanOldest(s.oldest.QueryRowContext(ctx))
}

func scanOldest(row *sql.Row) (time.Time, error) {
	var oldest time.Time
	err := row.Scan(&oldest)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	return oldest, err
}

// Purge reads the window of up to limit delivered events after id after,
// and deletes those delivered before cutoff, recording the highest id it
// deletes. It returns how many it deleted and the window's last id (the
// cursor for the next window; 0 at the end). Parked and pending events
// are never purged.
func (s *Store) Purge(ctx context.Context, after int64, cutoff, now time.Time, limit int) (deleted, last int64, err error) {
	rows, err := s.purgeWindow.QueryContext(ctx, after, limit)
	if err != nil {
		return 0, 0, err
	}
	var old []any
	var highest int64
	read := 0
	for rows.Next() {
		var id int64
		var deliveredAt sql.NullTime
		if err := rows.Scan(&id, &deliveredAt); err != nil {
			rows.Close()
			return 0, 0, err
		}
		read++
		last = id
		if deliveredAt.Valid && deliveredAt.Time.Before(cutoff) {
			old = append(old, id)
			highest = id
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, err
	}
	if read < limit {
		last = 0
	}
	if len(old) == 0 {
		return 0, last, nil
	}
	// Recorded first: a purge cut short still leaves replay's warning right.
	if _, err := s.purgeRecord.ExecContext(ctx, highest, now, highest, now); err != nil {
		return 0, 0, err
	}
	res, err := s.db.ExecContext(ctx, fmt.Sprintf(purgeSQL, placeholders(len(old))), old...)
	if err != nil {
		return 0, 0, err
	}
	deleted, err = res.RowsAffected()
	return deleted, last, err
}

// PurgedThrough is the highest event id the retention purge has deleted; 0
// when it never deleted any.
func PurgedThrough(ctx context.Context, db *sql.DB) (int64, error) {
	var id int64
	err := db.QueryRowContext(ctx, purgedThroughSQL).Scan(&id)
	return id, err
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

// recentDeliveredSQL reads the latest delivered events, newest id first,
// from room_events_delivery: as many index entries and rows as it returns.
const recentDeliveredSQL = `SELECT created_at, delivered_at FROM room_events
WHERE delivery_state = 'delivered' AND delivered_at IS NOT NULL ORDER BY id DESC LIMIT ?`

// Lag is how long the latest delivered events took from their close
// (created_at) to their delivery (delivered_at). A replayed event counts
// from its close, so it shows as late.
type Lag struct {
	// N events were read, delivered between First and Last.
	N           int
	First, Last time.Time
	// P50, P99 and Max are percentiles of their lag (nearest rank).
	P50, P99, Max time.Duration
}

// RecentLag reads the lag of the latest n delivered events (by id, which
// follows creation); N is 0 when none is delivered (or purged since).
func RecentLag(ctx context.Context, db *sql.DB, n int) (Lag, error) {
	rows, err := db.QueryContext(ctx, recentDeliveredSQL, n)
	if err != nil {
		return Lag{}, err
	}
	defer rows.Close()
	var (
		lag  Lag
		lags []time.Duration
	)
	for rows.Next() {
		var created, delivered time.Time
		if err := rows.Scan(&created, &delivered); err != nil {
			return Lag{}, err
		}
		lags = append(lags, delivered.Sub(created))
		if lag.First.IsZero() || delivered.Before(lag.First) {
			lag.First = delivered
		}
		if delivered.After(lag.Last) {
			lag.Last = delivered
		}
	}
	if err := rows.Err(); err != nil || len(lags) == 0 {
		return Lag{}, err
	}
	slices.Sort(lags)
	rank := func(p int) time.Duration { return lags[max(0, (len(lags)*p+99)/100-1)] }
	lag.N, lag.P50, lag.P99, lag.Max = len(lags), rank(50), rank(99), lags[len(lags)-1]
	return lag, nil
}

// ReadStatus is the outbox's status for a caller without a Store (the
// command line).
func ReadStatus(ctx context.Context, db *sql.DB) (Status, error) {
	var st Status
	if err := db.QueryRowContext(ctx, countsSQL).Scan(&st.Pending, &st.Parked); err != nil {
		return st, err
	}
	var err error
	st.OldestPending, err = scanOldest(db.QueryRowContext(ctx, oldestSQL))
	return st, err
}
