package rocketchatvoip

import (
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/cfargs"
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
//	    require_database
//	    path <path>
//	    login_expiration <duration>
//	    rate_limit <requests> <window> | off
//	    max_body <size>
//	    body_budget <size>
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
	var err error
	switch name := d.Val(); name {
	case "dsn":
		h.DSN, err = cfargs.One(d)
	case "migrate":
		err = cfargs.None(d)
		h.Migrate = true
	case "require_database":
		err = cfargs.None(d)
		h.RequireDatabase = true
	case "path":
		h.Path, err = cfargs.One(d)
	case "login_expiration":
		h.LoginExpiration, err = cfargs.Duration(d)
	case "rate_limit":
		h.RateLimit, err = parseRateLimit(d)
	case "max_body":
		h.MaxBody, err = size(d, "max_body")
	case "body_budget":
		h.BodyBudget, err = size(d, "body_budget")
	case "db_timeout":
		h.DBTimeout, err = cfargs.Duration(d)
	case "compat":
		h.Compat, err = cfargs.Int(d)
	case "max_open_conns":
		h.MaxOpenConns, err = cfargs.Int(d)
	case "db_concurrency":
		h.DBConcurrency, err = cfargs.Int(d)
	default:
		return d.Errf("unrecognized subdirective %q", name)
	}
	return err
}

// parseRateLimit reads 'rate_limit <requests> <window>' or 'rate_limit off'.
func parseRateLimit(d *caddyfile.Dispenser) (*RateLimit, error) {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && args[0] == "off":
		return &RateLimit{Off: true}, nil
	case len(args) == 2:
		n, err := strconv.Atoi(args[0])
		if err != nil {
			return nil, d.Errf("rate_limit: the request count is not a whole number: %q", args[0])
		}
		window, err := caddy.ParseDuration(args[1])
		if err != nil {
			return nil, d.Errf("rate_limit: the window is not a duration: %q", args[1])
		}
		return &RateLimit{Requests: n, Window: caddy.Duration(window)}, nil
	}
	return nil, d.Err("rate_limit takes '<requests> <window>' or 'off'")
}

// size reads one size argument ("1MiB", "512KB", bytes).
func size(d *caddyfile.Dispenser, name string) (int64, error) {
	arg, err := cfargs.One(d)
	if err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(arg)
	if err != nil || n > math.MaxInt64 {
		return 0, d.Errf("%s: not a size: %q", name, arg)
	}
	return int64(n), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
