package dbpool

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
)

const (
	// StartWait is how long a start or a reload waits for a database that
	// has not answered yet before it goes on without it (the bring-up goes
	// on in the background): a node that boots during a partition serves
	// its other traffic at once.
	StartWait = 500 * time.Millisecond
	// firstContact bounds one attempt's wait for a server to answer; it is
	// also how long a load that requires the database waits for it.
	firstContact = 5 * time.Second
	// setupTimeout bounds the schema work and preparation once a server
	// answers (a migration may wait up to 60 s for another's lock).
	setupTimeout = 2 * time.Minute
	// retryMin and retryMax bound the loop's wait between attempts while no
	// server answers: a database that comes back is in use within about
	// retryMax.
	retryMin, retryMax = 100 * time.Millisecond, time.Second
	// retryRefused is the wait after a server refused the configuration
	// (access denied, say): only an operator fixes that, and trying every
	// second would fill the server's log.
	retryRefused = 5 * time.Second
	// warnEvery is how often the loop repeats its warning.
	warnEvery = 5 * time.Second
)

// A Preparer readies one holder's use of a pool once its schema is
// current, typically by preparing statements; the pool closes what it
// returns when the holder removes it or the pool closes, once no request
// is in flight.
type Preparer func(ctx context.Context, db *sql.DB) (io.Closer, error)

// Preparation is a Preparer registered on a pool.
type Preparation struct {
	p       *Pool
	prepare Preparer
	ready   chan struct{} // closed once prepare succeeded
	closer  io.Closer     // what prepare returned (under p.up.mu)
	removed bool          // under p.up.mu
}

// Ready is closed once the preparation has run.
func (r *Preparation) Ready() <-chan struct{} { return r.ready }

func (r *Preparation) done() bool {
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// bringUp is a pool's one bring-up loop and what it has done.
type bringUp struct {
	ctx    context.Context // ends when the pool closes
	cancel context.CancelFunc
	// schemaStep checks or migrates the schema (schema.Check or Migrate);
	// a test of the loop replaces it.
	schemaStep func(ctx context.Context, db *sql.DB, migrate bool) (applied []int, err error)

	// settled is closed when the first BringUp returns: a request that
	// comes before (the HTTP app may start before the load's gate) waits
	// for it rather than fail.
	settled     chan struct{}
	settledOnce sync.Once

	mu       sync.Mutex
	preps    []*Preparation
	schemaOK bool     // the schema was found current
	running  bool     // the loop runs
	current  *attempt // the loop's attempt in progress, or its last

	lastErr   atomic.Pointer[error] // the loop's latest failure
	migrators atomic.Int32          // the started loads that migrate the pool
	reachable atomic.Bool           // the last connection the pool opened succeeded
}

// attempt is one try of the loop.
type attempt struct {
	answered chan struct{} // closed when a server answered the first contact
	done     chan struct{} // closed when the attempt is over; err is set then
	err      error
	waiters  atomic.Int32 // BringUps waiting to report err
}

func newAttempt() *attempt {
	return &attempt{answered: make(chan struct{}), done: make(chan struct{})}
}

func (a *attempt) over() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

func (b *bringUp) init() {
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.schemaStep = checkOrMigrate
	b.settled = make(chan struct{})
}

// Settled is closed once the pool's first bring-up has returned, in
// service or not.
func (p *Pool) Settled() <-chan struct{} { return p.up.settled }

func (b *bringUp) stop() { b.cancel() }

func checkOrMigrate(ctx context.Context, db *sql.DB, migrate bool) ([]int, error) {
	if !migrate {
		return nil, schema.Check(ctx, db)
	}
	return schema.Migrate(ctx, db)
}

// Register adds a preparation to the pool; it runs in the next bring-up
// (the next BringUp, or the loop already running). The holder removes it.
func (p *Pool) Register(prepare Preparer) *Preparation {
	r := &Preparation{p: p, prepare: prepare, ready: make(chan struct{})}
	p.up.mu.Lock()
	defer p.up.mu.Unlock()
	p.up.preps = append(p.up.preps, r)
	return r
}

// Remove takes the preparation off its pool; what it prepared is closed
// once no request is in flight.
func (r *Preparation) Remove() {
	b := &r.p.up
	b.mu.Lock()
	r.removed = true
	b.preps = slices.DeleteFunc(b.preps, func(x *Preparation) bool { return x == r })
	closer := r.closer
	r.closer = nil
	b.mu.Unlock()
	if closer != nil {
		r.p.closeWhenDrained(closer)
	}
}

// Up reports whether the pool is in service: its schema is current, every
// holder's preparation has run, and the last connection it opened
// succeeded. It asks the database nothing.
func (p *Pool) Up() bool { return p.inService() && p.up.reachable.Load() }

func (p *Pool) inService() bool {
	b := &p.up
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inServiceLocked()
}

func (b *bringUp) inServiceLocked() bool {
	if !b.schemaOK {
		return false
	}
	for _, r := range b.preps {
		if !r.done() {
			return false
		}
	}
	return true
}

// BringUp brings the pool into service: it connects, migrates the schema
// (when a started load migrates it) or checks that it is current, and runs
// every registered preparation. It waits up to wait for a server to answer;
// once one has, it waits for the whole bring-up, so that what a server says
// is final and returned: access denied, an unknown database, a missing
// privilege, and a schema older than this build needs without migrate
// (*schema.OutdatedError).
//
// When no server answers in time the error is a *dbconnect.UnreachableError
// and the bring-up goes on in the background, with backoff, until it
// succeeds or the pool closes; a refusal it meets there is logged at error.
// A pool in service is left as it is.
func (p *Pool) BringUp(wait time.Duration) error {
	b := &p.up
	defer b.settledOnce.Do(func() { close(b.settled) })
	b.mu.Lock()
	switch {
	case b.inServiceLocked():
		b.mu.Unlock()
		return nil
	case b.running && b.current.over():
		// The loop is waiting to try again: it owns the bring-up.
		b.mu.Unlock()
		return &dbconnect.UnreachableError{Name: p.name, Err: p.lastFailure()}
	case !b.running:
		b.running = true
		b.current = newAttempt()
		go p.loop(b.current)
	}
	att := b.current
	att.waiters.Add(1)
	b.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-att.answered:
		<-att.done
	case <-att.done:
	case <-timer.C:
		att.waiters.Add(-1)
		return &dbconnect.UnreachableError{Name: p.name, Err: fmt.Errorf("no answer within %v; still trying", wait)}
	}
	switch err := att.err; {
	case err == nil:
		return nil
	case retryable(err):
		return &dbconnect.UnreachableError{Name: p.name, Err: cause(err)}
	default:
		return err
	}
}

// loop makes attempts until the pool is in service or closes, starting
// with att; it warns at most every warnEvery.
func (p *Pool) loop(att *attempt) {
	b := &p.up
	wait := retryMin
	var (
		warned  time.Time
		lastMsg string
	)
	failedBefore := false
	for {
		err := p.try(att)
		if b.ctx.Err() != nil {
			return
		}
		b.mu.Lock()
		if err == nil && b.inServiceLocked() {
			b.running = false
			b.mu.Unlock()
			if failedBefore || att.waiters.Load() == 0 { // no BringUp saw it
				logger().Info("database reached: room.close is served", zap.String("database", p.name))
			}
			return
		}
		b.mu.Unlock()
		if err != nil {
			failedBefore = true
			p.failed(err)
			level, msg := zap.WarnLevel, "database unreachable: room.close answers 503 until it is; still trying"
			wait = min(2*wait, retryMax)
			switch {
			case errors.As(err, new(*schema.OutdatedError)):
				msg = "database schema outdated and no site migrates it: room.close answers 503 until it is migrated; checking again"
			case !retryable(err):
				level, msg = zap.ErrorLevel, "database refused the configuration: room.close answers 503; trying again in case it is fixed"
				wait = retryRefused
			}
			// A new state is logged at once, the same one every warnEvery.
			switch {
			case att.waiters.Load() > 0:
				warned = time.Now() // the BringUp that waited reports it
			case msg != lastMsg || time.Since(warned) >= warnEvery:
				logger().Log(level, msg, zap.String("database", p.name), zap.Error(cause(err)))
				warned = time.Now()
			}
			lastMsg = msg
			select {
			case <-b.ctx.Done():
				return
			case <-time.After(wait/2 + rand.N(wait/2+1)):
			}
		}
		b.mu.Lock()
		att = newAttempt()
		b.current = att
		b.mu.Unlock()
	}
}

// try is one attempt: the first contact, the schema, then the
// preparations not yet run.
func (p *Pool) try(att *attempt) (err error) {
	defer func() {
		att.err = err
		close(att.done)
	}()
	b := &p.up
	pingCtx, cancel := context.WithTimeout(b.ctx, firstContact)
	err = p.db.PingContext(pingCtx)
	cancel()
	if err != nil && dbconnect.Retryable(err) {
		return &dbconnect.UnreachableError{Name: p.name, Err: err}
	}
	if err != nil {
		return fmt.Errorf("cannot connect to MySQL at %s: %w", p.name, err)
	}
	close(att.answered)
	ctx, cancel := context.WithTimeout(b.ctx, setupTimeout)
	defer cancel()
	b.mu.Lock()
	schemaOK := b.schemaOK
	b.mu.Unlock()
	if !schemaOK {
		applied, err := b.schemaStep(ctx, p.db, b.migrators.Load() > 0)
		if len(applied) > 0 {
			logger().Info("applied schema migrations", zap.String("database", p.name), zap.Ints("versions", applied))
		}
		if err != nil {
			if errors.As(err, new(*schema.OutdatedError)) {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			return fmt.Errorf("bringing the schema of %s up: %w", p.name, err)
		}
		b.mu.Lock()
		b.schemaOK = true
		b.mu.Unlock()
	}
	for {
		r := p.nextPreparation()
		if r == nil {
			return nil
		}
		closer, err := r.prepare(ctx, p.db)
		if err != nil {
			return fmt.Errorf("preparing statements on %s: %w", p.name, err)
		}
		b.mu.Lock()
		if r.removed {
			b.mu.Unlock()
			closer.Close()
			continue
		}
		r.closer = closer
		close(r.ready)
		b.mu.Unlock()
	}
}

func (p *Pool) nextPreparation() *Preparation {
	p.up.mu.Lock()
	defer p.up.mu.Unlock()
	for _, r := range p.up.preps {
		if !r.done() {
			return r
		}
	}
	return nil
}

// failed records the latest failure of the loop, for the holders that
// arrive while it runs.
func (p *Pool) failed(err error) {
	err = cause(err)
	p.up.lastErr.Store(&err)
}

// cause is err without the UnreachableError around it, whose message names
// the database that the log line names already.
func cause(err error) error {
	var away *dbconnect.UnreachableError
	if errors.As(err, &away) {
		return away.Err
	}
	return err
}

func (p *Pool) lastFailure() error {
	if err := p.up.lastErr.Load(); err != nil {
		return fmt.Errorf("still trying; last: %w", *err)
	}
	return errors.New("still trying")
}

// AddMigrator records a started load that wants the schema migrated, until
// RemoveMigrator: a pool that reaches its database late migrates it then if
// any load still wants that.
func (p *Pool) AddMigrator() { p.up.migrators.Add(1) }

// RemoveMigrator undoes one AddMigrator.
func (p *Pool) RemoveMigrator() { p.up.migrators.Add(-1) }

// closeWhenDrained closes c now if no request is in flight, or else when
// the last one is done.
func (p *Pool) closeWhenDrained(c io.Closer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active == 0 {
		c.Close()
		return
	}
	p.drained = append(p.drained, c)
}

// logger is Caddy's logger of the moment: a pool outlives the configs, and
// their loggers, that opened it.
func logger() *zap.Logger { return caddy.Log().Named("rocketchat_voip.database") }

// retryable reports whether err leaves the pool to try again in the
// background; an outdated schema, like a server's refusal, is final here,
// and so is anything while the build's own migrations are broken.
func retryable(err error) bool {
	if _, broken := schema.Migrations(); broken != nil {
		return false
	}
	return !errors.As(err, new(*schema.OutdatedError)) && dbconnect.Retryable(err)
}
