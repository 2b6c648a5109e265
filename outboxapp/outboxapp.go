// Package outboxapp is the rocketchat_voip_outbox Caddy app: it delivers
// the room_events outbox that the handler's closes write. The root package
// imports it, so building Caddy with the module brings it along.
package outboxapp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/cfargs"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/promutil"
)

func init() {
	caddy.RegisterModule(new(Outbox))
	httpcaddyfile.RegisterGlobalOption("rocketchat_voip_outbox", parseOutboxOption)
}

// Outbox is the Caddy app that delivers the room_events outbox: every close
// is POSTed to a webhook at least once, each room's events in order, from
// the same Caddy that closes the rooms. Delivery state lives in MySQL, so
// several gateways running the app against one database share the work
// without delivering an event twice, except when one dies mid-delivery
// (another delivers its claimed events after the lease).
type Outbox struct {
	// DSN of the database whose room_events are delivered, as the handler's;
	// the same DSN shares the handler's connection pool. Required.
	DSN string `json:"dsn,omitempty"`

	// Webhook receives the events. Required.
	Webhook *OutboxWebhook `json:"webhook,omitempty"`

	// MaxAttempts failed attempts park an event (kept, counted, and sent
	// again by 'caddy rocketchat-voip outbox replay --parked'). Default: 10.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// BackoffBase is the wait after a first failed attempt; it doubles with
	// each further failure, up to BackoffMax, with jitter. Defaults: 1s, 5m.
	BackoffBase caddy.Duration `json:"backoff_base,omitempty"`
	BackoffMax  caddy.Duration `json:"backoff_max,omitempty"`

	// Batch is how many events one claim takes and delivers in parallel
	// (at most one per room). Default: 64.
	Batch int `json:"batch,omitempty"`

	// Lease is how long a claim lasts: a gateway that dies mid-batch has
	// its events delivered by another after it. Default: 30s.
	Lease caddy.Duration `json:"lease,omitempty"`

	// PollInterval is the wait between claims when nothing is due.
	// Default: 250ms.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// Retain is how long delivered events are kept in room_events before
	// they are purged, a few hundred at a time; parked and pending events
	// are never purged. Default: 7d.
	Retain caddy.Duration `json:"retain,omitempty"`
	// KeepDelivered keeps delivered events for ever (Caddyfile: retain off).
	KeepDelivered bool `json:"keep_delivered,omitempty"`

	logger    *zap.Logger
	pool      *dbpool.Pool
	store     *outbox.Store
	deliverer *outbox.Deliverer
	cancel    context.CancelFunc
	done      chan struct{} // closed when delivery has stopped
}

// OutboxWebhook is where events are POSTed.
type OutboxWebhook struct {
	// URL of the receiver. Required.
	URL string `json:"url,omitempty"`
	// Secret signs each body: the X-RocketChat-Voip-Signature header is
	// "sha256=" and the hex HMAC-SHA256 of the body. Placeholders such as
	// {env.VOIP_WEBHOOK_SECRET} are expanded.
	Secret string `json:"secret,omitempty"`
	// Timeout bounds one POST. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Outbox) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "rocketchat_voip_outbox",
		New: func() caddy.Module { return new(Outbox) },
	}
}

// Validate decides what a valid outbox configuration is, judging the values
// in effect (defaults filled in), so that the lease is checked against the
// webhook timeout whether the user wrote both or one.
func (o *Outbox) Validate() error {
	if o.DSN == "" {
		return errors.New("dsn is required")
	}
	if o.Webhook == nil || o.Webhook.URL == "" {
		return errors.New("webhook is required")
	}
	eff := o.withDefaults()
	for _, f := range []struct {
		name  string
		value int64
	}{
		{"max_attempts", int64(eff.MaxAttempts)},
		{"batch", int64(eff.Batch)},
		{"backoff (first wait)", int64(eff.BackoffBase)},
		{"backoff (longest wait)", int64(eff.BackoffMax)},
		{"lease", int64(eff.Lease)},
		{"poll_interval", int64(eff.PollInterval)},
		{"webhook timeout", int64(eff.Webhook.Timeout)},
		{"retain", int64(eff.Retain)},
	} {
		if f.value < 0 {
			return fmt.Errorf("%s: must not be negative", f.name)
		}
	}
	if o.KeepDelivered && o.Retain != 0 {
		return errors.New("retain: a retention and keep_delivered exclude each other")
	}
	if eff.Lease <= eff.Webhook.Timeout {
		return fmt.Errorf("lease: %s must be longer than the webhook timeout (%s), or a slow receiver gets events twice",
			time.Duration(eff.Lease), time.Duration(eff.Webhook.Timeout))
	}
	return nil
}

// withDefaults is a copy of o with every zero value replaced by its default.
func (o *Outbox) withDefaults() *Outbox {
	eff := *o
	if o.Webhook != nil {
		wh := *o.Webhook
		eff.Webhook = &wh
	}
	eff.applyDefaults()
	return &eff
}

func (o *Outbox) applyDefaults() {
	o.MaxAttempts = cmp.Or(o.MaxAttempts, 10)
	o.Batch = cmp.Or(o.Batch, 64)
	o.BackoffBase = cmp.Or(o.BackoffBase, caddy.Duration(time.Second))
	o.BackoffMax = cmp.Or(o.BackoffMax, caddy.Duration(5*time.Minute))
	o.Lease = cmp.Or(o.Lease, caddy.Duration(30*time.Second))
	o.PollInterval = cmp.Or(o.PollInterval, caddy.Duration(250*time.Millisecond))
	if o.Webhook != nil {
		o.Webhook.Timeout = cmp.Or(o.Webhook.Timeout, caddy.Duration(10*time.Second))
	}
	if !o.KeepDelivered {
		o.Retain = cmp.Or(o.Retain, caddy.Duration(7*24*time.Hour))
	}
}

// Provision fills in defaults, validates, and opens (or shares) the pool.
func (o *Outbox) Provision(ctx caddy.Context) error {
	o.applyDefaults()
	if err := o.Validate(); err != nil {
		return err
	}
	o.logger = ctx.Logger()
	initOutboxMetrics()
	if err := promutil.Register(ctx.GetMetricsRegistry(), outboxMetrics.all()...); err != nil {
		return err
	}
	if err := promutil.Register(ctx.GetMetricsRegistry(), dbpool.UpCollector); err != nil {
		return err
	}
	pool, err := dbpool.Get(ctx, caddy.NewReplacer().ReplaceAll(o.DSN, ""), nil)
	if err != nil {
		return err
	}
	o.pool = pool
	return nil
}

// Start checks the schema (by now every handler has migrated what it was
// told to) and starts delivering. A database that does not answer fails
// nothing: delivery starts once the pool is in service (the pool keeps
// trying in the background, and warns).
func (o *Outbox) Start() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := o.pool.Setup(ctx, false)
	var away *dbconnect.UnreachableError
	switch {
	case errors.As(err, &away):
		o.logger.Warn("database unreachable: starting without it; delivery begins once a server answers",
			zap.String("database", away.Name), zap.Error(away.Err))
	case err != nil:
		return err
	}
	runCtx, stop := context.WithCancel(context.Background())
	o.cancel = stop
	o.done = make(chan struct{})
	go func() {
		defer close(o.done)
		select {
		case <-o.pool.Ready():
		case <-runCtx.Done():
			return
		}
		if o.store = o.prepare(runCtx); o.store == nil {
			return
		}
		repl := caddy.NewReplacer()
		o.deliverer = outbox.NewDeliverer(o.store, outbox.Config{
			URL:          repl.ReplaceAll(o.Webhook.URL, ""),
			Secret:       []byte(repl.ReplaceAll(o.Webhook.Secret, "")),
			Timeout:      time.Duration(o.Webhook.Timeout),
			MaxAttempts:  o.MaxAttempts,
			BackoffBase:  time.Duration(o.BackoffBase),
			BackoffMax:   time.Duration(o.BackoffMax),
			Batch:        o.Batch,
			Lease:        time.Duration(o.Lease),
			PollInterval: time.Duration(o.PollInterval),
			Retain:       time.Duration(o.Retain), // 0 with keep_delivered
			Busy:         o.pool.Busy,             // the handlers' closes on the same DSN come first
		}, outboxObserver{o.logger})
		o.deliverer.Run(runCtx)
	}()
	return nil
}

// prepare prepares the outbox's statements on the pool, now in service,
// trying again every second while the database fails (it may have gone
// away again); nil when ctx ends first.
func (o *Outbox) prepare(ctx context.Context) *outbox.Store {
	var warned time.Time
	for {
		prepCtx, cancel := context.WithTimeout(ctx, time.Minute)
		store, err := outbox.NewStore(prepCtx, o.pool.DB())
		cancel()
		if err == nil {
			return store
		}
		if time.Since(warned) >= 5*time.Second {
			warned = time.Now()
			o.logger.Warn("outbox: preparing statements failed; trying again", zap.String("database", o.pool.Name()), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// Stop ends delivery once the batch in flight is done (each POST is bounded
// by the webhook timeout); on a reload the new config delivers meanwhile.
func (o *Outbox) Stop() error {
	if o.cancel != nil {
		o.cancel()
		<-o.done
	}
	if o.store != nil {
		o.store.Close()
	}
	return nil
}

// Cleanup releases this config's hold on the pool.
func (o *Outbox) Cleanup() error {
	if o.pool != nil {
		return o.pool.Release()
	}
	return nil
}

// outboxObserver turns delivery events into metrics and log lines; the
// secret is never in them (errors name the URL, not the secret).
type outboxObserver struct{ logger *zap.Logger }

func (ob outboxObserver) Delivered(outbox.Event) { outboxMetrics.delivered.Inc() }

func (ob outboxObserver) Failed(e outbox.Event, err error, parked bool) {
	outboxMetrics.failed.Inc()
	ob.logger.Warn("outbox: delivery failed", zap.Int64("event_id", e.ID), zap.String("rid", e.Rid),
		zap.Int("attempt", e.Attempts+1), zap.Bool("parked", parked), zap.Error(err))
	if parked {
		outboxMetrics.parked.Inc()
	}
}

func (ob outboxObserver) Status(st outbox.Status) {
	outboxMetrics.pending.Set(float64(st.Pending))
	age := 0.0
	if !st.OldestPending.IsZero() {
		age = time.Since(st.OldestPending).Seconds()
	}
	outboxMetrics.oldestAge.Set(age)
}

func (ob outboxObserver) Purged(n int64) { outboxMetrics.purged.Add(float64(n)) }

func (ob outboxObserver) Error(what string, err error) {
	ob.logger.Error("outbox: "+what, zap.Error(err))
}

type outboxMetricSet struct {
	once                      sync.Once
	delivered, failed, parked prometheus.Counter
	purged                    prometheus.Counter
	pending, oldestAge        prometheus.Gauge
}

var outboxMetrics outboxMetricSet

func initOutboxMetrics() {
	outboxMetrics.once.Do(func() {
		counter := func(name, help string) prometheus.Counter {
			return prometheus.NewCounter(prometheus.CounterOpts{Namespace: promutil.Namespace, Subsystem: promutil.Subsystem, Name: name, Help: help})
		}
		gauge := func(name, help string) prometheus.Gauge {
			return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: promutil.Namespace, Subsystem: promutil.Subsystem, Name: name, Help: help})
		}
		outboxMetrics.delivered = counter("outbox_delivered_total", "Outbox events delivered (the receiver answered 2xx).")
		outboxMetrics.failed = counter("outbox_failed_attempts_total", "Failed delivery attempts of outbox events.")
		outboxMetrics.parked = counter("outbox_parked_total", "Outbox events parked after too many failed attempts.")
		outboxMetrics.purged = counter("outbox_purged_total", "Delivered outbox events deleted after the retention.")
		outboxMetrics.pending = gauge("outbox_pending", "Outbox events not yet delivered nor parked (counted less often than every second once counting takes over 10 ms).")
		outboxMetrics.oldestAge = gauge("outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox event; 0 when none is pending.")
	})
}

func (m *outboxMetricSet) all() []prometheus.Collector {
	return []prometheus.Collector{m.delivered, m.failed, m.parked, m.purged, m.pending, m.oldestAge}
}

// parseOutboxOption reads the global option:
//
//	rocketchat_voip_outbox {
//	    dsn <dsn>
//	    webhook <url> {
//	        secret <secret>
//	        timeout <duration>
//	    }
//	    max_attempts <n>
//	    backoff <base> <max>
//	    batch <n>
//	    lease <duration>
//	    poll_interval <duration>
//	    retain <duration> | off
//	}
func parseOutboxOption(d *caddyfile.Dispenser, _ any) (any, error) {
	o := new(Outbox)
	d.Next()
	if err := cfargs.None(d); err != nil {
		return nil, err
	}
	for d.NextBlock(0) {
		var err error
		switch name := d.Val(); name {
		case "dsn":
			o.DSN, err = cfargs.One(d)
		case "webhook":
			o.Webhook, err = parseWebhook(d)
		case "max_attempts":
			o.MaxAttempts, err = cfargs.Int(d)
		case "batch":
			o.Batch, err = cfargs.Int(d)
		case "backoff":
			o.BackoffBase, o.BackoffMax, err = parseBackoff(d)
		case "lease":
			o.Lease, err = cfargs.Duration(d)
		case "poll_interval":
			o.PollInterval, err = cfargs.Duration(d)
		case "retain":
			o.Retain, o.KeepDelivered, err = parseRetain(d)
		default:
			return nil, d.Errf("unrecognized subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := o.Validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return httpcaddyfile.App{Name: "rocketchat_voip_outbox", Value: caddyconfig.JSON(o, nil)}, nil
}

// parseWebhook reads 'webhook <url> { secret <secret>  timeout <duration> }'.
func parseWebhook(d *caddyfile.Dispenser) (*OutboxWebhook, error) {
	url, err := cfargs.One(d)
	if err != nil {
		return nil, err
	}
	wh := &OutboxWebhook{URL: url}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch name := d.Val(); name {
		case "secret":
			wh.Secret, err = cfargs.One(d)
		case "timeout":
			wh.Timeout, err = cfargs.Duration(d)
		default:
			return nil, d.Errf("unrecognized webhook subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return wh, nil
}

// parseBackoff reads 'backoff <first wait> <longest wait>'.
func parseBackoff(d *caddyfile.Dispenser) (base, longest caddy.Duration, err error) {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return 0, 0, d.Err("backoff takes '<first wait> <longest wait>'")
	}
	waits := make([]caddy.Duration, 2)
	for i, arg := range args {
		v, err := caddy.ParseDuration(arg)
		if err != nil {
			return 0, 0, d.Errf("backoff: not a duration: %q", arg)
		}
		waits[i] = caddy.Duration(v)
	}
	return waits[0], waits[1], nil
}

var (
	_ caddy.App          = (*Outbox)(nil)
	_ caddy.Provisioner  = (*Outbox)(nil)
	_ caddy.Validator    = (*Outbox)(nil)
	_ caddy.CleanerUpper = (*Outbox)(nil)
)

// parseRetain reads 'retain <duration> | off'.
func parseRetain(d *caddyfile.Dispenser) (caddy.Duration, bool, error) {
	arg, err := cfargs.One(d)
	if err != nil || arg == "off" {
		return 0, err == nil, err
	}
	v, err := caddy.ParseDuration(arg)
	if err != nil {
		return 0, false, d.Errf("retain: not a duration nor off: %q", arg)
	}
	return caddy.Duration(v), false, nil
}
