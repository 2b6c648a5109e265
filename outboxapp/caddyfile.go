package outboxapp

import (
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/cfargs"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("rocketchat_voip_outbox", parseOutboxOption)
}

// parseOutboxOption reads the global option:
//
//	rocketchat_voip_outbox {
//	    dsn <dsn>
//	    webhook <url> {
//	        secret <secret> | unsigned
//	        timeout <duration>
//	    }
//	    max_attempts <n>
//	    backoff <base> <max>
//	    batch <n>
//	    lease <duration>
//	    poll_interval <duration>
//	    retain <duration> | off
//	}
//
// The parser reads the syntax; Validate decides what values are valid, and
// its error is reported at the line of the subdirective it is about (of the
// later one, for a rule tying two), or at the option's own line for a
// subdirective that is missing.
func parseOutboxOption(d *caddyfile.Dispenser, _ any) (any, error) {
	o := new(Outbox)
	d.Next()
	option := d.Token()
	if err := cfargs.None(d); err != nil {
		return nil, err
	}
	written := map[string]caddyfile.Token{} // subdirective -> where it was written
	for d.NextBlock(0) {
		written[d.Val()] = d.Token()
		var err error
		switch name := d.Val(); name {
		case "dsn":
			o.DSN, err = cfargs.One(d)
		case "webhook":
			o.Webhook, err = parseWebhook(d, written)
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
		return nil, errAt(err, option, written)
	}
	return httpcaddyfile.App{Name: "rocketchat_voip_outbox", Value: caddyconfig.JSON(o, nil)}, nil
}

// errAt reports a Validate error at the line of the last written of the
// subdirectives it is about, or else at the option's line.
func errAt(err error, option caddyfile.Token, written map[string]caddyfile.Token) error {
	at := option
	var fe *fieldError
	if errors.As(err, &fe) {
		found := false
		for _, f := range fe.fields {
			if tok, ok := written[f]; ok && (!found || tok.Line > at.Line) {
				at, found = tok, true
			}
		}
	}
	d := caddyfile.NewDispenser([]caddyfile.Token{at})
	d.Next()
	return d.Err(err.Error())
}

// parseWebhook reads 'webhook <url> { secret <secret> | unsigned  timeout <duration> }',
// noting where each of its subdirectives was written as "webhook.<name>".
func parseWebhook(d *caddyfile.Dispenser, written map[string]caddyfile.Token) (*OutboxWebhook, error) {
	url, err := cfargs.One(d)
	if err != nil {
		return nil, err
	}
	wh := &OutboxWebhook{URL: url}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		written["webhook."+d.Val()] = d.Token()
		switch name := d.Val(); name {
		case "secret":
			wh.Secret, err = cfargs.One(d)
		case "unsigned":
			err = cfargs.None(d)
			wh.Unsigned = true
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
