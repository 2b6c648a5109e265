package rcsync

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Phases of sync_state.phase.
const (
	PhaseSnapshot = "snapshot" // a full read in progress; the gateway's data may be missing rows
	PhasePoll     = "poll"     // following by incremental poll and periodic reconciliation
)

// State is the sync_state row of a source.
type State struct {
	Source        string
	Phase         string
	SnapshotColl  string // the collection a snapshot is reading, "" before the first
	SnapshotAfter string // the last _id applied in SnapshotColl
	SnapshotStart time.Time
	Cursors       map[string]Cursor
	CaughtUpAt    time.Time // zero: never
	ReconciledAt  time.Time // zero: never
	LastError     string
	UpdatedAt     time.Time
	// Now is the server's clock when the row was read.
	Now time.Time
}

// Staleness is how old the gateway's view of Rocket.Chat is: since the older
// of the last poll that reached the present and the start of the last
// complete reconciliation (a token revoked before it is gone), on the
// server's clock. A sync that never completed a snapshot is infinitely stale.
func (s *State) Staleness() (time.Duration, bool) {
	if s == nil || s.Phase != PhasePoll || s.CaughtUpAt.IsZero() || s.ReconciledAt.IsZero() {
		return 0, false
	}
	fresh := s.CaughtUpAt
	if s.ReconciledAt.Before(fresh) {
		fresh = s.ReconciledAt
	}
	return max(s.Now.Sub(fresh), 0), true
}

// ReadState reads the state of source; nil when the sync never ran.
func ReadState(ctx context.Context, db *sql.DB, source string) (*State, error) {
	return readState(ctx, db, source, "")
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func readState(ctx context.Context, q queryer, source, lock string) (*State, error) {
	s := &State{Source: source}
	var coll, after, cursors, lastErr sql.NullString
	var start, caught, recon sql.NullTime
	err := q.QueryRowContext(ctx, `SELECT phase, snapshot_coll, snapshot_after, snapshot_started_at, cursors,
		caught_up_at, reconciled_at, last_error, updated_at, NOW(3) FROM sync_state WHERE source = ?`+lock, source).
		Scan(&s.Phase, &coll, &after, &start, &cursors, &caught, &recon, &lastErr, &s.UpdatedAt, &s.Now)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading sync_state: %w", err)
	}
	s.SnapshotColl, s.SnapshotAfter, s.LastError = coll.String, after.String, lastErr.String
	s.SnapshotStart, s.CaughtUpAt, s.ReconciledAt = start.Time, caught.Time, recon.Time
	s.Cursors = map[string]Cursor{}
	if cursors.Valid && cursors.String != "" {
		if err := json.Unmarshal([]byte(cursors.String), &s.Cursors); err != nil {
			return nil, fmt.Errorf("sync_state.cursors: %w", err)
		}
	}
	return s, nil
}

// RequestSnapshot makes the next pass of the sync of source a full snapshot
// (followed by the sweep of rows Rocket.Chat no longer has).
func RequestSnapshot(ctx context.Context, db *sql.DB, source string) error {
	_, err := db.ExecContext(ctx, `UPDATE sync_state SET phase = ?, snapshot_coll = NULL, snapshot_after = NULL,
		snapshot_started_at = NULL, updated_at = NOW(3) WHERE source = ?`, PhaseSnapshot, source)
	return err
}

// Lease is the MySQL lease that makes one gateway the sync's leader.
type Lease struct {
	DB    *sql.DB
	Name  string
	Owner string
	TTL   time.Duration
}

// Acquire takes or renews the lease; false when another owner holds it.
func (l *Lease) Acquire(ctx context.Context) (bool, error) {
	tx, err := l.DB.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT IGNORE INTO sync_lease (name, owner, lease_until) VALUES (?, '', NOW(3))`, l.Name); err != nil {
		return false, fmt.Errorf("sync_lease: %w", err)
	}
	ok, err := l.hold(ctx, tx, true)
	if err != nil || !ok {
		return false, err
	}
	return true, tx.Commit()
}

// Renew extends a lease this owner holds; false when it lapsed or is
// another's.
func (l *Lease) Renew(ctx context.Context) (bool, error) {
	tx, err := l.DB.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	ok, err := l.hold(ctx, tx, false)
	if err != nil || !ok {
		return false, err
	}
	return true, tx.Commit()
}

// hold checks, in tx, that the lease is ours or free (free only when
// takeFree) and extends it; the row stays locked until tx ends, so a
// batch committed under hold was applied by the leader alone.
func (l *Lease) hold(ctx context.Context, tx *sql.Tx, takeFree bool) (bool, error) {
	var owner string
	var live bool
	if err := tx.QueryRowContext(ctx, `SELECT owner, lease_until > NOW(3) FROM sync_lease WHERE name = ? FOR UPDATE`, l.Name).
		Scan(&owner, &live); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return false, nil
		}
		return false, fmt.Errorf("sync_lease: %w", err)
	}
	if owner != l.Owner && (live || !takeFree) {
		return false, nil
	}
	if owner == l.Owner && !live && !takeFree {
		return false, nil // lapsed: another may have run meanwhile; take it again first
	}
	_, err := tx.ExecContext(ctx, `UPDATE sync_lease SET owner = ?, lease_until = NOW(3) + INTERVAL ? MICROSECOND WHERE name = ?`,
		l.Owner, l.TTL.Microseconds(), l.Name)
	if err != nil {
		return false, fmt.Errorf("sync_lease: %w", err)
	}
	return true, nil
}

// Release gives the lease up (on stop), so another gateway takes over at once.
func (l *Lease) Release(ctx context.Context) error {
	_, err := l.DB.ExecContext(ctx, `UPDATE sync_lease SET lease_until = NOW(3) WHERE name = ? AND owner = ?`, l.Name, l.Owner)
	return err
}

// ErrNotLeader is the error of a batch that found the lease gone: it was
// rolled back, and nothing of it was applied.
var ErrNotLeader = errors.New("sync: the lease was lost; another gateway leads")

// writer applies pages to MySQL.
type writer struct {
	db    *sql.DB
	lease *Lease
	warn  func(msg string, kv ...any)
}

// commit runs fn and then writes the state change in one transaction held
// under the lease: the rows a page brings and the checkpoint past it commit
// together, or neither does.
func (w *writer) commit(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	ok, err := w.lease.hold(ctx, tx, false)
	if err != nil {
		return err
	}
	if !ok {
		return ErrNotLeader
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// saveState writes st's checkpoint fields. caughtUp and reconciled stamp
// caught_up_at / reconciled_at with the server's NOW(3), or with the time
// given (non-zero).
func saveState(ctx context.Context, tx *sql.Tx, st *State, caughtUp bool, reconciledAt time.Time) error {
	cursors, err := json.Marshal(st.Cursors)
	if err != nil {
		return err
	}
	null := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	nullTime := func(t time.Time) any {
		if t.IsZero() {
			return nil
		}
		return t
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO sync_state (source, phase, snapshot_coll, snapshot_after, snapshot_started_at,
			cursors, updated_at) VALUES (?, ?, ?, ?, ?, ?, NOW(3))
		ON DUPLICATE KEY UPDATE phase = ?, snapshot_coll = ?, snapshot_after = ?, snapshot_started_at = ?, cursors = ?, updated_at = NOW(3)`,
		st.Source, st.Phase, null(st.SnapshotColl), null(st.SnapshotAfter), nullTime(st.SnapshotStart), string(cursors),
		st.Phase, null(st.SnapshotColl), null(st.SnapshotAfter), nullTime(st.SnapshotStart), string(cursors))
	if err != nil {
		return fmt.Errorf("writing sync_state: %w", err)
	}
	if caughtUp {
		if _, err := tx.ExecContext(ctx, `UPDATE sync_state SET caught_up_at = NOW(3), last_error = NULL WHERE source = ?`, st.Source); err != nil {
			return fmt.Errorf("writing sync_state: %w", err)
		}
	}
	if !reconciledAt.IsZero() {
		if _, err := tx.ExecContext(ctx, `UPDATE sync_state SET reconciled_at = ? WHERE source = ?`, reconciledAt, st.Source); err != nil {
			return fmt.Errorf("writing sync_state: %w", err)
		}
	}
	return nil
}

// noteError records the last error (its message only: errors never carry
// document contents or secrets).
func noteError(ctx context.Context, db *sql.DB, source string, e error) {
	msg := e.Error()
	if len(msg) > 255 {
		msg = msg[:255]
	}
	_, _ = db.ExecContext(ctx, `UPDATE sync_state SET last_error = ? WHERE source = ?`, msg, source)
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

func anys[T any](xs []T) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

func str(p *string) any {
	if p == nil {
		return nil
	}
	return *p
}

func timeOrNil(t *time.Time) any {
	if t == nil || t.IsZero() {
		return nil
	}
	return t.UTC()
}

type tokenRow struct {
	hash, typ string
	created   time.Time
	name      sql.NullString
}

// tokensOf maps a user's loginTokens to rows: elements without a
// hashedToken (legacy plain tokens, which REST never accepts) are skipped.
func tokensOf(u *User) map[string]tokenRow {
	out := map[string]tokenRow{}
	for _, t := range u.Services.Resume.LoginTokens {
		if t.HashedToken == "" || len(t.HashedToken) > 44 {
			continue
		}
		r := tokenRow{hash: t.HashedToken, typ: "resume"}
		if t.Type == "personalAccessToken" {
			r.typ = t.Type
			if t.CreatedAt != nil {
				r.created = t.CreatedAt.UTC()
			}
			if t.Name != nil {
				r.name = sql.NullString{String: *t.Name, Valid: true}
			}
		} else if t.When != nil {
			r.created = t.When.UTC()
		}
		if r.created.IsZero() {
			continue // a token without its time cannot be checked for expiry
		}
		out[r.hash] = r
	}
	return out
}

// applyUsers writes users, their roles and tokens, changing only rows that
// differ (a reconciliation of unchanged users writes nothing).
func (w *writer) applyUsers(ctx context.Context, tx *sql.Tx, users []User) error {
	if len(users) == 0 {
		return nil
	}
	ids := make([]string, len(users))
	for i := range users {
		ids[i] = users[i].ID
	}
	in := placeholders(len(ids))
	type userRow struct {
		username, name sql.NullString
		typ            string
		active         bool
	}
	have := map[string]userRow{}
	rows, err := tx.QueryContext(ctx, `SELECT id, username, name, type, active FROM users WHERE id IN (`+in+`)`, anys(ids)...)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id string
		var r userRow
		if err := rows.Scan(&id, &r.username, &r.name, &r.typ, &r.active); err != nil {
			rows.Close()
			return err
		}
		have[id] = r
	}
	rows.Close()
	haveTokens := map[string]map[string]tokenRow{}
	rows, err = tx.QueryContext(ctx, `SELECT user_id, hashed_token, type, created_at, name FROM user_login_tokens WHERE user_id IN (`+in+`)`, anys(ids)...)
	if err != nil {
		return err
	}
	for rows.Next() {
		var uid string
		var r tokenRow
		if err := rows.Scan(&uid, &r.hash, &r.typ, &r.created, &r.name); err != nil {
			rows.Close()
			return err
		}
		if haveTokens[uid] == nil {
			haveTokens[uid] = map[string]tokenRow{}
		}
		haveTokens[uid][r.hash] = r
	}
	rows.Close()
	haveRoles := map[string][]string{}
	rows, err = tx.QueryContext(ctx, `SELECT user_id, role FROM user_roles WHERE user_id IN (`+in+`)`, anys(ids)...)
	if err != nil {
		return err
	}
	for rows.Next() {
		var uid, role string
		if err := rows.Scan(&uid, &role); err != nil {
			rows.Close()
			return err
		}
		haveRoles[uid] = append(haveRoles[uid], role)
	}
	rows.Close()

	var tokenArgs []any
	var tokenN int
	var roleArgs []any
	var roleN int
	for i := range users {
		u := &users[i]
		want := userRow{typ: "user", active: true}
		if u.Username != nil {
			want.username = sql.NullString{String: *u.Username, Valid: true}
		}
		if u.Name != nil {
			want.name = sql.NullString{String: *u.Name, Valid: true}
		}
		if u.Type != nil && *u.Type != "" {
			want.typ = *u.Type
		}
		if u.Active != nil {
			want.active = *u.Active
		}
		if got, ok := have[u.ID]; !ok || got != want {
			if want.username.Valid && (!ok || got.username != want.username) {
				// Rocket.Chat's username index is not unique: a username can
				// move between users between two reads. The latest read wins;
				// the other user gets its own name back when it is read.
				if _, err := tx.ExecContext(ctx, `UPDATE users SET username = NULL WHERE username = ? AND id <> ?`, want.username, u.ID); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO users (id, username, name, type, active) VALUES (?, ?, ?, ?, ?)
				ON DUPLICATE KEY UPDATE username = ?, name = ?, type = ?, active = ?`,
				u.ID, want.username, want.name, want.typ, want.active, want.username, want.name, want.typ, want.active); err != nil {
				return err
			}
		}
		wantTokens := tokensOf(u)
		var gone []any
		for h, r := range haveTokens[u.ID] {
			if wr, ok := wantTokens[h]; !ok || wr.typ != r.typ || !wr.created.Equal(r.created) || wr.name != r.name {
				gone = append(gone, h)
			}
		}
		if len(gone) > 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM user_login_tokens WHERE user_id = ? AND hashed_token IN (`+placeholders(len(gone))+`)`,
				append([]any{u.ID}, gone...)...); err != nil {
				return err
			}
		}
		for h, r := range wantTokens {
			if hr, ok := haveTokens[u.ID][h]; ok && hr.typ == r.typ && hr.created.Equal(r.created) && hr.name == r.name {
				continue
			}
			tokenArgs = append(tokenArgs, u.ID, r.hash, r.typ, r.created, r.name)
			tokenN++
		}
		wantRoles := slices.Compact(slices.Sorted(slices.Values(u.Roles)))
		var goneRoles []any
		for _, r := range haveRoles[u.ID] {
			if !slices.Contains(wantRoles, r) {
				goneRoles = append(goneRoles, r)
			}
		}
		if len(goneRoles) > 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM user_roles WHERE user_id = ? AND role IN (`+placeholders(len(goneRoles))+`)`,
				append([]any{u.ID}, goneRoles...)...); err != nil {
				return err
			}
		}
		for _, r := range wantRoles {
			if r != "" && len(r) <= 64 && !slices.Contains(haveRoles[u.ID], r) {
				roleArgs = append(roleArgs, u.ID, r)
				roleN++
			}
		}
	}
	if tokenN > 0 {
		if _, err := tx.ExecContext(ctx, `INSERT INTO user_login_tokens (user_id, hashed_token, type, created_at, name) VALUES `+
			strings.TrimSuffix(strings.Repeat("(?,?,?,?,?),", tokenN), ","), tokenArgs...); err != nil {
			return err
		}
	}
	if roleN > 0 {
		if _, err := tx.ExecContext(ctx, `INSERT IGNORE INTO user_roles (user_id, role) VALUES `+
			strings.TrimSuffix(strings.Repeat("(?,?),", roleN), ","), roleArgs...); err != nil {
			return err
		}
	}
	return nil
}

// applyPermissions makes each permission's roles those Rocket.Chat lists.
func (w *writer) applyPermissions(ctx context.Context, tx *sql.Tx, perms []Permission) error {
	for _, p := range perms {
		if p.ID == "" || len(p.ID) > 64 {
			continue
		}
		roles := slices.DeleteFunc(slices.Compact(slices.Sorted(slices.Values(p.Roles))), func(r string) bool { return r == "" || len(r) > 64 })
		if len(roles) == 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM permission_roles WHERE permission = ?`, p.ID); err != nil {
				return err
			}
			continue
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM permission_roles WHERE permission = ? AND role NOT IN (`+placeholders(len(roles))+`)`,
			append([]any{p.ID}, anys(roles)...)...); err != nil {
			return err
		}
		args := []any{}
		for _, r := range roles {
			args = append(args, p.ID, r)
		}
		if _, err := tx.ExecContext(ctx, `INSERT IGNORE INTO permission_roles (permission, role) VALUES `+
			strings.TrimSuffix(strings.Repeat("(?,?),", len(roles)), ","), args...); err != nil {
			return err
		}
	}
	return nil
}

// applyVisitors upserts visitors. Rocket.Chat's token index is not unique
// and MySQL's is: a second visitor with a token already held by another is
// skipped and logged (without the token), as Rocket.Chat's findOne({token})
// would find only one of them too.
func (w *writer) applyVisitors(ctx context.Context, tx *sql.Tx, vs []Visitor) error {
	for _, v := range vs {
		if v.Token == "" {
			continue
		}
		var other string
		err := tx.QueryRowContext(ctx, `SELECT id FROM livechat_visitors WHERE token = ? AND id <> ?`, v.Token, v.ID).Scan(&other)
		if err == nil {
			w.warn("sync: a visitor's token is already another visitor's; kept the first", "visitor", v.ID, "kept", other)
			continue
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO livechat_visitors (id, token, username, name) VALUES (?, ?, ?, ?)
			ON DUPLICATE KEY UPDATE token = ?, username = ?, name = ?`,
			v.ID, v.Token, str(v.Username), str(v.Name), v.Token, str(v.Username), str(v.Name)); err != nil {
			return err
		}
	}
	return nil
}

// applyRooms writes VoIP rooms. A close is monotonic: a room MySQL holds
// closed is never touched again (its close fields are the edge's own, or an
// echo of them), so MySQL never reopens a room; a room Rocket.Chat closed is
// closed here with Rocket.Chat's fields, unless the edge closed it first.
func (w *writer) applyRooms(ctx context.Context, tx *sql.Tx, rooms []Room) error {
	for i := range rooms {
		r := &rooms[i]
		var open bool
		err := tx.QueryRowContext(ctx, `SELECT open FROM rooms WHERE id = ? FOR UPDATE`, r.ID).Scan(&open)
		exists := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if exists && !open {
			continue
		}
		var tags any
		if r.Tags != nil {
			b, _ := json.Marshal(r.Tags)
			tags = string(b)
		}
		var vID, vToken, vUser, vStatus, sbID, sbUser, lastMsg, cbID, cbUser any
		if r.V != nil {
			vID, vToken, vUser, vStatus = str(r.V.ID), str(r.V.Token), str(r.V.Username), str(r.V.Status)
		}
		if r.ServedBy != nil {
			sbID, sbUser = str(r.ServedBy.ID), str(r.ServedBy.Username)
		}
		if r.LastMessage != nil {
			lastMsg = str(r.LastMessage.ID)
		}
		if r.ClosedBy != nil {
			cbID, cbUser = str(r.ClosedBy.ID), str(r.ClosedBy.Username)
		}
		msgs := int64(0)
		if n := integer(r.Msgs); n != nil {
			msgs = *n
		}
		isOpen := r.Open != nil && *r.Open
		updated := r.UpdatedAt
		if updated.IsZero() {
			updated = r.Ts
		}
		vals := []any{r.T, str(r.Name), isOpen, r.Ts.UTC(), vID, vToken, vUser, vStatus, sbID, sbUser, str(r.Queue), str(r.Direction),
			str(r.CallUniqueID), msgs, timeOrNil(r.Lm), lastMsg, tags, timeOrNil(r.ClosedAt), str(r.Closer), cbID, cbUser,
			integer(r.CallDuration), integer(r.CallWaitingTime), integer(r.CallTotalHoldTime), updated.UTC()}
		const cols = `t = ?, name = ?, open = ?, ts = ?, visitor_id = ?, visitor_token = ?, visitor_username = ?, visitor_status = ?,
			served_by_id = ?, served_by_username = ?, queue = ?, direction = ?, call_unique_id = ?, msgs = ?, lm = ?,
			last_message_id = ?, tags = ?, closed_at = ?, closer = ?, closed_by_id = ?, closed_by_username = ?,
			call_duration = ?, call_waiting_time = ?, call_total_hold_time = ?, updated_at = ?`
		if exists {
			// open in the filter: should the edge have closed it since the
			// read above (it cannot, the row is locked), its close stands.
			if _, err := tx.ExecContext(ctx, `UPDATE rooms SET `+cols+` WHERE id = ? AND open`, append(vals, r.ID)...); err != nil {
				return err
			}
		} else if _, err := tx.ExecContext(ctx, `INSERT INTO rooms SET id = ?, `+cols, append([]any{r.ID}, vals...)...); err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) apply(ctx context.Context, tx *sql.Tx, p *Page) error {
	switch p.Coll {
	case CollUsers:
		return w.applyUsers(ctx, tx, p.Users)
	case CollPermissions:
		return w.applyPermissions(ctx, tx, p.Perms)
	case CollVisitors:
		return w.applyVisitors(ctx, tx, p.Vis)
	case CollRooms:
		return w.applyRooms(ctx, tx, p.Rooms)
	}
	return fmt.Errorf("sync: unknown collection %s", p.Coll)
}

// sweepTables says which MySQL rows mirror each collection, for the sweep
// of hard deletes.
var sweepTables = map[string]struct{ table, id string }{
	CollUsers:       {"users", "id"},
	CollPermissions: {"permission_roles", "permission"},
	CollVisitors:    {"livechat_visitors", "id"},
	CollRooms:       {"rooms", "id"},
}

// sweep deletes the rows of coll whose ids Rocket.Chat no longer has (a
// deleted user's tokens and roles with it), a few hundred per transaction.
func (w *writer) sweep(ctx context.Context, coll string, present map[string]struct{}) (int, error) {
	st := sweepTables[coll]
	where := ""
	if coll == CollRooms {
		where = " WHERE t = 'v'"
	}
	rows, err := w.db.QueryContext(ctx, `SELECT DISTINCT `+st.id+` FROM `+st.table+where)
	if err != nil {
		return 0, err
	}
	var gone []any
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		if _, ok := present[id]; !ok {
			gone = append(gone, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	n := len(gone)
	for len(gone) > 0 {
		chunk := gone[:min(len(gone), 500)]
		gone = gone[len(chunk):]
		in := placeholders(len(chunk))
		err := w.commit(ctx, func(tx *sql.Tx) error {
			if coll == CollUsers {
				for _, t := range []string{"user_login_tokens", "user_roles"} {
					if _, err := tx.ExecContext(ctx, `DELETE FROM `+t+` WHERE user_id IN (`+in+`)`, chunk...); err != nil {
						return err
					}
				}
			}
			_, err := tx.ExecContext(ctx, `DELETE FROM `+st.table+` WHERE `+st.id+` IN (`+in+`)`, chunk...)
			return err
		})
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}

// Status is what 'caddy rocketchat-voip sync status' prints.
type Status struct {
	State      *State // nil: the sync never ran
	Leader     string
	LeaseLeft  time.Duration // <= 0: nobody leads
	Writebacks map[string]int
}

// ReadStatus reads the sync's state, its lease and the write-back's counts.
func ReadStatus(ctx context.Context, db *sql.DB, source string) (*Status, error) {
	st, err := ReadState(ctx, db, source)
	if err != nil {
		return nil, err
	}
	s := &Status{State: st, Writebacks: map[string]int{}}
	var leftMs sql.NullInt64
	err = db.QueryRowContext(ctx, `SELECT owner, TIMESTAMPDIFF(MICROSECOND, NOW(3), lease_until) DIV 1000 FROM sync_lease WHERE name = ?`, source).
		Scan(&s.Leader, &leftMs)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("reading sync_lease: %w", err)
	}
	s.LeaseLeft = time.Duration(leftMs.Int64) * time.Millisecond
	rows, err := db.QueryContext(ctx, `SELECT state, COUNT(*) FROM rocketchat_writeback GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("reading rocketchat_writeback: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, err
		}
		s.Writebacks[state] = n
	}
	return s, rows.Err()
}

// String is the status as lines of text.
func (s *Status) String() string {
	if s.State == nil {
		return "never ran\n"
	}
	st := s.State
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s, mode poll\n", st.Phase)
	if s.LeaseLeft > 0 {
		fmt.Fprintf(&b, "  leader         %s (lease %s left)\n", s.Leader, s.LeaseLeft.Round(time.Millisecond))
	} else {
		fmt.Fprintf(&b, "  leader         none (the last, %q, lapsed %s ago)\n", s.Leader, (-s.LeaseLeft).Round(time.Second))
	}
	at := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%s (%s ago)", t.Format("2006-01-02T15:04:05.000Z"), st.Now.Sub(t).Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  caught up      %s\n", at(st.CaughtUpAt))
	fmt.Fprintf(&b, "  reconciled     %s\n", at(st.ReconciledAt))
	if age, ok := st.Staleness(); ok {
		fmt.Fprintf(&b, "  staleness      %s\n", age.Round(time.Millisecond))
	} else {
		fmt.Fprintf(&b, "  staleness      unknown (no complete snapshot yet)\n")
	}
	if st.Phase == PhaseSnapshot && st.SnapshotColl != "" {
		fmt.Fprintf(&b, "  snapshot at    %s after _id %q\n", st.SnapshotColl, st.SnapshotAfter)
	}
	if st.LastError != "" {
		fmt.Fprintf(&b, "  last error     %s\n", st.LastError)
	}
	fmt.Fprintf(&b, "  write-back     pending %d, done %d, conflict %d, parked %d\n",
		s.Writebacks[WritebackPending], s.Writebacks[WritebackDone], s.Writebacks[WritebackConflict], s.Writebacks[WritebackParked])
	return b.String()
}
