// Package dbpool shares one MySQL pool per DSN among every handler and app
// of every config that names it, so that a reload reuses connections and
// prepared statements, and the last holder to go closes them.
//
// A pool's settings (its connection cap and the bound on concurrent
// database work) are the database's, not one handler's: every holder of
// one config that states them must state the same values, whatever order
// Caddy provisions them in, and each config load applies its own.
//
// A pool is usable without its database: opening one connects to nothing,
// and Setup, which brings it into service (schema checked or migrated,
// statements prepared), leaves a database that does not answer to a
// background loop that keeps trying (bringup.go).
package dbpool

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/closerhint"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dblimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

var pools = caddy.NewUsagePool()

// Settings are what a holder asks of the pool.
type Settings struct {
	// MaxOpenConns caps the pool's connections.
	MaxOpenConns int
	// DBConcurrency is the floor of the bound on requests working on the
	// database at once; the bound adapts up to MaxOpenConns.
	DBConcurrency int
	// Holder names the holder in messages, e.g. "the handler of /x".
	Holder string
}

// Pool is a shared MySQL pool with the request path's statements prepared
// on it.
//
// Caddy may clean up an old config while one of its requests is still
// running, so the pool counts requests in flight and closes only when the
// last of them is done.
type Pool struct {
	db   *sql.DB
	key  string
	name string // server and database, for metrics and messages; no credentials

	// store holds the prepared statements, nil until the schema is in place.
	store atomic.Pointer[store.Store]
	// ready is closed once store is first set.
	ready     chan struct{}
	readyOnce sync.Once
	// reachable says whether the last connection the pool opened succeeded.
	reachable atomic.Bool
	// migrators counts the holders that want the schema migrated.
	migrators atomic.Int32

	// setupMu serialises Setup; retrying (under it) says that the
	// background loop owns bringing the pool up.
	setupMu  sync.Mutex
	retrying bool
	lastErr  atomic.Pointer[error] // the loop's latest failure
	// stop ends the background loop when the pool closes.
	stop    context.CancelFunc
	stopped context.Context
	// closers are the credentials that recently closed rooms through this
	// pool: the handler reads credentials and room in one query for them.
	closers *closerhint.Set

	lastRequest atomic.Int64 // when the last request began, in Unix ns

	mu       sync.Mutex
	active   int  // requests in flight
	closing  bool // the last holder is gone
	settings Settings
	// limiter bounds the requests working on the database at once; nil
	// until a holder states settings.
	limiter *dblimit.Limiter
	// settingsLoad is the config load whose holders last set settings.
	settingsLoad *prometheus.Registry
}

// Get returns the pool for dsn, opening it if no holder has it yet, with
// the settings of the config being loaded (nil: the holder has no say, as
// the outbox app). Opening connects to nothing (Setup does). Each Get is
// matched by one Release.
func Get(ctx caddy.Context, dsn string, settings *Settings) (*Pool, error) {
	setDriverLogger.Do(func() { _ = mysql.SetLogger(driverLogger{}) })
	cfg, err := dbconnect.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	key := cfg.Key()
	val, _, err := pools.LoadOrNew(key, func() (caddy.Destructor, error) {
		connector, err := dbconnect.NewConnector(cfg)
		if err != nil {
			return nil, err
		}
		p := &Pool{key: key, name: cfg.String(), closers: closerhint.New(), ready: make(chan struct{})}
		p.stopped, p.stop = context.WithCancel(context.Background())
		p.db = dbconnect.NewDB(observedConnector{connector, p})
		p.db.SetMaxOpenConns(DefaultMaxOpenConns)
		p.db.SetMaxIdleConns(DefaultMaxOpenConns)
		return p, nil
	})
	if err != nil {
		return nil, err
	}
	p := val.(*Pool)
	if settings != nil {
		if err := p.apply(ctx, *settings); err != nil {
			p.Release() //nolint:errcheck // the conflict is the error that matters
			return nil, err
		}
	}
	return p, nil
}

// The settings of a pool whose holders state none.
const (
	DefaultMaxOpenConns  = 64
	DefaultDBConcurrency = 8
)

// apply sets the pool's settings for the config load of ctx: the first
// holder of a load sets them, and every other holder of that load must ask
// for the same, so that no order of provisioning can change them.
func (p *Pool) apply(ctx caddy.Context, s Settings) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Caddy makes one metrics registry per config load and hands it to every
	// module of that load: it tells the load apart from its predecessor,
	// whose holders keep the pool until they are cleaned up.
	load := ctx.GetMetricsRegistry()
	if p.settingsLoad == load {
		have := p.settings
		if have.MaxOpenConns != s.MaxOpenConns || have.DBConcurrency != s.DBConcurrency {
			return fmt.Errorf("%s asks for max_open_conns %d and db_concurrency %d, %s for max_open_conns %d and db_concurrency %d, "+
				"but both share the pool of %s: give every handler with this dsn the same values (or leave them unset on all)",
				have.Holder, have.MaxOpenConns, have.DBConcurrency, s.Holder, s.MaxOpenConns, s.DBConcurrency, p.name)
		}
		return nil
	}
	p.settingsLoad, p.settings = load, s
	p.db.SetMaxOpenConns(s.MaxOpenConns)
	p.db.SetMaxIdleConns(s.MaxOpenConns)
	if p.limiter == nil {
		p.limiter = dblimit.New(s.DBConcurrency, s.MaxOpenConns)
	} else {
		// A reload keeps what the limit has learnt, within the new bounds.
		p.limiter.SetBounds(s.DBConcurrency, s.MaxOpenConns)
	}
	return nil
}

// Release gives up one Get's hold on the pool.
func (p *Pool) Release() error {
	_, err := pools.Delete(p.key)
	return err
}

// Each calls fn for every pool held now.
func Each(fn func(*Pool)) {
	pools.Range(func(_, value any) bool {
		fn(value.(*Pool))
		return true
	})
}

// DB is the pool's database handle.
func (p *Pool) DB() *sql.DB { return p.db }

// Name is the server and database, without credentials.
func (p *Pool) Name() string { return p.name }

// Limiter bounds the requests working on the database at once; nil when no
// holder stated settings (only the outbox app holds the pool).
func (p *Pool) Limiter() *dblimit.Limiter {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.limiter
}

// Closers are the credentials that recently closed rooms through this pool.
func (p *Pool) Closers() *closerhint.Set { return p.closers }

// Store is the prepared request path, or nil while the schema is not in
// place.
func (p *Pool) Store() *store.Store { return p.store.Load() }

// Ready is closed once the statements are first prepared.
func (p *Pool) Ready() <-chan struct{} { return p.ready }

// Up reports whether the pool is in service: its statements are prepared
// and the last connection it opened succeeded.
func (p *Pool) Up() bool { return p.store.Load() != nil && p.reachable.Load() }

// AddMigrator records a holder that wants the schema migrated, until
// RemoveMigrator: a pool that reaches its database late migrates it then if
// any holder still wants that.
func (p *Pool) AddMigrator() { p.migrators.Add(1) }

// RemoveMigrator undoes one AddMigrator.
func (p *Pool) RemoveMigrator() { p.migrators.Add(-1) }

// publish makes s the pool's statements, unless the pool is closing or has
// them already (then s is closed); it reports whether s is in use.
func (p *Pool) publish(s *store.Store) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing || p.store.Load() != nil {
		s.Close()
		return false
	}
	p.store.Store(s)
	p.readyOnce.Do(func() { close(p.ready) })
	return true
}

// Acquire marks a request in flight; false means the pool is closing.
func (p *Pool) Acquire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.active++
	p.lastRequest.Store(time.Now().UnixNano())
	return true
}

// Busy reports whether requests are being served through the pool: one is
// in flight, or one began within the last busyWindow.
func (p *Pool) Busy() bool {
	p.mu.Lock()
	active := p.active
	p.mu.Unlock()
	return active > 0 || time.Since(time.Unix(0, p.lastRequest.Load())) < busyWindow
}

// busyWindow is how long after its last request the pool counts as busy:
// long enough to span the gaps between one client's requests.
const busyWindow = 250 * time.Millisecond

// Done ends a request that Acquire let in.
func (p *Pool) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active--
	if p.closing && p.active == 0 {
		p.closeLocked()
	}
}

// Destruct is called by the usage pool when no holder is left.
func (p *Pool) Destruct() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closing = true
	if p.active == 0 {
		p.closeLocked()
	}
	return nil
}

func (p *Pool) closeLocked() {
	p.stop()
	if s := p.store.Swap(nil); s != nil {
		s.Close()
	}
	p.db.Close()
}

// References is how many holders the pool has (for tests).
func (p *Pool) References() int {
	n, _ := pools.References(p.key)
	return n
}

// The driver's own messages (dropped connections and the like) go to
// Caddy's log rather than bare stderr. The driver's logger is process-wide,
// so it is set once, and reads Caddy's current logger at each message.
var setDriverLogger sync.Once

type driverLogger struct{}

func (driverLogger) Print(v ...any) {
	caddy.Log().Named("rocketchat_voip.mysql").Warn(strings.TrimSpace(fmt.Sprint(v...)))
}

// observedConnector records whether each connection the pool opens
// succeeds, for Up; it costs nothing per request, only per connection.
type observedConnector struct {
	driver.Connector
	p *Pool
}

func (c observedConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	// A caller that gave up says nothing about the server.
	if err == nil || !errors.Is(err, context.Canceled) {
		c.p.reachable.Store(err == nil)
	}
	return conn, err
}
