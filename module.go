// Package rocketchatvoip is a Caddy HTTP handler that answers Rocket.Chat's
// POST /api/v1/voip/room.close at the edge, from MySQL, and passes every
// other request to the next handler (normally reverse_proxy to Rocket.Chat).
//
// The wire contract is Rocket.Chat's own; docs/contract.md states it, with
// the MySQL schema and the deliberate differences. Importing the package also
// registers the rocketchat_voip_outbox app (package outboxapp), which
// delivers each close to a webhook.
package rocketchatvoip

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dblimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/ratelimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	// The outbox app comes with the handler: xcaddy --with brings both.
	_ "github.com/edgevoip/caddy-rocketchat-voip/outboxapp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults, all Rocket.Chat's where Rocket.Chat has one.
const (
	defaultPath            = "/api/v1/voip/room.close"
	defaultLoginExpiration = 90 * 24 * time.Hour // Accounts_LoginExpiration
	defaultRateLimit       = 10                  // API_Enable_Rate_Limiter_Limit_Calls_Default
	defaultRateLimitWindow = time.Minute         // API_Enable_Rate_Limiter_Limit_Time_Default
	defaultMaxBody         = 1 << 20
	// maxMaxBody keeps every body's comment storable whole: messages.msg
	// holds 16 MiB, and the close's statement must fit in MariaDB's default
	// max_allowed_packet of 16 MiB (MySQL's and TiDB's are 64 MiB).
	maxMaxBody           = 8 << 20
	defaultBodyBudget    = 64 << 20
	defaultDBTimeout     = 3 * time.Second
	defaultCompat        = 6
	defaultMaxOpenConns  = 64
	defaultDBConcurrency = 8
)

// Handler answers Rocket.Chat's POST /api/v1/voip/room.close from MySQL and
// passes every other request, untouched, to the next handler (normally
// reverse_proxy to Rocket.Chat). A handled request is answered by this
// module itself, whatever its outcome, and never reaches the next handler
// or handle_errors.
//
// It authenticates X-User-Id and X-Auth-Token against the hashed login
// tokens in MySQL, applies Rocket.Chat's default API rate limit, validates
// the body as Rocket.Chat's schema does, checks the inbound-voip-calls
// permission, and closes the room in one transaction, answering with
// Rocket.Chat's status codes and bodies.
//
// Each handled request sets the placeholders
// {http.rocketchat_voip.outcome}, {http.rocketchat_voip.user_id} and
// {http.rocketchat_voip.rid}. The outcome is one of closed, unauthorized,
// rate_limited, invalid_params, forbidden, invalid_token, invalid_room,
// room_closed, too_large, unreadable_body, unavailable (the database failed
// or was slower than db_timeout), overloaded (shed: every database slot
// stayed busy for the whole db_timeout), body_budget (shed: no body_budget
// free in time), client_closed and internal_error; it also labels the metrics
// caddy_rocketchat_voip_requests_total and
// caddy_rocketchat_voip_request_duration_seconds.
//
// A zero value in any field below means its default.
type Handler struct {
	// DSN is the go-sql-driver/mysql data source name, for example
	// "gw:secret@tcp(db:3306)/rocketchat". Required. The tcp address may list
	// several servers, "tcp(db1:3306,db2:3306,db3:3306)": connections go to
	// the first that answers and is ready, in that order. Placeholders such
	// as {env.ROCKETCHAT_VOIP_DSN} are expanded. The module always sets
	// parseTime=true and loc=UTC, and never interpolates parameters.
	DSN string `json:"dsn,omitempty"`

	// Migrate applies the embedded schema migrations at start (or, for a
	// database away at start, once it answers). Without it, a database
	// whose schema is older than this build needs fails the config load,
	// unless another site of the same config migrates it.
	Migrate bool `json:"migrate,omitempty"`

	// RequireDatabase fails the config load, at start and at every reload,
	// when no server of the DSN answers, as the module did before it could
	// start without its database. Without it (the default) the module
	// starts degraded: other requests pass as ever, room.close answers 503
	// until a server answers, and then is served with no reload. Set it
	// where a Caddy without its database must not come up at all, for
	// example behind a load balancer that should route only to edges that
	// can close rooms. A server that answers and refuses (access denied,
	// unknown database, missing privilege, outdated schema) fails the load
	// either way.
	RequireDatabase bool `json:"require_database,omitempty"`

	// Path is the exact request path that is handled. Default:
	// /api/v1/voip/room.close.
	Path string `json:"path,omitempty"`

	// LoginExpiration is how long a login (resume) token is valid after its
	// creation, Rocket.Chat's Accounts_LoginExpiration. Personal access
	// tokens never expire. Default: 90 days.
	LoginExpiration caddy.Duration `json:"login_expiration,omitempty"`

	// RateLimit configures Rocket.Chat's default API rate limiter for this
	// route. Default (when absent): 10 requests per 60s per client IP.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// MaxBody is the largest request body accepted, in bytes, at most 8 MiB
	// (the schema stores any comment such a body can carry, whole); larger
	// bodies get 413. The server's max_allowed_packet must exceed it.
	// Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// BodyBudget caps the bytes of room.close request bodies held in memory
	// at once by the whole process (every handler and config shares one
	// budget; when handlers set different values, the largest applies). It
	// must be at least max_body. A request whose body cannot get budget
	// within db_timeout or 1s, whichever is shorter, gets 503 (outcome
	// body_budget). Only requests from credentials that authenticated hold
	// a body: others are answered before theirs is read. Default: 64 MiB.
	BodyBudget int64 `json:"body_budget,omitempty"`

	// DBTimeout bounds the database work of one request, COMMIT included;
	// past it the request gets 503. Default: 3s.
	DBTimeout caddy.Duration `json:"db_timeout,omitempty"`

	// Compat is the Rocket.Chat major version whose 401 body is sent: 6 for
	// the published API page's (default), 7 for Rocket.Chat 7.x's.
	Compat int `json:"compat,omitempty"`

	// MaxOpenConns caps the connections of the pool shared by every handler
	// with the same DSN. It is the pool's setting, as DBConcurrency is:
	// handlers of one config that share a DSN must give both the same
	// values (after defaults), or the load fails naming them; a reload
	// applies the new config's. Default: 64.
	MaxOpenConns int `json:"max_open_conns,omitempty"`

	// DBConcurrency bounds the handled requests that work on the database
	// at once while the database queues; more wait their turn, within
	// db_timeout. A database serves a few concurrent requests best and
	// loses throughput to lock and CPU contention when every client's is
	// let in at once. While round trips take less than twice as long as the
	// fastest lately (a database a few milliseconds away, where requests
	// spend their time on the wire), the bound rises, up to max_open_conns;
	// it falls back as they slow down, and halves when database work fails.
	// The bound is the database's: every handler with the same DSN shares
	// it. At most max_open_conns; set it to max_open_conns for a fixed
	// bound. Default: 8, or max_open_conns when that is less.
	DBConcurrency int `json:"db_concurrency,omitempty"`

	logger     *zap.Logger
	shed       *shedLog
	pool       *dbpool.Pool
	db         database
	limiterKey string
	limiter    *ratelimit.Limiter
	dbLimit    *dblimit.Limiter
	// replyUnauthorized is the 401 with the body chosen by Compat.
	replyUnauthorized reply
}

// RateLimit is the rate limiter's configuration. When given, it either is
// off or has both a request count and a window.
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

// Validate is the one place that decides what a valid configuration is. It
// judges the values in effect, defaults filled in, so that a rule tying two
// fields holds whether the user wrote one of them or both. The Caddyfile
// parser and Provision call it before anything else (Caddy calls it again
// after Provision).
func (h *Handler) Validate() error {
	if h.DSN == "" {
		return errors.New("dsn is required")
	}
	if err := h.validateFields(); err != nil {
		return err
	}
	eff := h.withDefaults()
	// Across fields, so not in validateFields: the Caddyfile may set them
	// in either order.
	if eff.BodyBudget < eff.MaxBody {
		return fmt.Errorf("body_budget: must be at least max_body (%d bytes), not %d", eff.MaxBody, eff.BodyBudget)
	}
	if eff.DBConcurrency > eff.MaxOpenConns {
		defaulted := ""
		if h.MaxOpenConns == 0 {
			defaulted = ", the default"
		}
		return fmt.Errorf("db_concurrency: %d is more than max_open_conns (%d%s): each request working on the database holds a connection",
			eff.DBConcurrency, eff.MaxOpenConns, defaulted)
	}
	return nil
}

// validateFields checks each field on its own, with defaults filled in; the
// Caddyfile parser calls it after each subdirective so that an error names
// its line.
func (h *Handler) validateFields() error {
	eff := h.withDefaults()
	switch {
	case eff.Path[0] != '/':
		return fmt.Errorf("path: must start with /, not %q", eff.Path)
	case eff.LoginExpiration < 0:
		return errors.New("login_expiration: must not be negative")
	case eff.RateLimit.Off && (eff.RateLimit.Requests != 0 || eff.RateLimit.Window != 0):
		return errors.New("rate_limit: off takes no request count or window")
	case !eff.RateLimit.Off && eff.RateLimit.Requests <= 0:
		return fmt.Errorf("rate_limit: the request count must be positive, not %d", eff.RateLimit.Requests)
	case !eff.RateLimit.Off && eff.RateLimit.Window <= 0:
		return fmt.Errorf("rate_limit: the window must be positive, not %s", time.Duration(eff.RateLimit.Window))
	case eff.MaxBody < 0 || eff.MaxBody > maxMaxBody:
		return fmt.Errorf("max_body: must be between 1 byte and 8 MiB, not %d", eff.MaxBody)
	case eff.BodyBudget < 0:
		return fmt.Errorf("body_budget: must not be negative, not %d", eff.BodyBudget)
	case eff.DBTimeout < 0:
		return errors.New("db_timeout: must not be negative")
	case eff.Compat != 6 && eff.Compat != 7:
		return fmt.Errorf("compat: must be 6 or 7, not %d", eff.Compat)
	case eff.MaxOpenConns < 0:
		return fmt.Errorf("max_open_conns: must not be negative, not %d", eff.MaxOpenConns)
	case eff.DBConcurrency < 0:
		return fmt.Errorf("db_concurrency: must not be negative, not %d", eff.DBConcurrency)
	}
	return nil
}

// withDefaults is a copy of h with every zero value replaced by its default.
func (h *Handler) withDefaults() *Handler {
	eff := *h
	eff.applyDefaults()
	return &eff
}

func (h *Handler) applyDefaults() {
	h.Path = cmp.Or(h.Path, defaultPath)
	h.LoginExpiration = cmp.Or(h.LoginExpiration, caddy.Duration(defaultLoginExpiration))
	if h.RateLimit == nil {
		h.RateLimit = &RateLimit{Requests: defaultRateLimit, Window: caddy.Duration(defaultRateLimitWindow)}
	}
	h.MaxBody = cmp.Or(h.MaxBody, defaultMaxBody)
	h.BodyBudget = cmp.Or(h.BodyBudget, defaultBodyBudget)
	h.DBTimeout = cmp.Or(h.DBTimeout, caddy.Duration(defaultDBTimeout))
	h.Compat = cmp.Or(h.Compat, defaultCompat)
	h.MaxOpenConns = cmp.Or(h.MaxOpenConns, dbpool.DefaultMaxOpenConns)
	h.DBConcurrency = cmp.Or(h.DBConcurrency, min(dbpool.DefaultDBConcurrency, h.MaxOpenConns))
}

// Provision connects to MySQL (or reuses the pool of an earlier config with
// the same DSN), checks or migrates the schema, and prepares every statement
// the request path uses; a database that does not answer is left to come
// up in the background (see RequireDatabase).
func (h *Handler) Provision(ctx caddy.Context) error {
	// Refuse a bad config before touching anything shared.
	h.applyDefaults()
	if err := h.Validate(); err != nil {
		return err
	}
	h.logger = ctx.Logger()
	h.shed = &shedLog{logger: h.logger}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	pool, err := dbpool.Get(ctx, caddy.NewReplacer().ReplaceAll(h.DSN, ""), &dbpool.Settings{
		MaxOpenConns:  h.MaxOpenConns,
		DBConcurrency: h.DBConcurrency,
		Holder:        "the rocketchat_voip handler of " + h.Path,
	})
	if err != nil {
		return err
	}
	h.pool, h.db, h.dbLimit = pool, pooled{pool}, pool.Limiter()
	if h.Migrate {
		h.pool.AddMigrator()
	}
	if err := h.setupDatabase(ctx); err != nil {
		return err
	}

	if !h.RateLimit.Off {
		// The counts outlive a reload that keeps the same limit on the same
		// route and database; a changed limit starts afresh.
		h.limiterKey = fmt.Sprintf("%s %s %d/%s", h.pool.Name(), h.Path, h.RateLimit.Requests, time.Duration(h.RateLimit.Window))
		val, _, err := limiters.LoadOrNew(h.limiterKey, func() (caddy.Destructor, error) {
			return ratelimit.New(h.RateLimit.Requests, time.Duration(h.RateLimit.Window)), nil
		})
		if err != nil {
			h.limiterKey = ""
			return err
		}
		h.limiter = val.(*ratelimit.Limiter)
	}
	h.useBodyBudget()
	h.replyUnauthorized = reply{http.StatusUnauthorized, OutcomeUnauthorized, bodyUnauthorized6}
	if h.Compat == 7 {
		h.replyUnauthorized.body = bodyUnauthorized7
	}
	return nil
}

// setupDatabase brings the pool into service (dbpool.Setup: schema checked
// or migrated, statements prepared), or leaves it to come up in the
// background when no server answers: the handler then starts degraded,
// unless require_database says otherwise. An outdated schema without
// migrate is not yet an error: another site of this config may migrate the
// database after this one is provisioned, so the schema gate decides once
// all of them are.
func (h *Handler) setupDatabase(ctx caddy.Context) error {
	err := h.pool.Setup(ctx, h.Migrate)
	var away *dbconnect.UnreachableError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &away) && !h.RequireDatabase:
		h.logger.Warn("database unreachable: starting without it; room.close answers 503 until a server answers, then is served with no reload (require_database fails the load instead)",
			zap.String("database", away.Name), zap.Error(away.Err))
		return nil
	case errors.As(err, new(*schema.OutdatedError)):
		gate, err := ctx.App(schemaGateID)
		if err != nil {
			return err
		}
		gate.(*schemaGate).checkLater(h.pool)
		return nil
	}
	return err
}

// Cleanup releases this config's hold on the pool; the last holder closes it.
func (h *Handler) Cleanup() error {
	if h.shed != nil {
		h.shed.flush()
	}
	h.releaseBodyBudget()
	if h.limiterKey != "" {
		limiters.Delete(h.limiterKey) //nolint:errcheck // a limiter's Destruct cannot fail
	}
	if h.pool != nil {
		if h.Migrate {
			h.pool.RemoveMigrator()
		}
		return h.pool.Release()
	}
	return nil
}

// limiters holds the rate limiters' state across config reloads.
var limiters = caddy.NewUsagePool()

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
