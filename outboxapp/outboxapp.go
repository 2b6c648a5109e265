// Package outboxapp is the rocketchat_voip_outbox Caddy app: it delivers
// the room_events outbox that the handler's closes write. The root package
// imports it, so building Caddy with the module brings it along.
package outboxapp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/promutil"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
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

	logger    *zap.Logger
	pool      *dbpool.Pool
	store     *outbox.Store
	deliverer *outbox.Deliverer
	cancel    context.CancelFunc
	done      sync.WaitGroup
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

// Validate decides what a valid outbox configuration is.
func (o *Outbox) Validate() error {
	switch {
	case o.DSN == "":
		return errors.New("dsn is required")
	case o.Webhook == nil || o.Webhook.URL == "":
		return errors.New("webhook is required")
	case o.MaxAttempts < 0 || o.Batch < 0:
		return errors.New("max_attempts and batch must not be negative")
	case o.BackoffBase < 0 || o.BackoffMax < 0 || o.Lease < 0 || o.PollInterval < 0 || o.Webhook.Timeout < 0:
		return errors.New("durations must not be negative")
	case o.Lease != 0 && o.Webhook.Timeout != 0 && o.Lease <= o.Webhook.Timeout:
		return errors.New("lease must be longer than the webhook timeout, or a slow receiver gets events twice")
	}
	return nil
}

// Provision opens (or shares) the pool and fills in defaults.
func (o *Outbox) Provision(ctx caddy.Context) error {
	if err := o.Validate(); err != nil {
		return err
	}
	setDefault(&o.MaxAttempts, 10)
	setDefault(&o.Batch, 64)
	setDefault(&o.BackoffBase, caddy.Duration(time.Second))
	setDefault(&o.BackoffMax, caddy.Duration(5*time.Minute))
	setDefault(&o.Lease, caddy.Duration(30*time.Second))
	setDefault(&o.PollInterval, caddy.Duration(250*time.Millisecond))
	setDefault(&o.Webhook.Timeout, caddy.Duration(10*time.Second))
	o.logger = ctx.Logger()
	initOutboxMetrics()
	if err := promutil.Register(ctx.GetMetricsRegistry(), outboxMetrics.all()...); err != nil {
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
// told to) and starts delivering.
func (o *Outbox) Start() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := schema.Check(ctx, o.pool.DB()); err != nil {
		return fmt.Errorf("%s: %w", o.pool.Name(), err)
	}
	store, err := outbox.NewStore(ctx, o.pool.DB())
	if err != nil {
		return fmt.Errorf("preparing outbox statements on %s: %w", o.pool.Name(), err)
	}
	o.store = store
	repl := caddy.NewReplacer()
	o.deliverer = outbox.NewDeliverer(store, outbox.Config{
		URL:          repl.ReplaceAll(o.Webhook.URL, ""),
		Secret:       []byte(repl.ReplaceAll(o.Webhook.Secret, "")),
		Timeout:      time.Duration(o.Webhook.Timeout),
		MaxAttempts:  o.MaxAttempts,
		BackoffBase:  time.Duration(o.BackoffBase),
		BackoffMax:   time.Duration(o.BackoffMax),
		Batch:        o.Batch,
		Lease:        time.Duration(o.Lease),
		PollInterval: time.Duration(o.PollInterval),
	}, outboxObserver{o.logger})
	runCtx, stop := context.WithCancel(context.Background())
	o.cancel = stop
	o.done.Go(func() { o.deliverer.Run(runCtx) })
	return nil
}

// Stop ends delivery once the batch in flight is done (each POST is bounded
// by the webhook timeout); on a reload the new config delivers meanwhile.
func (o *Outbox) Stop() error {
	if o.cancel != nil {
		o.cancel()
		o.done.Wait()
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

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
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

func (ob outboxObserver) Error(what string, err error) {
	ob.logger.Error("outbox: "+what, zap.Error(err))
}

type outboxMetricSet struct {
	once                      sync.Once
	delivered, failed, parked prometheus.Counter
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
		outboxMetrics.pending = gauge("outbox_pending", "Outbox events not yet delivered nor parked.")
		outboxMetrics.oldestAge = gauge("outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox event; 0 when none is pending.")
	})
}

func (m *outboxMetricSet) all() []prometheus.Collector {
	return []prometheus.Collector{m.delivered, m.failed, m.parked, m.pending, m.oldestAge}
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
//	}
func parseOutboxOption(d *caddyfile.Dispenser, _ any) (any, error) {
	o := new(Outbox)
	d.Next()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	duration := func() (caddy.Duration, error) {
		name := d.Val()
		if !d.NextArg() {
			return 0, d.ArgErr()
		}
		v, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return 0, d.Errf("%s: not a duration: %q", name, d.Val())
		}
		return caddy.Duration(v), nil
	}
	integer := func() (int, error) {
		name := d.Val()
		if !d.NextArg() {
			return 0, d.ArgErr()
		}
		n, err := strconv.Atoi(d.Val())
		if err != nil {
			return 0, d.Errf("%s: not a whole number: %q", name, d.Val())
		}
		return n, nil
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "dsn":
			if !d.AllArgs(&o.DSN) {
				return nil, d.ArgErr()
			}
		case "webhook":
			o.Webhook = &OutboxWebhook{}
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			o.Webhook.URL = d.Val()
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				switch d.Val() {
				case "secret":
					if !d.AllArgs(&o.Webhook.Secret) {
						return nil, d.ArgErr()
					}
				case "timeout":
					o.Webhook.Timeout, err = duration()
				default:
					return nil, d.Errf("unrecognized webhook subdirective %q", d.Val())
				}
				if err != nil {
					return nil, err
				}
			}
		case "max_attempts":
			o.MaxAttempts, err = integer()
		case "batch":
			o.Batch, err = integer()
		case "backoff":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return nil, d.Err("backoff takes '<first wait> <longest wait>'")
			}
			for i, dst := range []*caddy.Duration{&o.BackoffBase, &o.BackoffMax} {
				v, perr := caddy.ParseDuration(args[i])
				if perr != nil {
					return nil, d.Errf("backoff: not a duration: %q", args[i])
				}
				*dst = caddy.Duration(v)
			}
		case "lease":
			o.Lease, err = duration()
		case "poll_interval":
			o.PollInterval, err = duration()
		default:
			return nil, d.Errf("unrecognized subdirective %q", d.Val())
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

var (
	_ caddy.App          = (*Outbox)(nil)
	_ caddy.Provisioner  = (*Outbox)(nil)
	_ caddy.Validator    = (*Outbox)(nil)
	_ caddy.CleanerUpper = (*Outbox)(nil)
)
