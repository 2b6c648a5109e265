package rocketchatvoip

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/cfargs"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
)

func init() {
	caddy.RegisterModule(Health{})
	httpcaddyfile.RegisterHandlerDirective("rocketchat_voip_health", parseHealthCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("rocketchat_voip_health", httpcaddyfile.Before, "reverse_proxy")
}

// Health answers a load balancer's health check from the state of the
// database pool of its DSN, without a query: 200 {"database":"up"} while
// the pool is in service (the schema current, the statements prepared, the
// last connection it opened succeeded), 503 {"database":"down"} otherwise.
// It answers every request it is given; put it behind a matcher, e.g.
// "rocketchat_voip_health /healthz { dsn ... }".
type Health struct {
	// DSN names the pool, as the rocketchat_voip handler's dsn does (the
	// same DSN shares the handler's pool). Required.
	DSN string `json:"dsn,omitempty"`

	pool *dbpool.Pool
}

// CaddyModule returns the Caddy module information.
func (Health) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.rocketchat_voip_health",
		New: func() caddy.Module { return new(Health) },
	}
}

// Validate implements caddy.Validator.
func (h *Health) Validate() error {
	if h.DSN == "" {
		return errors.New("dsn is required")
	}
	return nil
}

// Provision takes a hold on the pool and records it on the load, which
// brings the pool up when it starts (a health check of a DSN that no
// handler uses still sees it come up).
func (h *Health) Provision(ctx caddy.Context) error {
	if err := h.Validate(); err != nil {
		return err
	}
	pool, err := dbpool.Hold(caddy.NewReplacer().ReplaceAll(h.DSN, ""))
	if err != nil {
		return err
	}
	h.pool = pool
	load, err := dbpool.LoadOf(ctx)
	if err != nil {
		return err
	}
	return load.Want(pool, dbpool.Need{Holder: "the rocketchat_voip_health handler"})
}

var (
	healthUp   = []byte(`{"database":"up"}`)
	healthDown = []byte(`{"database":"down"}`)
)

// ServeHTTP implements caddyhttp.MiddlewareHandler; it never calls next.
func (h *Health) ServeHTTP(w http.ResponseWriter, _ *http.Request, _ caddyhttp.Handler) error {
	w.Header().Set("Cache-Control", "no-store")
	if h.pool.Up() {
		writeJSON(w, http.StatusOK, healthUp)
	} else {
		writeJSON(w, http.StatusServiceUnavailable, healthDown)
	}
	return nil
}

// Cleanup releases this config's hold on the pool.
func (h *Health) Cleanup() error {
	if h.pool != nil {
		return h.pool.Release()
	}
	return nil
}

func parseHealthCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var health Health
	err := health.UnmarshalCaddyfile(h.Dispenser)
	return &health, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	rocketchat_voip_health [<matcher>] {
//	    dsn <dsn>
//	}
func (h *Health) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch name := d.Val(); name {
		case "dsn":
			dsn, err := cfargs.One(d)
			if err != nil {
				return err
			}
			h.DSN = dsn
		default:
			return d.Errf("unrecognized subdirective %q", name)
		}
	}
	if err := h.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

var (
	_ caddy.Provisioner           = (*Health)(nil)
	_ caddy.Validator             = (*Health)(nil)
	_ caddy.CleanerUpper          = (*Health)(nil)
	_ caddyhttp.MiddlewareHandler = (*Health)(nil)
	_ caddyfile.Unmarshaler       = (*Health)(nil)
)
