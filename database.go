package rocketchatvoip

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/closerhint"
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
	HasFastClose() bool
	FastClose(ctx context.Context, req store.FastCloseRequest) (store.Result, error)
}

// closerHints is the set of credentials that recently closed a room.
type closerHints interface {
	Has(userID, hashedToken string) bool
	Remember(userID, hashedToken string, k closerhint.Known)
	Lookup(userID, hashedToken string) (closerhint.Known, bool)
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

// pooled is the database of a shared pool, with the request store and
// closer hints that the handlers on it share.
type pooled struct {
	*dbpool.Pool
	requests *requestDB
	// settleWait bounds a request's wait for a pool whose first bring-up
	// has not yet returned (db_timeout).
	settleWait time.Duration
}

func (p pooled) Closers() closerHints { return p.requests.closers }

func (p pooled) Store() requestStore {
	s := p.requests.store.Load()
	if s == nil && p.waitSettled() {
		s = p.requests.store.Load()
	}
	if s == nil {
		return nil // not a typed nil
	}
	return s
}

// waitSettled waits, within settleWait, for the pool's first bring-up
// (Caddy may start serving a new config before the load's gate has
// started); false when it had already returned.
func (p pooled) waitSettled() bool {
	select {
	case <-p.Settled():
		return false
	default:
	}
	t := time.NewTimer(p.settleWait)
	defer t.Stop()
	select {
	case <-p.Settled():
	case <-t.C:
	}
	return true
}

// requestDB is what the handlers on one pool share across reloads: the
// request path's prepared statements, which the pool's bring-up prepares
// (a Preparer), and the credentials that recently closed rooms through it.
type requestDB struct {
	key     string
	closers *closerhint.Set
	// store is nil until the schema is in place and the statements are
	// prepared.
	store       atomic.Pointer[store.Store]
	preparation *dbpool.Preparation
}

// requestDBs holds the handlers' requestDB per pool.
var requestDBs = caddy.NewUsagePool()

// holdRequestDB is the requestDB of pool, made (and its Preparer
// registered) by its first holder; release gives the hold up.
func holdRequestDB(pool *dbpool.Pool) (*requestDB, error) {
	val, _, err := requestDBs.LoadOrNew(pool.Key(), func() (caddy.Destructor, error) {
		r := &requestDB{key: pool.Key(), closers: closerhint.New()}
		r.preparation = pool.Register(func(ctx context.Context, db *sql.DB) (io.Closer, error) {
			s, err := store.New(ctx, db)
			if err != nil {
				return nil, err
			}
			logWritePath(pool.Name(), s.WritePath())
			r.store.Store(s)
			return closerFunc(func() error {
				r.store.Store(nil)
				return s.Close()
			}), nil
		})
		return r, nil
	})
	if err != nil {
		return nil, err
	}
	return val.(*requestDB), nil
}

func (r *requestDB) release() { requestDBs.Delete(r.key) } //nolint:errcheck // Destruct cannot fail

// Destruct takes the statements off the pool; the pool closes them once
// no request is in flight.
func (r *requestDB) Destruct() error {
	r.preparation.Remove()
	return nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// logWritePath says how closes will be written: at info, and at warn when
// the engine has procedures that are not used (the operator can fix that).
func logWritePath(name string, path store.WritePath) {
	level := zap.InfoLevel
	if path.Fixable() {
		level = zap.WarnLevel
	}
	caddy.Log().Named("rocketchat_voip.database").Log(level, "closes are written by "+path.String(),
		zap.String("database", name), zap.String("engine", string(path.Engine)), zap.String("server_version", path.Version))
}

// dbSession is one request's use of the database: the steps of the
// contract that need it, each timed and counted, within one time budget.
//
// The budget is db_timeout for all of the request's database work, queues
// included, and is the session's own: the request's context stays the
// client's, so that running out of budget is never taken for the client
// leaving. A slot of db_concurrency (and the pool) is taken by the first
// step and kept for the next ones until letGo: a known closer's request
// holds one slot from its credentials to its close, and any other lets go
// of it while its body arrives.
type dbSession struct {
	h  *Handler
	r  *http.Request // r.Context() is the client's
	st *requestState
	// budget is what is left of db_timeout for the slots still to come.
	budget time.Duration

	// While a slot is held:
	held       bool
	store      requestStore
	ctx        context.Context // the client's, ending at the slot's deadline
	cancel     context.CancelFunc
	waited     time.Duration // for the slot
	heldFrom   time.Time
	inStep     bool // a step is running: a panic leaves it true
	stepFailed bool // a step's database work failed
	roundTrips int

	found    store.Found
	roomRead bool
}

func (h *Handler) newDBSession(r *http.Request, st *requestState) *dbSession {
	return &dbSession{h: h, r: r, st: st, budget: time.Duration(h.DBTimeout)}
}

// withDatabase runs step with the database, within what is left of the
// request's budget, taking a slot first if none is held. A step answers
// with (reply, true); a database error becomes 503 through db.failed, or,
// for a request whose budget went mostly to the queue, 503 overloaded.
func (db *dbSession) withDatabase(step func(context.Context) (reply, bool)) (reply, bool) {
	if !db.held {
		if rep, answered := db.hold(); answered {
			return rep, true
		}
	}
	db.inStep = true
	rep, answered := step(db.ctx)
	db.inStep = false
	if rep.outcome == OutcomeUnavailable && queueStarved(db.ctx, db.r, db.waited, time.Since(db.heldFrom)) {
		// Shed as well: its db_timeout went mostly to the queue, and the
		// database was no slower than usual for it.
		rep = replyOverloaded
	}
	db.stepFailed = db.stepFailed || rep.outcome == OutcomeUnavailable
	return rep, answered
}

// hold takes the pool and a slot of db_concurrency, waiting within the
// budget: only so many requests work on the database at once (adapted to
// its round-trip time), since a database serves a few concurrent requests
// best and loses throughput to contention past that.
func (db *dbSession) hold() (reply, bool) {
	if !db.h.db.Acquire() {
		// Only a request of a config already cleaned up, whose DSN no newer
		// config uses, gets here.
		return replyUnavailable, true
	}
	s := db.h.db.Store()
	if s == nil {
		// No server has answered yet (the pool keeps trying, and warns), or
		// the schema gate has not prepared this pool (the config is still
		// starting).
		db.h.db.Done()
		db.st.err = errDatabaseNotReady
		return replyUnavailable, true
	}
	waitFrom := time.Now()
	ctx, cancel := context.WithDeadline(db.r.Context(), waitFrom.Add(db.budget))
	acquire := db.h.dbLimit.Acquire
	if db.st.authenticated {
		// Real agents are not queued behind a flood of made-up credentials.
		acquire = db.h.dbLimit.AcquireAhead
	}
	if err := acquire(ctx); err != nil {
		cancel()
		db.h.db.Done()
		waited := time.Since(waitFrom)
		db.st.dbTime += waited
		db.budget -= waited
		err = fmt.Errorf("waiting for a database slot: %w", err)
		if errors.Is(err, context.DeadlineExceeded) {
			// Shed, not failed: the database never saw this request.
			db.st.err = err
			return replyOverloaded, true
		}
		return db.failed(err), true
	}
	db.held, db.store, db.ctx, db.cancel = true, s, ctx, cancel
	db.heldFrom = time.Now()
	db.waited = db.heldFrom.Sub(waitFrom)
	return reply{}, false
}

// letGo gives back the slot and the pool, if held, feeding the round trips
// to the adaptive bound (unless they may have been cut short), or halving
// it when the database work failed (or a step panicked).
func (db *dbSession) letGo() {
	if !db.held {
		return
	}
	held := time.Since(db.heldFrom)
	roundTrips := db.roundTrips
	if db.ctx.Err() != nil {
		// Its client went away or its time ran out: the last round trip
		// may have been cut short, and a short one taken for the fastest
		// would hold the bound at its floor for a minute.
		roundTrips = 0
	}
	if db.stepFailed || db.inStep {
		db.h.dbLimit.ReleaseFailed()
	} else {
		db.h.dbLimit.Release(held, roundTrips)
	}
	db.cancel()
	db.h.db.Done()
	db.budget -= db.waited + held
	db.held, db.store, db.ctx, db.cancel = false, nil, nil, nil
	db.inStep, db.stepFailed, db.roundTrips = false, false, 0
}

// queueStarved tells whether a request whose database work failed ran out
// of its budget (its client still there) after waiting longer for its slot
// than it then held it: under a pile-up, slots go one after another to
// requests with almost no time left, and those are shed, not database
// failures, and must not halve the bound.
func queueStarved(ctx context.Context, r *http.Request, waited, held time.Duration) bool {
	// By the deadline, not ctx.Err(): a dial or a read that times out at
	// the deadline can return before ctx's own timer marks it done.
	deadline, _ := ctx.Deadline()
	return !time.Now().Before(deadline) && r.Context().Err() == nil && held < waited
}

// authenticate reads and verifies the credentials of userID and the token
// whose hash is hashed, with the query a 401 or a 403 needs.
func (db *dbSession) authenticate(ctx context.Context, userID, hashed string) (store.User, error) {
	from := time.Now()
	creds, err := db.store.ReadCredentials(ctx, userID, hashed)
	db.spent(from, 1, err)
	return db.verify(creds, err, userID, hashed)
}

// authenticateWithRoom is authenticate reading the room of p in the same
// query, for credentials that recently closed a room and a valid body.
func (db *dbSession) authenticateWithRoom(ctx context.Context, userID, hashed string, p params.Params) (store.User, error) {
	from := time.Now()
	creds, found, err := db.store.ReadCredentialsAndRoom(ctx, userID, hashed, p.Rid, p.Token)
	db.spent(from, 1, err)
	db.found, db.roomRead = found, err == nil
	return db.verify(creds, err, userID, hashed)
}

// verify checks the credentials read, and remembers or forgets them as a
// closer's.
func (db *dbSession) verify(creds store.Credentials, err error, userID, hashed string) (store.User, error) {
	if err != nil {
		return store.User{}, err
	}
	closers := db.h.db.Closers()
	user, err := store.Verify(creds, userID, hashed, time.Duration(db.h.LoginExpiration), db.store.Now())
	if err != nil || !user.CanCloseRooms {
		closers.Remove(userID, hashed)
	} else {
		closers.Remember(userID, hashed, closerhint.Known{Username: user.Username, Name: user.Name, BypassRateLimit: user.BypassRateLimit})
	}
	return user, err
}

// closeRoom reads the room, unless authenticateWithRoom did, and closes it.
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
