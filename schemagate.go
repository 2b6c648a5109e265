package rocketchatvoip

import (
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
)

func init() {
	caddy.RegisterModule(new(loadGate))
}

// schemaGateID names the app; handlers load it themselves, so it needs no
// configuration and has none.
const schemaGateID = dbpool.GateID

// loadGate is one config load's say over the shared pools. Caddy makes one
// instance per load (ctx.App), provisions the load's sites in no fixed
// order, and starts its apps only once all of them are provisioned. So
// each handler records what it asks of its pool here (its settings,
// migrate, require_database) and the gate checks it against the others,
// touching nothing shared; Start applies the whole: the settings, the
// migration, the bring-up of each pool. A load that Caddy refuses, or that
// fails to start, leaves the pools to the config that serves.
type loadGate struct {
	load   dbpool.Load
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*loadGate) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  schemaGateID,
		New: func() caddy.Module { return new(loadGate) },
	}
}

// Provision implements caddy.Provisioner.
func (g *loadGate) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	return nil
}

// gateOf is the gate of ctx's load.
func gateOf(ctx caddy.Context) (*loadGate, error) {
	app, err := ctx.App(schemaGateID)
	if err != nil {
		return nil, err
	}
	return app.(*loadGate), nil
}

// Start applies the load to its pools and brings each into service; it
// fails the load if a database refuses it (an outdated schema that no
// site migrates, access denied, ...), or does not answer where
// require_database says it must.
func (g *loadGate) Start() error { return g.load.Start(g.logger) }

// Stop withdraws the load's settings and its wish to migrate.
func (g *loadGate) Stop() error {
	g.load.Stop()
	return nil
}

// PoolLoad is the load's record, for the modules that hold a pool
// (dbpool.LoadOf).
func (g *loadGate) PoolLoad() *dbpool.Load { return &g.load }

var (
	_ caddy.App         = (*loadGate)(nil)
	_ caddy.Provisioner = (*loadGate)(nil)
)
