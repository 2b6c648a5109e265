// Package dbpool shares one MySQL pool per DSN among every handler and app
// of every config that names it, so that a reload reuses connections and
// prepared statements, and the last holder to go closes them.
package dbpool

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/closerhint"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

var pools = caddy.NewUsagePool()

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
	// closers are the credentials that recently closed rooms through this
	// pool: the handler reads credentials and room in one query for them.
	closers *closerhint.Set

	mu      sync.Mutex
	active  int  // requests in flight
	closing bool // the last holder is gone
}

// Get returns the pool for dsn, opening it if no holder has it yet. Each
// Get is matched by one Release.
func Get(ctx context.Context, dsn string) (*Pool, error) {
	cfg, err := dbconnect.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	key := cfg.Key()
	val, _, err := pools.LoadOrNew(key, func() (caddy.Destructor, error) {
		db, err := dbconnect.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return &Pool{db: db, key: key, name: cfg.String(), closers: closerhint.New()}, nil
	})
	if err != nil {
		return nil, err
	}
	return val.(*Pool), nil
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

// Closers are the credentials that recently closed rooms through this pool.
func (p *Pool) Closers() *closerhint.Set { return p.closers }

// Store is the prepared request path, or nil while the schema is not in
// place.
func (p *Pool) Store() *store.Store { return p.store.Load() }

// Prepare prepares the statements once the schema is in place; later
// calls (other configs, reloads) find them ready.
func (p *Pool) Prepare(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.store.Load() != nil {
		return nil
	}
	s, err := store.New(ctx, p.db)
	if err != nil {
		return err
	}
	p.store.Store(s)
	return nil
}

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
