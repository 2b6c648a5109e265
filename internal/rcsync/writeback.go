package rcsync

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Write-back states (rocketchat_writeback.state).
const (
	WritebackPending  = "pending"
	WritebackDone     = "done"
	WritebackConflict = "conflict" // Rocket.Chat had closed the room first; its close stands
	WritebackParked   = "parked"
)

// takeInLookback is how far below the highest event taken in the write-back
// looks for events that committed late.
const takeInLookback = 10000

// WritebackConfig bounds the write-back's retries.
type WritebackConfig struct {
	MaxAttempts int
	BackoffBase time.Duration
	BackoffMax  time.Duration
	Batch       int
}

// WritebackObserver hears each write-back's outcome.
type WritebackObserver interface {
	WritebackDone(state string)
	Error(what string, err error)
}

// Writeback applies each room.closed event of room_events to Rocket.Chat's
// MongoDB the way Rocket.Chat's LivechatVoip.closeRoom writes a close: the
// wrap-up message (under the edge's message id), the room's lastMessage,
// lm and msgs, the close fields, and open removed. Its delivery state is its
// own table, beside the webhook's columns: neither blocks the other.
type Writeback struct {
	db  *sql.DB
	src *Source
	cfg WritebackConfig
	obs WritebackObserver
}

// NewWriteback makes a write-back; Run does one round of it.
func NewWriteback(db *sql.DB, src *Source, cfg WritebackConfig, obs WritebackObserver) *Writeback {
	return &Writeback{db: db, src: src, cfg: cfg, obs: obs}
}

// Run takes in the room.closed events not seen yet, then writes back those
// due, oldest first.
func (w *Writeback) Run(ctx context.Context) error {
	var last int64
	if err := w.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(event_id), 0) FROM rocketchat_writeback`).Scan(&last); err != nil {
		return fmt.Errorf("write-back: %w", err)
	}
	// Ids are taken in the order transactions got them, not the order they
	// committed: a close that committed after a later id was taken in would
	// be skipped by "id > last". The look back of takeInLookback ids (more
	// than the closes that can be in flight at once) finds it.
	if _, err := w.db.ExecContext(ctx, `INSERT IGNORE INTO rocketchat_writeback (event_id, rid, state, attempts, next_attempt_at, updated_at)
		SELECT e.id, e.rid, 'pending', 0, NOW(3), NOW(3) FROM room_events e
		WHERE e.id > ? AND e.type = 'room.closed'
			AND NOT EXISTS (SELECT 1 FROM rocketchat_writeback w WHERE w.event_id = e.id)
		ORDER BY e.id LIMIT 1000`, last-takeInLookback); err != nil {
		return fmt.Errorf("write-back: taking in events: %w", err)
	}
	rows, err := w.db.QueryContext(ctx, `SELECT event_id, rid, attempts FROM rocketchat_writeback
		WHERE state = 'pending' AND next_attempt_at <= NOW(3) ORDER BY event_id LIMIT ?`, w.cfg.Batch)
	if err != nil {
		return fmt.Errorf("write-back: %w", err)
	}
	type due struct {
		id       int64
		rid      string
		attempts int
	}
	var todo []due
	for rows.Next() {
		var d due
		if err := rows.Scan(&d.id, &d.rid, &d.attempts); err != nil {
			rows.Close()
			return err
		}
		todo = append(todo, d)
	}
	rows.Close()
	for _, d := range todo {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		out, err := w.deliver(ctx, d.rid)
		if err != nil {
			w.obs.Error(fmt.Sprintf("write-back of room %s (event %d)", d.rid, d.id), err)
			attempts := d.attempts + 1
			state := WritebackPending
			if attempts >= w.cfg.MaxAttempts {
				state = WritebackParked
			}
			w.obs.WritebackDone("failed")
			if state == WritebackParked {
				w.obs.WritebackDone(WritebackParked)
			}
			if err := w.record(ctx, d.id, state, attempts, w.backoff(attempts), err.Error(), outcome{}); err != nil {
				return err
			}
			continue
		}
		w.obs.WritebackDone(out.state)
		if err := w.record(ctx, d.id, out.state, d.attempts+1, 0, out.detail, out); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writeback) backoff(attempts int) time.Duration {
	d := w.cfg.BackoffBase << min(attempts-1, 30)
	if d <= 0 || d > w.cfg.BackoffMax {
		d = w.cfg.BackoffMax
	}
	return d/2 + rand.N(d/2+1)
}

func (w *Writeback) record(ctx context.Context, id int64, state string, attempts int, wait time.Duration, detail string, o outcome) error {
	if len(detail) > 255 {
		detail = detail[:255]
	}
	var rcClosed, rcCloser any
	if !o.rcClosedAt.IsZero() {
		rcClosed = o.rcClosedAt.UTC()
	}
	if o.rcCloser != "" {
		rcCloser = o.rcCloser
	}
	var lastErr any
	if detail != "" {
		lastErr = detail
	}
	_, err := w.db.ExecContext(ctx, `UPDATE rocketchat_writeback SET state = ?, attempts = ?,
		next_attempt_at = NOW(3) + INTERVAL ? MICROSECOND, last_error = ?, rc_closed_at = ?, rc_closer = ?, updated_at = NOW(3)
		WHERE event_id = ?`, state, attempts, wait.Microseconds(), lastErr, rcClosed, rcCloser, id)
	if err != nil {
		return fmt.Errorf("write-back: recording event %d: %w", id, err)
	}
	return nil
}

type outcome struct {
	state      string
	detail     string
	rcClosedAt time.Time
	rcCloser   string
}

// closeRow is what MySQL holds of an edge close.
type closeRow struct {
	open                                bool
	closedAt                            sql.NullTime
	closer, closedByID, closedByUser    sql.NullString
	callDuration, waiting, hold         sql.NullInt64
	tags                                sql.NullString
	msgID, msgT, msg, uID, uName, uFull sql.NullString
	msgTs                               sql.NullTime
}

// deliver writes one close back. An error is a failure to retry; an outcome
// is final (done, conflict, parked).
func (w *Writeback) deliver(ctx context.Context, rid string) (outcome, error) {
	var r closeRow
	err := w.db.QueryRowContext(ctx, `SELECT r.open, r.closed_at, r.closer, r.closed_by_id, r.closed_by_username, r.call_duration,
			r.call_waiting_time, r.call_total_hold_time, r.tags, m.id, m.t, m.msg, m.user_id, m.username, m.name, m.ts
		FROM rooms r LEFT JOIN messages m ON m.id = r.last_message_id WHERE r.id = ?`, rid).
		Scan(&r.open, &r.closedAt, &r.closer, &r.closedByID, &r.closedByUser, &r.callDuration, &r.waiting, &r.hold, &r.tags,
			&r.msgID, &r.msgT, &r.msg, &r.uID, &r.uName, &r.uFull, &r.msgTs)
	if errors.Is(err, sql.ErrNoRows) {
		return outcome{state: WritebackParked, detail: "the room is no longer in MySQL"}, nil
	}
	if err != nil {
		return outcome{}, err
	}
	if r.open || !r.closedAt.Valid || !r.msgID.Valid {
		return outcome{state: WritebackParked, detail: "MySQL holds no edge close of this room"}, nil
	}
	rooms := w.src.db.Collection(CollRooms)
	op, cancel := context.WithTimeout(ctx, w.src.timeout)
	defer cancel()
	state, err := w.rcState(op, rooms, rid)
	if err != nil {
		return outcome{}, err
	}
	switch {
	case state == nil:
		return outcome{state: WritebackParked, detail: "the room is not in Rocket.Chat"}, nil
	case state.lastMessage == r.msgID.String:
		return outcome{state: WritebackDone}, nil // an earlier attempt landed
	case !state.open:
		return outcome{state: WritebackConflict, detail: "Rocket.Chat closed the room first", rcClosedAt: state.closedAt, rcCloser: state.closer}, nil
	}
	now := time.Now().UTC()
	u := bson.D{{Key: "_id", Value: r.uID.String}, {Key: "username", Value: r.uName.String}}
	if r.uFull.Valid {
		u = append(u, bson.E{Key: "name", Value: r.uFull.String})
	}
	msg := bson.D{
		{Key: "_id", Value: r.msgID.String}, {Key: "t", Value: r.msgT.String}, {Key: "msg", Value: r.msg.String},
		{Key: "groupable", Value: false}, {Key: "ts", Value: r.msgTs.Time.UTC()}, {Key: "u", Value: u},
		{Key: "rid", Value: rid}, {Key: "_updatedAt", Value: now},
	}
	if _, err := w.src.db.Collection(CollMessages).InsertOne(op, msg); err != nil && !mongo.IsDuplicateKeyError(err) {
		return outcome{}, fmt.Errorf("mongodb: inserting the wrap-up message: %w", err)
	}
	set := bson.D{
		{Key: "closer", Value: r.closer.String},
		{Key: "closedBy", Value: bson.D{{Key: "_id", Value: r.closedByID.String}, {Key: "username", Value: r.closedByUser.String}}},
		{Key: "closedAt", Value: r.closedAt.Time.UTC()}, {Key: "callDuration", Value: r.callDuration.Int64},
		{Key: "v.status", Value: "offline"}, {Key: "lm", Value: r.msgTs.Time.UTC()}, {Key: "lastMessage", Value: msg},
		{Key: "_updatedAt", Value: now},
	}
	if r.tags.Valid {
		var tags []string
		if json.Unmarshal([]byte(r.tags.String), &tags) == nil && len(tags) > 0 {
			set = append(set, bson.E{Key: "tags", Value: tags})
		}
	}
	if r.hold.Valid {
		set = append(set, bson.E{Key: "callTotalHoldTime", Value: r.hold.Int64})
	}
	if r.waiting.Valid {
		set = append(set, bson.E{Key: "callWaitingTime", Value: r.waiting.Int64})
	}
	res, err := rooms.UpdateOne(op, bson.D{{Key: "_id", Value: rid}, {Key: "t", Value: "v"}, {Key: "open", Value: true}},
		bson.D{{Key: "$set", Value: set}, {Key: "$unset", Value: bson.D{{Key: "open", Value: ""}}}, {Key: "$inc", Value: bson.D{{Key: "msgs", Value: 1}}}})
	if err != nil {
		return outcome{}, fmt.Errorf("mongodb: closing the room: %w", err)
	}
	if res.MatchedCount == 1 {
		return outcome{state: WritebackDone}, nil
	}
	// Closed between the read and the update: by Rocket.Chat (a conflict;
	// the message inserted above is left, as Rocket.Chat's own double
	// closes leave two), or the room is gone.
	state, err = w.rcState(op, rooms, rid)
	if err != nil {
		return outcome{}, err
	}
	if state == nil {
		return outcome{state: WritebackParked, detail: "the room is not in Rocket.Chat"}, nil
	}
	return outcome{state: WritebackConflict, detail: "Rocket.Chat closed the room first", rcClosedAt: state.closedAt, rcCloser: state.closer}, nil
}

type rcRoomState struct {
	open        bool
	closedAt    time.Time
	closer      string
	lastMessage string
}

func (w *Writeback) rcState(ctx context.Context, rooms *mongo.Collection, rid string) (*rcRoomState, error) {
	var d struct {
		Open        *bool      `bson:"open"`
		ClosedAt    *time.Time `bson:"closedAt"`
		Closer      *string    `bson:"closer"`
		LastMessage *struct {
			ID *string `bson:"_id"`
		} `bson:"lastMessage"`
	}
	err := rooms.FindOne(ctx, bson.D{{Key: "_id", Value: rid}, {Key: "t", Value: "v"}},
		options.FindOne().SetProjection(bson.D{{Key: "open", Value: 1}, {Key: "closedAt", Value: 1}, {Key: "closer", Value: 1}, {Key: "lastMessage._id", Value: 1}})).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mongodb: reading the room: %w", err)
	}
	st := &rcRoomState{open: d.Open != nil && *d.Open}
	if d.ClosedAt != nil {
		st.closedAt = *d.ClosedAt
	}
	if d.Closer != nil {
		st.closer = *d.Closer
	}
	if d.LastMessage != nil && d.LastMessage.ID != nil {
		st.lastMessage = *d.LastMessage.ID
	}
	return st, nil
}
