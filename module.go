// Package rocketchatvoip is a Caddy HTTP handler that answers Rocket.Chat's
// POST /api/v1/voip/room.close at the edge, from MySQL, and passes every
// other request to the next handler (normally reverse_proxy to Rocket.Chat).
//
// The wire contract is Rocket.Chat's own; see README.md for the deliberate
// differences.
package rocketchatvoip

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/ratelimit"
	"github.com/edgevoip/caddy-rocketchat-voip/schema"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults, all Rocket.Chat's where Rocket.Chat has one.
const (
	DefaultPath            = "/api/v1/voip/room.close"
	DefaultLoginExpiration = 90 * 24 * time.Hour // Accounts_LoginExpiration
	DefaultRateLimit       = 10                  // API_Enable_Rate_Limiter_Limit_Calls_Default
	DefaultRateLimitWindow = time.Minute         // API_Enable_Rate_Limiter_Limit_Time_Default
	DefaultMaxBody         = 1 << 20
	DefaultDBTimeout       = 3 * time.Second
	DefaultCompat          = 6
	DefaultMaxOpenConns    = 64
)

// Handler answers POST voip/room.close from MySQL.
type Handler struct {
	// DSN is the go-sql-driver/mysql data source name, for example
	// "gw:secret@tcp(db:3306)/rocketchat". Required. Placeholders such as
	// {env.ROCKETCHAT_VOIP_DSN} are expanded. The gateway always sets
	// parseTime=true and loc=UTC, and never interpolates parameters.
	DSN string `json:"dsn,omitempty"`

	// Migrate applies the embedded schema migrations at start. Without it,
	// a database whose schema is older than this build needs is an error.
	Migrate bool `json:"migrate,omitempty"`

	// Path is the exact request path that is handled. Default:
	// /api/v1/voip/room.close.
	Path string `json:"path,omitempty"`

	// LoginExpiration is how long a login (resume) token is valid after its
	// creation, Rocket.Chat's Accounts_LoginExpiration. Personal access
	// tokens never expire. Default: 90 days.
	LoginExpiration caddy.Duration `json:"login_expiration,omitempty"`

	// RateLimit configures Rocket.Chat's default API rate limiter for this
	// route. Default: 10 requests per 60s per client IP.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// MaxBody is the largest request body accepted, in bytes; larger bodies
	// get 413. Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// DBTimeout bounds all database work of one request; past it the
	// request gets 503 and nothing is written. Default: 3s.
	DBTimeout caddy.Duration `json:"db_timeout,omitempty"`

	// Compat selects the 401 body: 6 for the published API page's (default),
	// 7 for Rocket.Chat 7.x's.
	Compat int `json:"compat,omitempty"`

	// MaxOpenConns caps the connections of the pool shared by every handler
	// with the same DSN. Default: 64.
	MaxOpenConns int `json:"max_open_conns,omitempty"`

	logger  *zap.Logger
	poolKey string
	pool    *dbPool
	limiter *ratelimit.Limiter
	// unauthorized is the 401 body chosen by Compat.
	unauthorized []byte
}

// RateLimit is the rate limiter's configuration.
type RateLimit struct {
	// Off disables rate limiting.
	Off bool `json:"off,omitempty"`
	// Requests allowed per client IP in each window.
	Requests int `json:"requests,omitempty"`
	// Window is the length of the fixed window.
	Window caddy.Duration `json:"window,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.rocketchat_voip",
		New: func() caddy.Module { return new(Handler) },
	}
}

func (h *Handler) applyDefaults() {
	if h.Path == "" {
		h.Path = DefaultPath
	}
	if h.LoginExpiration == 0 {
		h.LoginExpiration = caddy.Duration(DefaultLoginExpiration)
	}
	if h.RateLimit == nil {
		h.RateLimit = &RateLimit{}
	}
	if h.RateLimit.Requests == 0 {
		h.RateLimit.Requests = DefaultRateLimit
	}
	if h.RateLimit.Window == 0 {
		h.RateLimit.Window = caddy.Duration(DefaultRateLimitWindow)
	}
	if h.MaxBody == 0 {
		h.MaxBody = DefaultMaxBody
	}
	if h.DBTimeout == 0 {
		h.DBTimeout = caddy.Duration(DefaultDBTimeout)
	}
	if h.Compat == 0 {
		h.Compat = DefaultCompat
	}
	if h.MaxOpenConns == 0 {
		h.MaxOpenConns = DefaultMaxOpenConns
	}
}

// Provision connects to MySQL (or reuses the pool of an earlier config with
// the same DSN), checks or migrates the schema, and prepares every statement
// the request path uses.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	// The driver's own messages (dropped connections and the like) go to
	// Caddy's log rather than bare stderr.
	_ = mysql.SetLogger(driverLogger{h.logger.Named("mysql")})
	h.applyDefaults()
	if err := h.Validate(); err != nil {
		return err
	}
	dsn := caddy.NewReplacer().ReplaceAll(h.DSN, "")
	cfg, err := dbconnect.ParseDSN(dsn)
	if err != nil {
		return err
	}
	h.poolKey = cfg.Key()
	val, _, err := pools.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
		db, err := dbconnect.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return &dbPool{DB: db, name: cfg.String()}, nil
	})
	if err != nil {
		h.poolKey = ""
		return err
	}
	h.pool = val.(*dbPool)
	h.pool.SetMaxOpenConns(h.MaxOpenConns)
	h.pool.SetMaxIdleConns(h.MaxOpenConns)

	setupCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if h.Migrate {
		applied, err := schema.Migrate(setupCtx, h.pool.DB)
		if err != nil {
			return fmt.Errorf("migrating %s: %w", cfg, err)
		}
		if len(applied) > 0 {
			h.logger.Info("applied schema migrations", zap.Ints("versions", applied))
		}
	} else if err := schema.Check(setupCtx, h.pool.DB); errors.As(err, new(*schema.OutdatedError)) {
		// Another site of this config may migrate this database after us:
		// the schema gate decides once all of them are provisioned.
		gate, err := ctx.App(schemaGateID)
		if err != nil {
			return err
		}
		gate.(*schemaGate).checkLater(h.pool)
		return h.provisionRest()
	} else if err != nil {
		return fmt.Errorf("%s: %w", cfg, err)
	}

	if err := h.pool.prepare(setupCtx); err != nil {
		return fmt.Errorf("preparing statements on %s: %w", cfg, err)
	}
	return h.provisionRest()
}

// provisionRest sets up what needs no database.
func (h *Handler) provisionRest() error {
	if !h.RateLimit.Off {
		h.limiter = ratelimit.New(h.RateLimit.Requests, time.Duration(h.RateLimit.Window))
	}
	h.unauthorized = bodyUnauthorized6
	if h.Compat == 7 {
		h.unauthorized = bodyUnauthorized7
	}
	return nil
}

// Validate checks the configuration. Provision calls it before connecting,
// after filling in defaults.
func (h *Handler) Validate() error {
	switch {
	case h.DSN == "":
		return errors.New("rocketchat_voip: dsn is required")
	case len(h.Path) == 0 || h.Path[0] != '/':
		return fmt.Errorf("rocketchat_voip: path %q must start with /", h.Path)
	case h.LoginExpiration < 0:
		return errors.New("rocketchat_voip: login_expiration must not be negative")
	case h.RateLimit != nil && !h.RateLimit.Off && (h.RateLimit.Requests < 0 || h.RateLimit.Window < 0):
		return errors.New("rocketchat_voip: rate_limit needs a positive count and window")
	case h.MaxBody < 0:
		return errors.New("rocketchat_voip: max_body must be positive")
	case h.DBTimeout < 0:
		return errors.New("rocketchat_voip: db_timeout must be positive")
	case h.Compat != 0 && h.Compat != 6 && h.Compat != 7:
		return fmt.Errorf("rocketchat_voip: compat must be 6 or 7, not %d", h.Compat)
	case h.MaxOpenConns < 0:
		return errors.New("rocketchat_voip: max_open_conns must be positive")
	}
	return nil
}

// Cleanup releases this config's hold on the pool; the last holder closes it.
func (h *Handler) Cleanup() error {
	if h.poolKey != "" {
		_, err := pools.Delete(h.poolKey)
		return err
	}
	return nil
}

// driverLogger adapts go-sql-driver/mysql's logger to zap.
type driverLogger struct{ l *zap.Logger }

func (d driverLogger) Print(v ...any) { d.l.Warn(strings.TrimSpace(fmt.Sprint(v...))) }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
