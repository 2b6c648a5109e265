// Package syncapp is the rocketchat_voip_sync Caddy app: it keeps the
// gateway's MySQL tables in step with a Rocket.Chat MongoDB (a snapshot, then
// an incremental poll and a periodic reconciliation) and writes the edge's
// closes back to MongoDB as Rocket.Chat writes its own. One gateway of those
// that enable it does the work, chosen through a lease in MySQL. The root
// package imports it, so building Caddy with the module brings it along.
package syncapp

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/cfargs"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/promutil"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/rcsync"
)

func init() {
	caddy.RegisterModule(new(Sync))
	httpcaddyfile.RegisterGlobalOption("rocketchat_voip_sync", parseSyncOption)
}

// Sync is the Caddy app that mirrors Rocket.Chat's MongoDB into the
// gateway's MySQL and writes edge closes back (docs/sync.md).
type Sync struct {
	// DSN of the gateway's MySQL, as the handler's (the same DSN shares its
	// pool). Required.
	DSN string `json:"dsn,omitempty"`

	// MongoDBURI is Rocket.Chat's MONGO_URL. Placeholders such as
	// {env.MONGO_URL} are expanded. Required. Give the sync a user that may
	// read users, rocketchat_permissions, rocketchat_livechat_visitor and
	// rocketchat_room, and (for the write-back) write rocketchat_room and
	// rocketchat_message.
	MongoDBURI string `json:"mongodb_uri,omitempty"`

	// Database is Rocket.Chat's database. Default: the URI's, else "rocketchat".
	Database string `json:"database,omitempty"`

	// Source names this Rocket.Chat in sync_state and sync_lease (gateways
	// with the same source share one leader). Default: "rocketchat".
	Source string `json:"source,omitempty"`

	// PollInterval is the wait between two incremental reads. Default: 1s.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// ReconcileInterval is the period of the full pass over every user's
	// tokens and every id set. Rocket.Chat removes login tokens (logout,
	// expiry, admin logout, deactivation) without marking the user changed,
	// and deletes users and visitors outright: only this pass sees that. It
	// is therefore the bound on how long a revoked token keeps working at
	// the edge. Default: 1m.
	ReconcileInterval caddy.Duration `json:"reconcile_interval,omitempty"`

	// Overlap is how far back each poll reads again (the login race, and
	// clock skew between Rocket.Chat's servers and this one). Default: 5s.
	Overlap caddy.Duration `json:"overlap,omitempty"`

	// Batch is how many documents one MySQL transaction applies. Default: 500.
	Batch int `json:"batch,omitempty"`

	// Lease is how long a leader holds the sync: a dead leader is replaced
	// after it. Default: 15s.
	Lease caddy.Duration `json:"lease,omitempty"`

	// Timeout bounds each MongoDB round trip. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Writeback configures writing edge closes back to MongoDB.
	Writeback *Writeback `json:"writeback,omitempty"`

	logger   *zap.Logger
	pool     *dbpool.Pool
	uri      string // placeholders expanded
	database string
	src      *rcsync.Source
	cancel   context.CancelFunc
	done     chan struct{}
}

// Writeback is the write-back of the edge's closes.
type Writeback struct {
	// Disabled turns the write-back off (Caddyfile: writeback off).
	Disabled bool `json:"disabled,omitempty"`
	// MaxAttempts failed attempts park an event. Default: 10.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// BackoffBase is the wait after a first failure; it doubles, up to
	// BackoffMax. Defaults: 1s, 5m.
	BackoffBase caddy.Duration `json:"backoff_base,omitempty"`
	BackoffMax  caddy.Duration `json:"backoff_max,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Sync) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "rocketchat_voip_sync", New: func() caddy.Module { return new(Sync) }}
}

// Validate decides what a valid sync configuration is, judging the values
// in effect (defaults filled in).
func (s *Sync) Validate() error {
	if s.DSN == "" {
		return errors.New("dsn is required")
	}
	if s.MongoDBURI == "" {
		return errors.New("mongodb_uri is required")
	}
	eff := s.withDefaults()
	for _, f := range []struct {
		name  string
		value int64
	}{
		{"poll_interval", int64(eff.PollInterval)}, {"reconcile_interval", int64(eff.ReconcileInterval)},
		{"overlap", int64(eff.Overlap)}, {"batch", int64(eff.Batch)}, {"lease", int64(eff.Lease)},
		{"timeout", int64(eff.Timeout)}, {"writeback max_attempts", int64(eff.Writeback.MaxAttempts)},
		{"writeback backoff", int64(eff.Writeback.BackoffBase)}, {"writeback backoff (longest)", int64(eff.Writeback.BackoffMax)},
	} {
		if f.value <= 0 {
			return fmt.Errorf("%s: must be positive", f.name)
		}
	}
	if eff.Batch > 5000 {
		return errors.New("batch: at most 5000 (one transaction applies a batch)")
	}
	if eff.ReconcileInterval < eff.PollInterval {
		return errors.New("reconcile_interval: must not be shorter than poll_interval")
	}
	if eff.Lease <= eff.Timeout {
		return fmt.Errorf("lease: %s must be longer than timeout (%s), or a leader waiting on MongoDB loses it mid-batch",
			time.Duration(eff.Lease), time.Duration(eff.Timeout))
	}
	return nil
}

func (s *Sync) withDefaults() *Sync {
	eff := *s
	if s.Writeback != nil {
		wb := *s.Writeback
		eff.Writeback = &wb
	}
	eff.applyDefaults()
	return &eff
}

func (s *Sync) applyDefaults() {
	s.Source = cmp.Or(s.Source, "rocketchat")
	s.PollInterval = cmp.Or(s.PollInterval, caddy.Duration(time.Second))
	s.ReconcileInterval = cmp.Or(s.ReconcileInterval, caddy.Duration(time.Minute))
	s.Overlap = cmp.Or(s.Overlap, caddy.Duration(5*time.Second))
	s.Batch = cmp.Or(s.Batch, 500)
	s.Lease = cmp.Or(s.Lease, caddy.Duration(15*time.Second))
	s.Timeout = cmp.Or(s.Timeout, caddy.Duration(10*time.Second))
	if s.Writeback == nil {
		s.Writeback = new(Writeback)
	}
	s.Writeback.MaxAttempts = cmp.Or(s.Writeback.MaxAttempts, 10)
	s.Writeback.BackoffBase = cmp.Or(s.Writeback.BackoffBase, caddy.Duration(time.Second))
	s.Writeback.BackoffMax = cmp.Or(s.Writeback.BackoffMax, caddy.Duration(5*time.Minute))
}

// Provision fills in defaults, validates, checks the MongoDB URI and opens
// (or shares) the MySQL pool; MongoDB is connected to by Start, once the
// load is certain.
func (s *Sync) Provision(ctx caddy.Context) error {
	s.applyDefaults()
	if err := s.Validate(); err != nil {
		return err
	}
	s.logger = ctx.Logger()
	initMetrics()
	if err := promutil.Register(ctx.GetMetricsRegistry(), metrics.all()...); err != nil {
		return err
	}
	repl := caddy.NewReplacer()
	uri := repl.ReplaceAll(s.MongoDBURI, "")
	cs, err := connstring.ParseAndValidate(uri)
	if err != nil {
		// The URI may hold a password: say what is wrong, not what it is.
		return errors.New("mongodb_uri: not a valid MongoDB connection string")
	}
	s.uri, s.database = uri, cmp.Or(s.Database, cs.Database, "rocketchat")
	pool, err := dbpool.Hold(repl.ReplaceAll(s.DSN, ""))
	if err != nil {
		return err
	}
	s.pool = pool
	// The load's gate brings the pool up in its Start, once the load is certain.
	load, err := dbpool.LoadOf(ctx)
	if err != nil {
		return err
	}
	return load.Want(pool, dbpool.Need{Holder: "the rocketchat_voip_sync app"})
}

// owner names this process in sync_lease.
func owner() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}

// Start connects to MongoDB (lazily: a server that is away fails rounds,
// not the start) and begins syncing once the MySQL pool is in service;
// neither database being away fails the start.
func (s *Sync) Start() error {
	src, err := rcsync.Connect(s.uri, s.database, time.Duration(s.Timeout))
	if err != nil {
		// The URI may hold a password: the error is not repeated.
		return errors.New("mongodb_uri: the MongoDB client could not be made")
	}
	s.src = src
	runCtx, stop := context.WithCancel(context.Background())
	s.cancel = stop
	s.done = make(chan struct{})
	obs := &observer{logger: s.logger}
	syncer := rcsync.New(rcsync.Config{
		Source: s.Source, Owner: owner(), LeaseTTL: time.Duration(s.Lease), PollInterval: time.Duration(s.PollInterval),
		ReconcileInterval: time.Duration(s.ReconcileInterval), Overlap: time.Duration(s.Overlap), Batch: s.Batch,
	}, s.pool.DB(), s.src, obs)
	if !s.Writeback.Disabled {
		wb := rcsync.NewWriteback(s.pool.DB(), s.src, rcsync.WritebackConfig{
			MaxAttempts: s.Writeback.MaxAttempts, BackoffBase: time.Duration(s.Writeback.BackoffBase),
			BackoffMax: time.Duration(s.Writeback.BackoffMax), Batch: 64,
		}, obs)
		syncer.Alongside = wb.Run
	}
	metrics.setMode(syncer.Mode())
	go func() {
		defer close(s.done)
		select {
		case <-s.pool.Settled():
		case <-runCtx.Done():
			return
		}
		syncer.Run(runCtx)
	}()
	return nil
}

// Stop ends the sync after the batch in flight, and gives the lease up.
func (s *Sync) Stop() error {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	return nil
}

// Cleanup releases the pool and the MongoDB client.
func (s *Sync) Cleanup() error {
	if s.src != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.src.Close(ctx)
		cancel()
	}
	if s.pool != nil {
		return s.pool.Release()
	}
	return nil
}

// observer turns the sync's events into metrics and log lines. Errors name
// collections and ids, never a token or a document's content.
type observer struct{ logger *zap.Logger }

func (o *observer) Leader(v bool) {
	metrics.leader.Set(b2f(v))
	if v {
		o.logger.Info("sync: this gateway leads")
	} else {
		o.logger.Info("sync: another gateway leads")
	}
}

func (o *observer) CaughtUp(st *rcsync.State) {
	metrics.caughtUp.Set(float64(st.CaughtUpAt.UnixMilli()) / 1000)
	if age, ok := st.Staleness(); ok {
		metrics.freshAt.Store(time.Now().Add(-age).UnixNano())
	}
}

func (o *observer) PassDone(kind string, users int, took time.Duration) {
	metrics.passes.WithLabelValues(kind).Inc()
	o.logger.Info("sync: pass done", zap.String("kind", kind), zap.Int("users", users), zap.Duration("took", took))
}

func (o *observer) Error(what string, err error) {
	metrics.errors.Inc()
	o.logger.Error("sync: "+what, zap.Error(err))
}

func (o *observer) Warn(msg string, kv ...any) { o.logger.Sugar().Warnw(msg, kv...) }

func (o *observer) WritebackDone(state string) { metrics.writeback.WithLabelValues(state).Inc() }

func b2f(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

type metricSet struct {
	once      sync.Once
	mode      *prometheus.GaugeVec
	leader    prometheus.Gauge
	caughtUp  prometheus.Gauge
	lag       prometheus.GaugeFunc
	freshAt   atomic.Int64
	passes    *prometheus.CounterVec
	errors    prometheus.Counter
	writeback *prometheus.CounterVec
}

var metrics metricSet

func initMetrics() {
	metrics.once.Do(func() {
		opts := func(name, help string) prometheus.Opts {
			return prometheus.Opts{Namespace: promutil.Namespace, Subsystem: promutil.Subsystem, Name: name, Help: help}
		}
		metrics.mode = prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("sync_mode", "1 for the way the sync follows MongoDB (poll).")), []string{"mode"})
		metrics.leader = prometheus.NewGauge(prometheus.GaugeOpts(opts("sync_leader", "1 while this gateway leads the sync.")))
		metrics.caughtUp = prometheus.NewGauge(prometheus.GaugeOpts(opts("sync_caught_up_timestamp_seconds",
			"When the sync last reached the present (MySQL's clock, Unix seconds), as this gateway last saw it while leading.")))
		metrics.lag = prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("sync_lag_seconds",
			"How stale MySQL's copy of Rocket.Chat is: since the older of the last poll that caught up and the start of the last complete reconciliation; -1 before the first.")),
			func() float64 {
				at := metrics.freshAt.Load()
				if at == 0 {
					return -1
				}
				return time.Since(time.Unix(0, at)).Seconds()
			})
		metrics.passes = prometheus.NewCounterVec(prometheus.CounterOpts(opts("sync_passes_total", "Full passes (snapshot, reconcile) completed.")), []string{"kind"})
		metrics.errors = prometheus.NewCounter(prometheus.CounterOpts(opts("sync_errors_total", "Sync rounds that failed.")))
		metrics.writeback = prometheus.NewCounterVec(prometheus.CounterOpts(opts("sync_writeback_total",
			"Edge closes written back to MongoDB, by outcome (done, conflict, parked, failed).")), []string{"state"})
	})
}

func (m *metricSet) setMode(mode string) {
	m.mode.Reset()
	m.mode.WithLabelValues(mode).Set(1)
}

func (m *metricSet) all() []prometheus.Collector {
	return []prometheus.Collector{m.mode, m.leader, m.caughtUp, m.lag, m.passes, m.errors, m.writeback}
}

// parseSyncOption reads the global option:
//
//	rocketchat_voip_sync {
//	    dsn <dsn>
//	    mongodb_uri <uri>
//	    database <name>
//	    source <name>
//	    poll_interval <duration>
//	    reconcile_interval <duration>
//	    overlap <duration>
//	    batch <n>
//	    lease <duration>
//	    timeout <duration>
//	    writeback off | {
//	        max_attempts <n>
//	        backoff <first wait> <longest wait>
//	    }
//	}
func parseSyncOption(d *caddyfile.Dispenser, _ any) (any, error) {
	s := new(Sync)
	d.Next()
	if err := cfargs.None(d); err != nil {
		return nil, err
	}
	for d.NextBlock(0) {
		var err error
		switch name := d.Val(); name {
		case "dsn":
			s.DSN, err = cfargs.One(d)
		case "mongodb_uri":
			s.MongoDBURI, err = cfargs.One(d)
		case "database":
			s.Database, err = cfargs.One(d)
		case "source":
			s.Source, err = cfargs.One(d)
		case "poll_interval":
			s.PollInterval, err = cfargs.Duration(d)
		case "reconcile_interval":
			s.ReconcileInterval, err = cfargs.Duration(d)
		case "overlap":
			s.Overlap, err = cfargs.Duration(d)
		case "batch":
			s.Batch, err = cfargs.Int(d)
		case "lease":
			s.Lease, err = cfargs.Duration(d)
		case "timeout":
			s.Timeout, err = cfargs.Duration(d)
		case "writeback":
			s.Writeback, err = parseWriteback(d)
		default:
			return nil, d.Errf("unrecognized subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := s.Validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return httpcaddyfile.App{Name: "rocketchat_voip_sync", Value: caddyconfig.JSON(s, nil)}, nil
}

func parseWriteback(d *caddyfile.Dispenser) (*Writeback, error) {
	wb := new(Writeback)
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && args[0] == "off":
		wb.Disabled = true
		return wb, nil
	case len(args) != 0:
		return nil, d.Err("writeback takes 'off' or a block")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch name := d.Val(); name {
		case "max_attempts":
			wb.MaxAttempts, err = cfargs.Int(d)
		case "backoff":
			a := d.RemainingArgs()
			if len(a) != 2 {
				return nil, d.Err("backoff takes '<first wait> <longest wait>'")
			}
			var first, longest time.Duration
			if first, err = caddy.ParseDuration(a[0]); err == nil {
				longest, err = caddy.ParseDuration(a[1])
			}
			if err != nil {
				return nil, d.Errf("backoff: %v", err)
			}
			wb.BackoffBase, wb.BackoffMax = caddy.Duration(first), caddy.Duration(longest)
		default:
			return nil, d.Errf("unrecognized writeback subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return wb, nil
}

var (
	_ caddy.App          = (*Sync)(nil)
	_ caddy.Provisioner  = (*Sync)(nil)
	_ caddy.Validator    = (*Sync)(nil)
	_ caddy.CleanerUpper = (*Sync)(nil)
)
