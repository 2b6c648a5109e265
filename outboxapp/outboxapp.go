// Package outboxapp is the rocketchat_voip_outbox Caddy app: it delivers
// the room_events outbox that the handler's closes write. The root package
// imports it, so building Caddy with the module brings it along.
package outboxapp

import (
	"cmp"
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
)

func init() {
	caddy.RegisterModule(new(Outbox))
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

	url        string // the webhook's URL and secret, placeholders expanded
	secret     []byte
	logger     *zap.Logger
	pool       *dbpool.Pool
	statements *statements
	deliverer  *outbox.Deliverer
	cancel     context.CancelFunc
	done       chan struct{} // closed when delivery has stopped
}

// OutboxWebhook is where events are POSTed.
type OutboxWebhook struct {
	// URL of the receiver, http or https. Required. Redirects are not
	// followed: a 3xx is a failed attempt. Placeholders are expanded; the
	// query string is left out wherever the URL is logged or stored.
	URL string `json:"url,omitempty"`
	// Secret signs each delivery: the X-RocketChat-Voip-Signature header is
	// "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<delivery id>.<body>'>"
	// (docs/outbox.md). Required unless Unsigned. Placeholders such as
	// {env.VOIP_WEBHOOK_SECRET} are expanded, and one that expands to
	// nothing fails the load.
	Secret string `json:"secret,omitempty"`
	// Unsigned sends deliveries without a signature, deliberately (for a
	// receiver that cannot check one); it excludes a secret.
	Unsigned bool `json:"unsigned,omitempty"`
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
// webhook timeout whether the user wrote both or one. Each error names the
// fields it is about (a fieldError), so that the Caddyfile parser reports it
// at their line. Placeholders are not expanded here: the values they take
// are checked by expandWebhook when the config is loaded.
func (o *Outbox) Validate() error {
	if o.DSN == "" {
		return fieldErr("dsn is required", "dsn")
	}
	if o.Webhook == nil || o.Webhook.URL == "" {
		return fieldErr("webhook is required", "webhook")
	}
	eff := o.withDefaults()
	for _, f := range []struct {
		name, field string
		value       int64
	}{
		{"max_attempts", "max_attempts", int64(eff.MaxAttempts)},
		{"batch", "batch", int64(eff.Batch)},
		{"backoff (first wait)", "backoff", int64(eff.BackoffBase)},
		{"backoff (longest wait)", "backoff", int64(eff.BackoffMax)},
		{"lease", "lease", int64(eff.Lease)},
		{"poll_interval", "poll_interval", int64(eff.PollInterval)},
		{"webhook timeout", "webhook.timeout", int64(eff.Webhook.Timeout)},
		{"retain", "retain", int64(eff.Retain)},
	} {
		if f.value < 0 {
			return fieldErr(f.name+": must not be negative", f.field)
		}
	}
	if o.KeepDelivered && o.Retain != 0 {
		return fieldErr("retain: a retention and keep_delivered exclude each other", "retain")
	}
	switch wh := o.Webhook; {
	case wh.Secret == "" && !wh.Unsigned:
		return fieldErr("webhook: a secret is required to sign the deliveries (or 'unsigned', to send them unsigned deliberately)", "webhook")
	case wh.Secret != "" && wh.Unsigned:
		return fieldErr("webhook: a secret and unsigned exclude each other", "webhook.secret", "webhook.unsigned")
	}
	if eff.Lease <= eff.Webhook.Timeout {
		return fieldErr(fmt.Sprintf("lease: %s must be longer than the webhook timeout (%s), or a slow receiver gets events twice",
			time.Duration(eff.Lease), time.Duration(eff.Webhook.Timeout)), "lease", "webhook.timeout")
	}
	return nil
}

// fieldError is a configuration error and the fields it is about, named as
// the Caddyfile writes them (a webhook's own as "webhook.timeout").
type fieldError struct {
	msg    string
	fields []string
}

func (e *fieldError) Error() string { return e.msg }

func fieldErr(msg string, fields ...string) error { return &fieldError{msg, fields} }

// expandWebhook is the webhook's URL and secret with placeholders such as
// {env.VOIP_WEBHOOK_SECRET} expanded, as the load will use them. A value
// that expands to nothing is refused, naming what was written: an unset
// variable must not turn into a webhook that is unsigned or goes nowhere.
func (o *Outbox) expandWebhook() (string, []byte, error) {
	repl := caddy.NewReplacer()
	target := repl.ReplaceAll(o.Webhook.URL, "")
	u, err := url.Parse(target)
	switch {
	case target == "":
		// Only placeholders expand to nothing: what was written is safe to name.
		return "", nil, fmt.Errorf("webhook: the URL %s is empty once expanded (is the variable set?)", o.Webhook.URL)
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return "", nil, fmt.Errorf("webhook: %s is not an http or https URL with a host", outbox.RedactURL(target))
	}
	if o.Webhook.Unsigned {
		return target, nil, nil
	}
	secret := repl.ReplaceAll(o.Webhook.Secret, "")
	if secret == "" {
		return "", nil, fmt.Errorf("webhook: the secret %s is empty once expanded (is the variable set?); write 'unsigned' to send unsigned webhooks deliberately", o.Webhook.Secret)
	}
	return target, []byte(secret), nil
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

var (
	_ caddy.App          = (*Outbox)(nil)
	_ caddy.Provisioner  = (*Outbox)(nil)
	_ caddy.Validator    = (*Outbox)(nil)
	_ caddy.CleanerUpper = (*Outbox)(nil)
)
