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
	// Right after the auth directives (basic_auth, forward_auth), as an
	// auth-like handler is placed: before handle, handle_path and route, so
	// that a site whose proxy sits in one of those blocks still answers
	// room.close here instead of forwarding it; before encode, intercept
	// and templates, so that nothing rewrites Rocket.Chat's exact bodies;
	// and after the operator's own access control. No 'order' line needed.
	httpcaddyfile.RegisterDirectiveOrder("rocketchat_voip", httpcaddyfile.After, "forward_auth")
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
//	    max_staleness <duration> | off
//	    when_stale unavailable|upstream
//	    sync_source <name>
//	}
//
// The parser reads the syntax; what values are valid is decided by
// Validate, which it calls (all but what placeholders expand to, known only
// where Caddy runs) after each subdirective so that an error names the
// line. A value of 0 means the default, as in JSON.
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
	if err := h.validateWritten(); err != nil {
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
	case "max_staleness":
		var arg string
		if arg, err = cfargs.One(d); err == nil {
			if arg == "off" {
				h.IgnoreStaleness = true
			} else if v, perr := caddy.ParseDuration(arg); perr != nil {
				err = d.Errf("max_staleness: not a duration nor off: %q", arg)
			} else {
				h.MaxStaleness = caddy.Duration(v)
			}
		}
	case "when_stale":
		h.WhenStale, err = cfargs.One(d)
	case "sync_source":
		h.SyncSource, err = cfargs.One(d)
	case "unknown_credentials":
		h.UnknownCredentials, err = cfargs.One(d)
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
