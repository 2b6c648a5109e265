package rocketchatvoip

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/params"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

// requestStore is what the request path asks of the database: the store
// package's prepared statements, or a stand-in in tests of the HTTP logic.
type requestStore interface {
	Now() time.Time
	ReadCredentials(ctx context.Context, userID, hashedToken string) (store.Credentials, error)
	ReadCredentialsAndRoom(ctx context.Context, userID, hashedToken, rid, visitorToken string) (store.Credentials, store.Found, error)
	ReadRoom(ctx context.Context, rid, visitorToken string) (store.Found, error)
	CloseRoom(ctx context.Context, req store.CloseRequest, f store.Found) (store.Result, error)
}

// closerHints is the set of credentials that recently closed a room.
type closerHints interface {
	Has(userID, hashedToken string) bool
	Add(userID, hashedToken string)
	Remove(userID, hashedToken string)
}

// database is what a handler holds of its pool: the pool itself, or a
// stand-in in tests of the HTTP logic.
type database interface {
	// Acquire marks a request in flight (false: the pool is closing), Done
	// ends it.
	Acquire() bool
	Done()
	Closers() closerHints
	// Store is nil until the schema is in place and the statements are
	// prepared.
	Store() requestStore
}

// errDatabaseNotReady answers room.close while the pool is not in service;
// the pool's warnings say why, so a request logs it only at debug level.
var errDatabaseNotReady = errors.New("the database is not in service yet: no server has answered, or the schema is not current")

// pooled is the database of a shared pool.
type pooled struct{ *dbpool.Pool }

func (p pooled) Closers() closerHints { return p.Pool.Closers() }

func (p pooled) Store() requestStore {
	if s := p.Pool.Store(); s != nil {
		return s
	}
	return nil // not a typed nil
}

// withDatabase runs fn with the database: it holds the pool open, bounds
// the work by db_timeout, waits for a slot of db_concurrency, times every
// statement, and feeds the round trips back to the adaptive bound. fn
// returns the reply; a database error becomes 503 through db.failed.
func (h *Handler) withDatabase(r *http.Request, st *requestState, fn func(context.Context, *dbSession) reply) reply {
	if !h.db.Acquire() {
		// Only a request of a config already cleaned up, whose DSN no newer
		// config uses, gets here.
		return replyUnavailable
	}
	defer h.db.Done()
	s := h.db.Store()
	if s == nil {
		// No server has answered yet (the pool keeps trying, and warns), or
		// the schema gate has not prepared this pool (the config is still
		// starting).
		st.err = errDatabaseNotReady
		return replyUnavailable
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.DBTimeout))
	defer cancel()

	// Only so many requests work on the database at once (db_concurrency,
	// adapted to the database's round-trip time); the rest wait here, within
	// db_timeout. A database serves a few concurrent requests best and
	// loses throughput to contention past that.
	db := &dbSession{r: r, st: st, store: s, closers: h.db.Closers(), loginExpiration: time.Duration(h.LoginExpiration)}
	waitFrom := time.Now()
	acquire := h.dbLimit.Acquire
	if st.authenticated {
		// Real agents are not queued behind a flood of made-up credentials.
		acquire = h.dbLimit.AcquireAhead
	}
	if err := acquire(ctx); err != nil {
		st.dbTime += time.Since(waitFrom)
		if errors.Is(err, context.DeadlineExceeded) {
			// Shed, not failed: the database never saw this request.
			st.err = fmt.Errorf("waiting for a database slot: %w", err)
			return replyOverloaded
		}
		return db.failed(fmt.Errorf("waiting for a database slot: %w", err))
	}
	heldFrom := time.Now()
	failed := true // unless fn returns a reply other than 503: a panic in fn gives the slot back too
	defer func() {
		if failed {
			h.dbLimit.ReleaseFailed()
		} else {
			h.dbLimit.Release(time.Since(heldFrom), db.roundTrips)
		}
	}()
	rep := fn(ctx, db)
	if rep.outcome == OutcomeUnavailable && queueStarved(ctx, r, heldFrom.Sub(waitFrom), time.Since(heldFrom)) {
		// Shed as well: its db_timeout went mostly to the queue, and the
		// database was no slower than usual for it.
		rep = replyOverloaded
	}
	failed = rep.outcome == OutcomeUnavailable
	return rep
}

// queueStarved tells whether a request whose database work failed ran out
// of db_timeout (its client still there) after waiting longer for its slot
// than it then held it: under a pile-up, slots go one after another to
// requests with almost no time left, and those are shed, not database
// failures, and must not halve the bound.
func queueStarved(ctx context.Context, r *http.Request, waited, held time.Duration) bool {
	// By the deadline, not ctx.Err(): a dial or a read that times out at
	// the deadline can return before ctx's own timer marks it done.
	deadline, _ := ctx.Deadline()
	return !time.Now().Before(deadline) && r.Context().Err() == nil && held < waited
}

// dbSession is one request's use of the database: the steps of the
// contract that need it, each timed and counted.
type dbSession struct {
	r               *http.Request
	st              *requestState
	store           requestStore
	closers         closerHints
	loginExpiration time.Duration

	roundTrips int
	found      store.Found
	roomRead   bool
}

// authenticate reads and verifies the credentials of userID and the token
// whose hash is hashed. Credentials that
// recently closed a room read the room in the same query when the body is
// valid; all others (unknown tokens above all) take the cheaper query that
// a 401 or a 403 needs, and read the room later if they get there.
func (db *dbSession) authenticate(ctx context.Context, userID, hashed string, p params.Params, bodyValid bool) (store.User, error) {
	var (
		creds store.Credentials
		err   error
	)
	from := time.Now()
	if bodyValid && db.closers.Has(userID, hashed) {
		creds, db.found, err = db.store.ReadCredentialsAndRoom(ctx, userID, hashed, p.Rid, p.Token)
		db.roomRead = err == nil
	} else {
		creds, err = db.store.ReadCredentials(ctx, userID, hashed)
	}
	db.spent(from, 1, err)
	if err != nil {
		return store.User{}, err
	}
	user, err := store.Verify(creds, userID, hashed, db.loginExpiration, db.store.Now())
	switch {
	case err != nil || !user.CanCloseRooms:
		db.closers.Remove(userID, hashed)
	default:
		db.closers.Add(userID, hashed)
	}
	return user, err
}

// closeRoom reads the room, unless authenticate did, and closes it.
func (db *dbSession) closeRoom(ctx context.Context, req store.CloseRequest) error {
	if !db.roomRead {
		from := time.Now()
		var err error
		db.found, err = db.store.ReadRoom(ctx, req.Rid, req.VisitorToken)
		db.spent(from, 1, err)
		if err != nil {
			return err
		}
	}
	from := time.Now()
	res, err := db.store.CloseRoom(ctx, req, db.found)
	db.spent(from, res.RoundTrips, nil)
	return err
}

// spent accounts for database work that began at from and made roundTrips
// round trips (none when it failed).
func (db *dbSession) spent(from time.Time, roundTrips int, err error) {
	db.st.dbTime += time.Since(from)
	if err == nil {
		db.roundTrips += roundTrips
	}
}

// failed answers a request whose database work failed: 503, unless the
// failure is only the client hanging up (its context was cancelled), which
// says nothing about the database.
func (db *dbSession) failed(err error) reply {
	db.st.err = err
	if errors.Is(db.r.Context().Err(), context.Canceled) {
		return replyClientClosed
	}
	return replyUnavailable
}
