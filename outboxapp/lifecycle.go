package outboxapp

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/promutil"
)

// Provision fills in defaults, validates, expands the webhook's
// placeholders (refusing one that expands to nothing), takes a hold on the
// pool (shared with the handlers of the same DSN) and on the outbox's
// statements, and records on the load that the app holds the pool: the
// load brings it up once every module is provisioned.
func (o *Outbox) Provision(ctx caddy.Context) error {
	o.applyDefaults()
	if err := o.Validate(); err != nil {
		return err
	}
	var err error
	if o.url, o.secret, err = o.expandWebhook(); err != nil {
		return err
	}
	o.logger = ctx.Logger()
	initOutboxMetrics()
	if err := promutil.Register(ctx.GetMetricsRegistry(), outboxMetrics.all()...); err != nil {
		return err
	}
	if err := promutil.Register(ctx.GetMetricsRegistry(), dbpool.Collector); err != nil {
		return err
	}
	dsn := caddy.NewReplacer().ReplaceAll(o.DSN, "")
	if strings.TrimSpace(dsn) == "" {
		// Only placeholders expand to nothing: what was written is safe to name.
		return fmt.Errorf("dsn: %s is empty (unset or blank in Caddy's environment)", o.DSN)
	}
	pool, err := dbpool.Hold(dsn)
	if err != nil {
		return err
	}
	o.pool = pool
	if o.statements, err = holdStatements(pool); err != nil {
		return err
	}
	load, err := dbpool.LoadOf(ctx)
	if err != nil {
		return err
	}
	return load.Want(pool, dbpool.Need{Holder: "the rocketchat_voip_outbox app"})
}

// Start starts delivering once the pool is in service and the outbox's
// statements are prepared: at once on a reload, or when the database
// answers (the pool's bring-up keeps trying in the background, and warns).
func (o *Outbox) Start() error {
	runCtx, stop := context.WithCancel(context.Background())
	o.cancel = stop
	o.done = make(chan struct{})
	go func() {
		defer close(o.done)
		select {
		case <-o.statements.preparation.Ready():
		case <-runCtx.Done():
			return
		}
		o.deliverer = outbox.NewDeliverer(o.statements.store.Load(), outbox.Config{
			URL:          o.url,
			Secret:       o.secret,
			Timeout:      time.Duration(o.Webhook.Timeout),
			MaxAttempts:  o.MaxAttempts,
			BackoffBase:  time.Duration(o.BackoffBase),
			BackoffMax:   time.Duration(o.BackoffMax),
			Batch:        o.Batch,
			Lease:        time.Duration(o.Lease),
			PollInterval: time.Duration(o.PollInterval),
			Retain:       time.Duration(o.Retain), // 0 with keep_delivered
			Congestion:   o.congestion,            // the handlers' closes on the same DSN come first
		}, outboxObserver{o.logger})
		o.deliverer.Run(runCtx)
	}()
	return nil
}

// congestion reports for how many windows in a row the closes of the
// handlers sharing this pool have waited for their database slots: a
// catch-up gives way at once, the steady stream once it lasts. A pool no
// handler holds has no limiter, and no closes to give way to.
func (o *Outbox) congestion() int {
	if l := o.pool.Limiter(); l != nil {
		return l.CongestedWindows()
	}
	return 0
}

// Stop ends delivery once the batch in flight is done (each POST is bounded
// by the webhook timeout); on a reload the new config delivers meanwhile.
func (o *Outbox) Stop() error {
	if o.cancel != nil {
		o.cancel()
		<-o.done
	}
	return nil
}

// Cleanup releases this config's holds on the statements and the pool.
func (o *Outbox) Cleanup() error {
	if o.statements != nil {
		statementsByPool.Delete(o.statements.key) //nolint:errcheck // Destruct cannot fail
	}
	if o.pool != nil {
		return o.pool.Release()
	}
	return nil
}

// statements are the outbox's prepared statements on one pool, shared by
// the outbox apps of successive configs; the pool's bring-up prepares them
// (a dbpool.Preparer).
type statements struct {
	key         string
	store       atomic.Pointer[outbox.Store]
	preparation *dbpool.Preparation
}

var statementsByPool = caddy.NewUsagePool()

func holdStatements(pool *dbpool.Pool) (*statements, error) {
	val, _, err := statementsByPool.LoadOrNew(pool.Key(), func() (caddy.Destructor, error) {
		s := &statements{key: pool.Key()}
		s.preparation = pool.Register(func(ctx context.Context, db *sql.DB) (io.Closer, error) {
			store, err := outbox.NewStore(ctx, db)
			if err != nil {
				return nil, err
			}
			s.store.Store(store)
			return store, nil
		})
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	return val.(*statements), nil
}

// Destruct takes the statements off the pool, which closes them.
func (s *statements) Destruct() error {
	s.preparation.Remove()
	return nil
}
