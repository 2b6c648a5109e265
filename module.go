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
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dblimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/ratelimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/rcsync"
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
	maxMaxBody        = 8 << 20
	defaultBodyBudget = 64 << 20
	defaultDBTimeout  = 3 * time.Second
	defaultCompat     = 6
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
// free in time), stale (max_staleness passed), client_closed and
// internal_error; it also labels the metrics
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
	// when no server of the DSN answers within 5 s. Without it (the default)
	// a start waits at most half a second for the database, then serves
	// degraded: other requests pass as ever, room.close answers 503 until a
	// server answers, and then is served with no reload. Set it where a
	// Caddy without its database must not come up at all. A server that
	// answers in time and refuses (access denied, unknown database, missing
	// privilege, outdated schema) fails the load either way; one that
	// answers later and refuses is logged at error, and room.close answers
	// 503 until it is fixed.
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
	// must be at least max_body. A body takes budget as its bytes arrive,
	// and no user holds more than its share (the budget over the users
	// holding some, at most half while one is alone, at least max_body). A
	// request whose body cannot get budget within db_timeout or 1s,
	// whichever is shorter, gets 503 (outcome body_budget); one whose
	// client sends nothing for db_timeout gets 400 (unreadable_body). Only
	// requests from credentials that authenticated hold a body: others are
	// answered before theirs is read. Default: 64 MiB.
	BodyBudget int64 `json:"body_budget,omitempty"`

	// DBTimeout bounds the database work of one request, COMMIT included;
	// past it the request gets 503. Default: 3s.
	DBTimeout caddy.Duration `json:"db_timeout,omitempty"`

	// Compat is the Rocket.Chat major version whose 401 body is sent: 6 for
	// the published API page's (default), 7 for Rocket.Chat 7.x's.
	Compat int `json:"compat,omitempty"`

	// MaxOpenConns caps the connections of the pool shared by every handler
	// with the same DSN. It is the pool's setting, as DBConcurrency is: the
	// handlers of one config that state it must state the same value (or
	// the load fails, naming them), and a handler that leaves it unset has
	// no say. A reload applies the new config's once it starts. Default:
	// 64.
	MaxOpenConns int `json:"max_open_conns,omitempty"`

	// DBConcurrency bounds the handled requests that work on the database
	// at once while the database queues; more wait their turn, within
	// db_timeout. A database serves a few concurrent requests best and
	// loses throughput to lock and CPU contention when every client's is
	// let in at once. While round trips take less than twice as long as the
	// fastest lately (a database a few milliseconds away, where requests
	// spend their time on the wire), the bound rises, up to max_open_conns;
	// it falls back as they slow down, and halves when database work fails.
	// The bound is the database's, shared and agreed on as max_open_conns
	// is. At most max_open_conns; set it to max_open_conns for a fixed
	// bound. Default: 8, or max_open_conns when that is less.
	DBConcurrency int `json:"db_concurrency,omitempty"`

	// MaxStaleness is how old the data a rocketchat_voip_sync keeps in MySQL
	// may be (docs/sync.md, "Freshness at the edge"): past it, room.close
	// answers 503 service-unavailable (outcome stale), or goes to Rocket.Chat
	// (WhenStale). It applies to a database that such a sync feeds (one with
	// a sync_state row for SyncSource); with the sync's default
	// reconcile_interval of 1m, a revoked token stops working at the edge
	// within 2m either way. Default: 2m. IgnoreStaleness (Caddyfile:
	// max_staleness off) turns the check off.
	MaxStaleness    caddy.Duration `json:"max_staleness,omitempty"`
	IgnoreStaleness bool           `json:"ignore_staleness,omitempty"`

	// WhenStale is "unavailable" (default: 503) or "upstream": the request
	// goes, untouched, to the next handler (reverse_proxy to Rocket.Chat),
	// which answers from its own data. This is the one case where room.close
	// reaches Rocket.Chat, and only when configured so.
	WhenStale string `json:"when_stale,omitempty"`

	// SyncSource is the sync's source name (its 'source'). Default: rocketchat.
	SyncSource string `json:"sync_source,omitempty"`

	// UnknownCredentials is what room.close does with an X-User-Id and
	// X-Auth-Token that name no live login token in MySQL: "unauthorized"
	// (default: 401, as Rocket.Chat answers them) or "upstream": the request
	// goes, with its body, to the next handler (reverse_proxy to
	// Rocket.Chat), so that a login newer than the sync's copy is answered by
	// Rocket.Chat rather than taken for a logout. The cost: made-up
	// credentials then reach Rocket.Chat, which answers and rate limits them
	// itself. A request without both headers is answered 401 either way.
	UnknownCredentials string `json:"unknown_credentials,omitempty"`

	logger     *zap.Logger
	shed       *shedLog
	pool       *dbpool.Pool
	requests   *requestDB
	db         database
	limiterKey string
	limiter    *ratelimit.Limiter
	dbLimit    *dblimit.Limiter
	// replyUnauthorized is the 401 with the body chosen by Compat.
	replyUnauthorized reply
	freshness         *rcsync.Freshness // nil: no staleness check
	freshnessKey      string
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
// fields holds whether the user wrote one of them or both, and placeholders
// expanded: an unset {env.X} DSN is "", which the driver would take for the
// empty user at 127.0.0.1:3306. Provision calls it before anything else
// (Caddy calls it again after Provision).
func (h *Handler) Validate() error {
	if err := h.validateWritten(); err != nil {
		return err
	}
	if strings.TrimSpace(caddy.NewReplacer().ReplaceAll(h.DSN, "")) == "" {
		// Only placeholders can expand to nothing: what is written holds no
		// secret.
		return fmt.Errorf("dsn: %s is empty (unset or blank in Caddy's environment)", h.DSN)
	}
	return nil
}

// validateWritten is Validate but for what placeholders expand to, which
// the Caddyfile parser calls: adapting a config must not depend on the
// environment it will run in.
func (h *Handler) validateWritten() error {
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
	if eff.UnknownCredentials != UnknownCredentialsUnauthorized && eff.UnknownCredentials != UnknownCredentialsUpstream {
		return fmt.Errorf("unknown_credentials: must be %s or %s, not %q", UnknownCredentialsUnauthorized, UnknownCredentialsUpstream, eff.UnknownCredentials)
	}
	return h.validateFreshness()
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
	h.UnknownCredentials = cmp.Or(h.UnknownCredentials, UnknownCredentialsUnauthorized)
	h.applyFreshnessDefaults()
}

// Provision takes a hold on the pool of the DSN (shared with every handler
// and config that names it) and records what the handler asks of it on the
// load's gate, which applies the load's wishes, migration and bring-up
// included, once every module of the load is provisioned. A database that
// does not answer is left to come up in the background (see
// RequireDatabase).
func (h *Handler) Provision(ctx caddy.Context) error {
	// What the handler states of the pool's settings; unset is no opinion.
	stated := dbpool.Settings{MaxOpenConns: h.MaxOpenConns, DBConcurrency: h.DBConcurrency}
	// Refuse a bad config before touching anything shared.
	h.applyDefaults()
	if err := h.Validate(); err != nil {
		return err
	}
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	logVersionOnce(h.logger)
	if err := h.holdDatabase(ctx, stated); err != nil {
		return err
	}

	var limiter *ratelimit.Limiter
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
		limiter = val.(*ratelimit.Limiter)
	}
	h.useBodyBudget()
	if err := h.useFreshness(); err != nil {
		return err
	}
	h.wire(h.logger, pooled{h.pool, h.requests, time.Duration(h.DBTimeout)}, h.pool.Limiter(), limiter)
	return nil
}

// wire gives a provisioned handler, its defaults applied, what its request
// path runs on: the database and its db_concurrency limiter, and the rate
// limiter (nil: off). Provision calls it, and so do the tests of the HTTP
// logic, with stand-ins, so that they run the handler Provision builds.
func (h *Handler) wire(logger *zap.Logger, db database, dbLimit *dblimit.Limiter, limiter *ratelimit.Limiter) {
	h.logger = logger
	h.shed = &shedLog{logger: logger}
	h.db, h.dbLimit, h.limiter = db, dbLimit, limiter
	h.replyUnauthorized = reply{http.StatusUnauthorized, OutcomeUnauthorized, bodyUnauthorized6}
	if h.Compat == 7 {
		h.replyUnauthorized.body = bodyUnauthorized7
	}
}

// holdDatabase takes the handler's holds on the pool and on its request
// store, and tells the load's gate what the handler asks of the pool.
func (h *Handler) holdDatabase(ctx caddy.Context, stated dbpool.Settings) error {
	pool, err := dbpool.Hold(caddy.NewReplacer().ReplaceAll(h.DSN, ""))
	if err != nil {
		return err
	}
	h.pool = pool
	if h.requests, err = holdRequestDB(pool); err != nil {
		return err
	}
	gate, err := gateOf(ctx)
	if err != nil {
		return err
	}
	return gate.load.Want(pool, dbpool.Need{
		Holder:          "the rocketchat_voip handler of " + h.Path,
		Settings:        stated,
		Migrate:         h.Migrate,
		RequireDatabase: h.RequireDatabase,
	})
}

// Cleanup releases this config's hold on the pool; the last holder closes it.
func (h *Handler) Cleanup() error {
	if h.shed != nil {
		h.shed.flush()
	}
	h.releaseBodyBudget()
	h.releaseFreshness()
	if h.limiterKey != "" {
		limiters.Delete(h.limiterKey) //nolint:errcheck // a limiter's Destruct cannot fail
	}
	if h.requests != nil {
		h.requests.release()
	}
	if h.pool != nil {
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
