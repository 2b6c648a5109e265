package rcsync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Follower is how the sync learns of changes after its snapshot. The poller
// (PollFollower) reads documents changed since a checkpoint, by _updatedAt;
// Rocket.Chat does not bump _updatedAt when it removes login tokens or
// hard-deletes users and visitors, so a poller is paired with a periodic
// reconciliation whose period bounds how long a revoked token stays valid.
// A change-stream follower would implement the same interface, with a
// resume token as its checkpoint; it is not shipped (docs/sync.md says what
// testing it needs).
type Follower interface {
	// Mode names the follower for status and metrics ("poll").
	Mode() string
	// CatchUp applies every change since the checkpoint in st, committing
	// the checkpoint with the rows of each batch, and stamps caught_up_at
	// once it reached the present.
	CatchUp(ctx context.Context, s *Syncer, st *State) error
}

// Config is a sync's configuration, defaults filled in.
type Config struct {
	Source            string        // sync_state.source and the lease's name
	Owner             string        // this gateway, in sync_lease
	LeaseTTL          time.Duration // a dead leader is replaced after this
	PollInterval      time.Duration
	ReconcileInterval time.Duration // the revocation bound of the poller
	Overlap           time.Duration // how far back each poll re-reads (clock skew, login race)
	Batch             int
}

// Observer hears what the sync does (metrics, logs).
type Observer interface {
	Leader(bool)
	CaughtUp(st *State)
	PassDone(kind string, users int, took time.Duration)
	Error(what string, err error)
	Warn(msg string, kv ...any)
}

// Syncer runs the sync: a snapshot, then following, with periodic
// reconciliations, while it holds the lease.
type Syncer struct {
	cfg      Config
	db       *sql.DB
	src      *Source
	lease    *Lease
	w        *writer
	follower Follower
	obs      Observer
	// Alongside, when set, runs every poll interval while this gateway
	// leads, beside the rounds (the write-back: a close is not held up by a
	// long pass).
	Alongside func(ctx context.Context) error

	mu     sync.Mutex
	leader bool

	afterPage func(coll string) // tests: called after each page a pass committed
}

// New makes a syncer; Run starts it.
func New(cfg Config, db *sql.DB, src *Source, obs Observer) *Syncer {
	lease := &Lease{DB: db, Name: cfg.Source, Owner: cfg.Owner, TTL: cfg.LeaseTTL}
	return &Syncer{
		cfg: cfg, db: db, src: src, lease: lease, obs: obs, follower: PollFollower{},
		w: &writer{db: db, lease: lease, warn: obs.Warn},
	}
}

// Mode is the follower's name.
func (s *Syncer) Mode() string { return s.follower.Mode() }

// Leading reports whether this gateway holds the lease.
func (s *Syncer) Leading() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leader
}

func (s *Syncer) setLeader(v bool) {
	s.mu.Lock()
	changed := s.leader != v
	s.leader = v
	s.mu.Unlock()
	if changed {
		s.obs.Leader(v)
	}
}

// Run syncs until ctx ends, then gives the lease up.
func (s *Syncer) Run(ctx context.Context) {
	defer func() {
		if s.Leading() {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.lease.Release(rctx)
			cancel()
			s.setLeader(false)
		}
	}()
	if s.Alongside != nil {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			for ctx.Err() == nil {
				if s.Leading() {
					if err := s.Alongside(ctx); err != nil && ctx.Err() == nil {
						s.obs.Error("write-back round failed", err)
					}
				}
				select {
				case <-ctx.Done():
				case <-time.After(s.cfg.PollInterval):
				}
			}
		}()
	}
	for ctx.Err() == nil {
		err := s.Round(ctx)
		switch {
		case errors.Is(err, ErrNotLeader):
			s.setLeader(false)
		case err != nil && ctx.Err() == nil:
			s.obs.Error("sync round failed", err)
			noteError(ctx, s.db, s.cfg.Source, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(s.cfg.PollInterval):
		}
	}
}

// Round is one turn of the loop: take or renew the lease; then, as leader,
// snapshot (or resume one), or catch up and reconcile when due.
func (s *Syncer) Round(ctx context.Context) error {
	ok, err := s.lease.Acquire(ctx)
	if err != nil {
		return err
	}
	s.setLeader(ok)
	if !ok {
		return nil
	}
	// A pass reads for longer than a lease lasts: the lease is renewed
	// beside it, and a renewal that finds it lost ends the round (each
	// commit checks it too, so nothing is applied without it).
	ctx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	go s.renew(ctx, lost)
	err = s.lead(ctx)
	if err != nil && errors.Is(context.Cause(ctx), ErrNotLeader) {
		return ErrNotLeader
	}
	return err
}

// lead is a round's work once the lease is held.
func (s *Syncer) lead(ctx context.Context) error {
	st, err := readState(ctx, s.db, s.cfg.Source, "")
	if err != nil {
		return err
	}
	if st == nil {
		st = &State{Source: s.cfg.Source, Phase: PhaseSnapshot, Cursors: map[string]Cursor{}}
	}
	if st.Phase != PhasePoll {
		if err := s.pass(ctx, st, true); err != nil {
			return err
		}
	} else {
		if err := s.follower.CatchUp(ctx, s, st); err != nil {
			return err
		}
		if st.ReconciledAt.IsZero() || st.Now.Sub(st.ReconciledAt) >= s.cfg.ReconcileInterval {
			if err := s.pass(ctx, st, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// renew extends the lease every third of its time until ctx ends; lost is
// called with ErrNotLeader once it cannot be held.
func (s *Syncer) renew(ctx context.Context, lost context.CancelCauseFunc) {
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := s.lease.Renew(ctx)
		if err == nil && !ok {
			lost(ErrNotLeader)
			return
		}
	}
}

// mysqlNow is the server's clock.
func (s *Syncer) mysqlNow(ctx context.Context) (time.Time, error) {
	var now time.Time
	err := s.db.QueryRowContext(ctx, `SELECT NOW(3)`).Scan(&now)
	return now, err
}

// pass reads every document of interest of every collection, in _id order,
// applying each page with its position in one transaction, and then sweeps
// the rows whose documents are gone. As a snapshot it is resumable (a
// restart continues after the last page committed) and it ends the
// snapshot phase; as a reconciliation it is what bounds how long a token
// that Rocket.Chat removed without bumping _updatedAt stays in MySQL.
func (s *Syncer) pass(ctx context.Context, st *State, snapshot bool) error {
	began := time.Now()
	if snapshot && st.SnapshotStart.IsZero() {
		// Before reading anything: the poller then re-reads from here on,
		// so a change made while the snapshot reads is not missed.
		now, err := s.mysqlNow(ctx)
		if err != nil {
			return err
		}
		st.SnapshotStart = now
		st.SnapshotColl, st.SnapshotAfter = "", ""
		st.Cursors = map[string]Cursor{}
		for _, c := range Collections {
			st.Cursors[c] = Cursor{Updated: time.Now().UTC().Add(-s.cfg.Overlap)}
		}
		if err := s.w.commit(ctx, func(tx *sql.Tx) error { return saveState(ctx, tx, st, false, time.Time{}) }); err != nil {
			return err
		}
	}
	passStart := st.SnapshotStart
	if !snapshot {
		now, err := s.mysqlNow(ctx)
		if err != nil {
			return err
		}
		passStart = now
	}
	start := 0
	if snapshot && st.SnapshotColl != "" {
		start = max(slices.Index(Collections, st.SnapshotColl), 0)
	}
	users := 0
	lastPoll, pollTook := time.Now(), time.Duration(0)
	for _, coll := range Collections[start:] {
		after := ""
		if snapshot && coll == st.SnapshotColl {
			after = st.SnapshotAfter
		}
		err := s.src.ScanByID(ctx, coll, after, s.cfg.Batch, func(page *Page) error {
			if snapshot {
				st.SnapshotColl, st.SnapshotAfter = coll, page.LastID
			}
			err := s.w.commit(ctx, func(tx *sql.Tx) error {
				if err := s.w.apply(ctx, tx, page); err != nil {
					return fmt.Errorf("applying %s: %w", coll, err)
				}
				if snapshot {
					return saveState(ctx, tx, st, false, time.Time{})
				}
				return nil
			})
			if err != nil {
				return err
			}
			if coll == CollUsers {
				users += page.Len
			}
			if s.afterPage != nil {
				s.afterPage(coll)
			}
			// A reconciliation takes long on a large Rocket.Chat: the poll
			// goes on between its pages, so that a login does not wait for
			// it. (A snapshot is stale anyway, and reads everything.)
			// At most half the time goes to polls: a poll scans whole
			// collections where Rocket.Chat has no _updatedAt index.
			if !snapshot && time.Since(lastPoll) >= max(s.cfg.PollInterval, pollTook) {
				began := time.Now()
				if err := s.follower.CatchUp(ctx, s, st); err != nil {
					return err
				}
				lastPoll, pollTook = time.Now(), time.Since(began)
			}
			return ctx.Err()
		})
		if err != nil {
			return err
		}
	}
	// The sweep runs only after a complete pass: never on a partial one.
	for _, coll := range Collections {
		ids, err := s.src.IDs(ctx, coll)
		if err != nil {
			return err
		}
		if _, err := s.w.sweep(ctx, coll, ids); err != nil {
			return fmt.Errorf("sweeping %s: %w", coll, err)
		}
	}
	st.Phase = PhasePoll
	st.SnapshotColl, st.SnapshotAfter, st.SnapshotStart = "", "", time.Time{}
	if err := s.w.commit(ctx, func(tx *sql.Tx) error { return saveState(ctx, tx, st, false, passStart) }); err != nil {
		return err
	}
	st.ReconciledAt = passStart
	kind := "reconcile"
	if snapshot {
		kind = "snapshot"
	}
	s.obs.PassDone(kind, users, time.Since(began))
	if snapshot {
		// Follow at once: the changes made while the snapshot read.
		return s.follower.CatchUp(ctx, s, st)
	}
	return nil
}

// PollFollower follows by reading documents whose _updatedAt is after the
// checkpoint, and again those changed within the last overlap: Rocket.Chat's
// login bumps lastLogin, and _updatedAt with it, just before Meteor adds the
// token without bumping it, so the user is read again after the token is in;
// the overlap also covers clock skew between Rocket.Chat's servers and this
// one.
type PollFollower struct{}

// Mode is "poll".
func (PollFollower) Mode() string { return "poll" }

// CatchUp reads each collection's changes from its cursor less the overlap,
// page by page, each page and the cursor past it committed together; the
// last commit stamps caught_up_at.
func (PollFollower) CatchUp(ctx context.Context, s *Syncer, st *State) error {
	if st.Cursors == nil {
		st.Cursors = map[string]Cursor{}
	}
	for _, coll := range Collections {
		cur := st.Cursors[coll]
		// Read again what changed in the last overlap (by this clock), as
		// well as everything after the cursor.
		from := cur
		if horizon := time.Now().UTC().Add(-s.cfg.Overlap); horizon.Before(cur.Updated) {
			from = Cursor{Updated: horizon}
		}
		err := s.src.ChangedAfter(ctx, coll, from, s.cfg.Batch, func(page *Page) error {
			last := Cursor{Updated: page.LastUpdated, ID: page.LastID}
			if last.Updated.After(cur.Updated) || (last.Updated.Equal(cur.Updated) && last.ID > cur.ID) {
				st.Cursors[coll] = last
			}
			return s.w.commit(ctx, func(tx *sql.Tx) error {
				if err := s.w.apply(ctx, tx, page); err != nil {
					return fmt.Errorf("applying %s: %w", coll, err)
				}
				return saveState(ctx, tx, st, false, time.Time{})
			})
		})
		if err != nil {
			return err
		}
	}
	if err := s.w.commit(ctx, func(tx *sql.Tx) error { return saveState(ctx, tx, st, true, time.Time{}) }); err != nil {
		return err
	}
	fresh, err := readState(ctx, s.db, s.cfg.Source, "")
	if err == nil && fresh != nil {
		*st = *fresh
		s.obs.CaughtUp(st)
	}
	return err
}
