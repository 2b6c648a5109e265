// Package dbpool shares one MySQL pool per DSN among every handler and app
// of every config that names it, so that a reload reuses connections and
// prepared statements, and the last holder to go closes them.
//
// A Pool is the database handle, the drain of requests in flight, the
// pool's settings and one bring-up loop. What depends on a whole config
// load (the settings its holders agree on, whether to migrate) is recorded
// on that load's Load while Caddy provisions it, and applied by Load.Start
// once every module of the load is provisioned (load.go): a load that is
// refused, or fails later, changes nothing that serves traffic.
//
// A pool is usable without its database: opening one connects to nothing,
// and the bring-up (schema checked or migrated, each holder's statements
// prepared), which a database that does not answer leaves to the
// background, keeps trying until it succeeds (bringup.go).
package dbpool

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dblimit"
)

var pools = caddy.NewUsagePool()

// Pool is a shared MySQL pool.
//
// Caddy may clean up an old config while one of its requests is still
// running, so the pool counts requests in flight and closes only when the
// last of them is done.
type Pool struct {
	db   *sql.DB
	key  string
	name string // server and database, for metrics and messages; no credentials

	// limiter bounds the requests working on the database at once; the
	// settings of the newest running load bound it (settings.go).
	limiter *dblimit.Limiter
	// loads are the started loads that hold settings for the pool, oldest
	// first: the last one's are in effect (under mu).
	loads []applied

	up bringUp // bringup.go

	mu      sync.Mutex
	active  int         // requests in flight
	closing bool        // the last holder is gone
	drained []io.Closer // to close once no request is in flight
}

// Hold returns the pool for dsn, opening it if no holder has it yet. Opening
// connects to nothing, and changes nothing of a pool already open: a load
// states what it asks of the pool on its Load. Each Hold is matched by one
// Release.
func Hold(dsn string) (*Pool, error) {
	setDriverLogger.Do(func() { _ = mysql.SetLogger(driverLogger{}) })
	cfg, err := dbconnect.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	val, _, err := pools.LoadOrNew(cfg.Key(), func() (caddy.Destructor, error) {
		connector, err := dbconnect.NewConnector(cfg)
		if err != nil {
			return nil, err
		}
		return open(cfg.Key(), cfg.String(), connector), nil
	})
	if err != nil {
		return nil, err
	}
	return val.(*Pool), nil
}

// open makes a pool on connector, with the default settings.
func open(key, name string, connector driver.Connector) *Pool {
	p := &Pool{key: key, name: name}
	p.db = dbconnect.NewDB(observedConnector{connector, p})
	p.up.init()
	def := Settings{}.effective()
	p.db.SetMaxOpenConns(def.MaxOpenConns)
	p.db.SetMaxIdleConns(def.MaxOpenConns)
	// At the lowest floor, so that the first load's settings start it at
	// their floor (SetBounds keeps what the limit learnt, within bounds).
	p.limiter = dblimit.New(1, 1)
	return p
}

// Release gives up one Hold on the pool.
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

// Key tells pools apart: two DSNs that differ only in options the pool
// does not depend on share one.
func (p *Pool) Key() string { return p.key }

// Limiter bounds the requests working on the database at once. It is the
// pool's for its whole life, so what it has learnt outlives reloads.
func (p *Pool) Limiter() *dblimit.Limiter { return p.limiter }

// Acquire marks a request in flight; false means the pool is closing.
func (p *Pool) Acquire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.active++
	return true
}

// Done ends a request that Acquire let in.
func (p *Pool) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active--
	if p.active > 0 {
		return
	}
	if p.closing {
		p.closeLocked()
		return
	}
	for _, c := range p.drained {
		c.Close()
	}
	p.drained = nil
}

// Destruct is called by the usage pool when no holder is left; the
// database handle closes once the last request in flight is done.
func (p *Pool) Destruct() error {
	p.up.stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closing = true
	if p.active == 0 {
		p.closeLocked()
	}
	return nil
}

// closeLocked closes what the preparations made, then the handle.
func (p *Pool) closeLocked() {
	p.up.mu.Lock()
	for _, r := range p.up.preps {
		if r.closer != nil {
			p.drained = append(p.drained, r.closer)
			r.closer = nil
		}
		r.removed = true
	}
	p.up.mu.Unlock()
	for _, c := range p.drained {
		c.Close()
	}
	p.drained = nil
	p.db.Close()
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
		c.p.up.reachable.Store(err == nil)
	}
	return conn, err
}
