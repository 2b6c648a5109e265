package rocketchatvoip

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/auth"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/closerhint"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/roomstore"
)

// pools holds one dbPool per DSN, shared by every config that names it, so
// a reload reuses connections and prepared statements, and the last config
// to go closes them.
var pools = caddy.NewUsagePool()

// dbPool is a MySQL pool with the statements prepared on it.
//
// Caddy may clean up an old config while one of its requests is still
// running, so the pool counts requests in flight and closes only when the
// last of them is done.
type dbPool struct {
	*sql.DB
	name string // server and database, for metrics and messages; no credentials

	// stores holds the prepared statements, nil until the schema is in place.
	stores atomic.Pointer[stores]
	// closers are the credentials that recently closed rooms through this
	// pool: the handler reads credentials and room in one query for them.
	closers *closerhint.Set

	mu      sync.Mutex
	active  int  // requests in flight
	closing bool // the last config using the pool is gone
}

// stores are the statements prepared on a pool.
type stores struct {
	auth  *auth.Store
	rooms *roomstore.Store
}

// prepare prepares the statements once the schema is in place; later
// calls (other configs, reloads) find them ready.
func (p *dbPool) prepare(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stores.Load() != nil {
		return nil
	}
	a, err := auth.New(ctx, p.DB)
	if err != nil {
		return err
	}
	r, err := roomstore.New(ctx, p.DB)
	if err != nil {
		a.Close()
		return err
	}
	p.stores.Store(&stores{auth: a, rooms: r})
	return nil
}

// acquire marks a request in flight; false means the pool is closing.
func (p *dbPool) acquire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.active++
	return true
}

func (p *dbPool) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active--
	if p.closing && p.active == 0 {
		p.closeLocked()
	}
}

// Destruct is called by the usage pool when no config uses the pool.
func (p *dbPool) Destruct() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closing = true
	if p.active == 0 {
		p.closeLocked()
	}
	return nil
}

func (p *dbPool) closeLocked() {
	if st := p.stores.Swap(nil); st != nil {
		st.auth.Close()
		st.rooms.Close()
	}
	p.DB.Close()
}

// sharedPool returns the pool for dsn from the usage pool, opening it if no
// config holds it yet, with the key to release it by and the parsed DSN.
func sharedPool(ctx context.Context, dsn string) (*dbPool, string, *dbconnect.Config, error) {
	cfg, err := dbconnect.ParseDSN(dsn)
	if err != nil {
		return nil, "", nil, err
	}
	key := cfg.Key()
	val, _, err := pools.LoadOrNew(key, func() (caddy.Destructor, error) {
		db, err := dbconnect.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return &dbPool{DB: db, name: cfg.String(), closers: closerhint.New()}, nil
	})
	if err != nil {
		return nil, "", nil, err
	}
	return val.(*dbPool), key, cfg, nil
}
