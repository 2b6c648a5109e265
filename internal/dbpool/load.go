package dbpool

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
)

// Settings are a pool's connection cap and the floor of its bound on
// concurrent database work. A zero field is no opinion: the other holders'
// value, or the default.
type Settings struct {
	// MaxOpenConns caps the pool's connections.
	MaxOpenConns int
	// DBConcurrency is the floor of the bound on requests working on the
	// database at once; the bound adapts up to MaxOpenConns.
	DBConcurrency int
}

// The settings of a pool whose holders state none.
const (
	DefaultMaxOpenConns  = 64
	DefaultDBConcurrency = 8
)

// effective is s with its defaults filled in.
func (s Settings) effective() Settings {
	s.MaxOpenConns = cmp.Or(s.MaxOpenConns, DefaultMaxOpenConns)
	s.DBConcurrency = cmp.Or(s.DBConcurrency, min(DefaultDBConcurrency, s.MaxOpenConns))
	return s
}

// Need is what one holder of a load asks of a pool.
type Need struct {
	// Holder names the holder in messages, e.g. "the handler of /x".
	Holder string
	// Settings the holder states; zero fields are no opinion.
	Settings
	// Migrate asks for the schema to be migrated.
	Migrate bool
	// RequireDatabase makes the load wait for the database, within
	// firstContact, and fail without it.
	RequireDatabase bool
}

// Load is what one config load asks of the pools it holds: Caddy
// provisions the load's modules in no fixed order, each records its Need
// with Want, which checks it against the others and touches nothing
// shared, and Start applies the whole once every module is provisioned.
// Stop withdraws it: a newer load's settings are then in effect, or, when
// the load failed to start, those of the load that was running before.
type Load struct {
	mu      sync.Mutex
	pools   []*Pool
	wants   map[*Pool]*want
	started bool
}

type want struct {
	settings          Settings
	maxFrom, concFrom string // the holders that stated them
	migrate, require  bool
}

// applied is the settings a started load gave a pool.
type applied struct {
	load     *Load
	settings Settings
}

// Want records n, the need of one holder of this load for p. Holders that
// state a setting must state the same value, whatever order they come in;
// a holder that states none agrees with any.
func (l *Load) Want(p *Pool, n Need) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.wants == nil {
		l.wants = map[*Pool]*want{}
	}
	w := l.wants[p]
	if w == nil {
		w = &want{}
		l.wants[p] = w
		l.pools = append(l.pools, p)
	}
	merged := *w
	if err := mergeSetting(&merged.settings.MaxOpenConns, &merged.maxFrom, n.MaxOpenConns, n.Holder, "max_open_conns", p.name); err != nil {
		return err
	}
	if err := mergeSetting(&merged.settings.DBConcurrency, &merged.concFrom, n.DBConcurrency, n.Holder, "db_concurrency", p.name); err != nil {
		return err
	}
	if eff := merged.settings.effective(); eff.DBConcurrency > eff.MaxOpenConns {
		return fmt.Errorf("%s asks for db_concurrency %d, more than max_open_conns %d (%s), on the shared pool of %s: each request working on the database holds a connection",
			cmp.Or(merged.concFrom, "the default"), eff.DBConcurrency, eff.MaxOpenConns, cmp.Or(merged.maxFrom, "the default"), p.name)
	}
	merged.migrate = merged.migrate || n.Migrate
	merged.require = merged.require || n.RequireDatabase
	*w = merged
	return nil
}

func mergeSetting(have *int, from *string, v int, holder, name, pool string) error {
	switch {
	case v == 0 || v == *have:
		return nil
	case *have == 0:
		*have, *from = v, holder
		return nil
	}
	return fmt.Errorf("%s asks for %s %d, %s for %s %d, but both share the pool of %s: give them the same value, or state it on one of them only",
		*from, name, *have, holder, name, v, pool)
}

// Start applies the load to its pools and brings each into service: the
// settings and the wish to migrate take effect, and each pool's bring-up
// waits StartWait for a server to answer (firstContact where a holder
// requires the database). A pool whose server does not answer in time is
// logged and left to the background; any other failure fails the start,
// and the start is undone.
func (l *Load) Start(log *zap.Logger) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started = true
	for _, p := range l.pools {
		w := l.wants[p]
		p.apply(l, w.settings.effective())
		if w.migrate {
			p.AddMigrator()
		}
	}
	// Pools that migrate first: another pool may name the same database
	// (another DSN) and check its schema.
	errs := make([]error, len(l.pools))
	for _, migrating := range []bool{true, false} {
		var wg sync.WaitGroup
		for i, p := range l.pools {
			w := l.wants[p]
			if w.migrate != migrating {
				continue
			}
			wg.Go(func() {
				wait := StartWait
				if w.require {
					wait = firstContact
				}
				errs[i] = p.BringUp(wait)
			})
		}
		wg.Wait()
	}
	for i, p := range l.pools {
		var away *dbconnect.UnreachableError
		switch err := errs[i]; {
		case err == nil:
		case errors.As(err, &away) && !l.wants[p].require:
			log.Warn("database unreachable: starting without it; room.close answers 503 until a server answers, then is served with no reload (require_database fails the load instead)",
				zap.String("database", away.Name), zap.Error(away.Err))
		default:
			l.stopLocked()
			return err
		}
	}
	return nil
}

// Stop withdraws a started load from its pools.
func (l *Load) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopLocked()
}

func (l *Load) stopLocked() {
	if !l.started {
		return
	}
	l.started = false
	for _, p := range l.pools {
		p.withdraw(l)
		if l.wants[p].migrate {
			p.RemoveMigrator()
		}
	}
}

// apply makes s the pool's settings, as the newest started load's.
func (p *Pool) apply(l *Load, s Settings) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.loads = slices.DeleteFunc(p.loads, func(a applied) bool { return a.load == l })
	p.loads = append(p.loads, applied{l, s})
	p.setLocked(s)
}

// withdraw takes l's settings back: those of the newest load still started
// are in effect again.
func (p *Pool) withdraw(l *Load) {
	p.mu.Lock()
	defer p.mu.Unlock()
	newest := len(p.loads) > 0 && p.loads[len(p.loads)-1].load == l
	p.loads = slices.DeleteFunc(p.loads, func(a applied) bool { return a.load == l })
	if newest && len(p.loads) > 0 {
		p.setLocked(p.loads[len(p.loads)-1].settings)
	}
}

func (p *Pool) setLocked(s Settings) {
	p.db.SetMaxOpenConns(s.MaxOpenConns)
	p.db.SetMaxIdleConns(s.MaxOpenConns)
	// A reload keeps what the limit has learnt, within the new bounds.
	p.limiter.SetBounds(s.DBConcurrency, s.MaxOpenConns)
}

// Settings are the settings in effect.
func (p *Pool) Settings() Settings {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.loads) == 0 {
		return Settings{}.effective()
	}
	return p.loads[len(p.loads)-1].settings
}

// GateID is the app that holds each config load's Load: the handler's
// package registers it (rocketchat_voip_schema), and Caddy makes one per
// load.
const GateID = "rocketchat_voip_schema"

// LoadOf is the Load of ctx's config load, for the modules that hold a
// pool.
func LoadOf(ctx caddy.Context) (*Load, error) {
	app, err := ctx.App(GateID)
	if err != nil {
		return nil, err
	}
	gate, ok := app.(interface{ PoolLoad() *Load })
	if !ok {
		return nil, fmt.Errorf("the %s app (%T) holds no load", GateID, app)
	}
	return gate.PoolLoad(), nil
}
