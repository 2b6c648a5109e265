package rocketchatvoip

import (
	"math"
	"strconv"

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
//	    db_concurrency <n>
//	}
//
// The parser reads the syntax; what values are valid is decided by
// Validate, which it calls after each subdirective so that an error names
// the line. A value of 0 means the default, as in JSON.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if err := h.unmarshalSubdirective(d); err != nil {
			return err
		}
		if err := h.validateFields(); err != nil {
			return d.Err(err.Error())
		}
	}
	if err := h.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

func (h *Handler) unmarshalSubdirective(d *caddyfile.Dispenser) error {
	name := d.Val()
	args := d.RemainingArgs()
	one := func() (string, error) {
		if len(args) != 1 {
			return "", d.ArgErr()
		}
		return args[0], nil
	}
	integer := func() (int, error) {
		arg, err := one()
		if err != nil {
			return 0, err
		}
		n, err := strconv.Atoi(arg)
		if err != nil {
			return 0, d.Errf("%s: not a whole number: %q", name, arg)
		}
		return n, nil
	}
	duration := func() (caddy.Duration, error) {
		arg, err := one()
		if err != nil {
			return 0, err
		}
		dur, err := caddy.ParseDuration(arg)
		if err != nil {
			return 0, d.Errf("%s: not a duration: %q", name, arg)
		}
		return caddy.Duration(dur), nil
	}
	var err error
	switch name {
	case "dsn":
		h.DSN, err = one()
	case "migrate":
		if len(args) != 0 {
			return d.ArgErr()
		}
		h.Migrate = true
	case "path":
		h.Path, err = one()
	case "login_expiration":
		h.LoginExpiration, err = duration()
	case "rate_limit":
		switch {
		case len(args) == 1 && args[0] == "off":
			h.RateLimit = &RateLimit{Off: true}
		case len(args) == 2:
			n, err := strconv.Atoi(args[0])
			if err != nil {
				return d.Errf("rate_limit: the request count is not a whole number: %q", args[0])
			}
			window, err := caddy.ParseDuration(args[1])
			if err != nil {
				return d.Errf("rate_limit: the window is not a duration: %q", args[1])
			}
			h.RateLimit = &RateLimit{Requests: n, Window: caddy.Duration(window)}
		default:
			return d.Err("rate_limit takes '<requests> <window>' or 'off'")
		}
	case "max_body":
		var arg string
		if arg, err = one(); err == nil {
			size, perr := humanize.ParseBytes(arg)
			if perr != nil || size > math.MaxInt64 {
				return d.Errf("max_body: not a size: %q", arg)
			}
			h.MaxBody = int64(size)
		}
	case "db_timeout":
		h.DBTimeout, err = duration()
	case "compat":
		h.Compat, err = integer()
	case "max_open_conns":
		h.MaxOpenConns, err = integer()
	case "db_concurrency":
		h.DBConcurrency, err = integer()
	default:
		return d.Errf("unrecognized subdirective %q", name)
	}
	return err
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
