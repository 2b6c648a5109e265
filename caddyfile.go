package rocketchatvoip

import (
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("rocketchat_voip", parseCaddyfile)
	// Before reverse_proxy, so users need no 'order' line.
	httpcaddyfile.RegisterDirectiveOrder("rocketchat_voip", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var handler Handler
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return &handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	rocketchat_voip {
//	    dsn <dsn>
//	    migrate
//	    path <path>
//	    login_expiration <duration>
//	    rate_limit <requests> <window> | off
//	    max_body <size>
//	    db_timeout <duration>
//	    compat 6|7
//	    max_open_conns <n>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "dsn":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.DSN = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "migrate":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.Migrate = true
		case "path":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if d.Val() == "" || d.Val()[0] != '/' {
				return d.Errf("path must start with /: %q", d.Val())
			}
			h.Path = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "login_expiration":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.LoginExpiration = caddy.Duration(dur)
		case "rate_limit":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1 && args[0] == "off":
				h.RateLimit = &RateLimit{Off: true}
			case len(args) == 2:
				n, err := strconv.Atoi(args[0])
				if err != nil || n <= 0 {
					return d.Errf("rate_limit: request count must be a positive integer: %q", args[0])
				}
				window, err := caddy.ParseDuration(args[1])
				if err != nil || window <= 0 {
					return d.Errf("rate_limit: window must be a positive duration: %q", args[1])
				}
				h.RateLimit = &RateLimit{Requests: n, Window: caddy.Duration(window)}
			default:
				return d.Errf("rate_limit takes '<requests> <window>' or 'off'")
			}
		case "max_body":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(d.Val())
			if err != nil || size == 0 || size > 1<<40 {
				return d.Errf("max_body: not a positive size: %q", d.Val())
			}
			h.MaxBody = int64(size)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "db_timeout":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.DBTimeout = caddy.Duration(dur)
		case "compat":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch d.Val() {
			case "6":
				h.Compat = 6
			case "7":
				h.Compat = 7
			default:
				return d.Errf("compat must be 6 or 7: %q", d.Val())
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "max_open_conns":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n <= 0 {
				return d.Errf("max_open_conns must be a positive integer: %q", d.Val())
			}
			h.MaxOpenConns = n
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized subdirective %q", d.Val())
		}
	}
	if h.DSN == "" {
		return d.Err("rocketchat_voip: dsn is required")
	}
	return nil
}

// durationArg reads exactly one positive duration argument.
func durationArg(d *caddyfile.Dispenser) (time.Duration, error) {
	name := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: not a positive duration: %q", name, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return dur, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
