package rocketchatvoip

import (
	"context"
	"errors"
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
)

func init() {
	caddy.RegisterModule(new(schemaGate))
}

// schemaGateID names the app; handlers load it themselves, so it needs no
// configuration and has none.
const schemaGateID = "rocketchat_voip_schema"

// schemaGate checks, once every handler of a config is provisioned, the
// schema of the databases whose handlers found it outdated. Caddy provisions
// a config's sites in no fixed order, so a handler without migrate may look
// at a database before the handler of another site that migrates it; the
// check waits for the app's Start, which Caddy runs after all provisioning.
type schemaGate struct {
	mu      sync.Mutex
	pending []*dbpool.Pool
}

// CaddyModule returns the Caddy module information.
func (*schemaGate) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  schemaGateID,
		New: func() caddy.Module { return new(schemaGate) },
	}
}

// checkLater queues the schema check and statement preparation of pool.
func (g *schemaGate) checkLater(pool *dbpool.Pool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pending = append(g.pending, pool)
}

// Start fails the config load if a database is still outdated, with the
// message Provision would have given, and otherwise prepares the statements.
// A database that went away since Provision is left to come up in the
// background, as at Provision.
func (g *schemaGate) Start() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, pool := range g.pending {
		err := pool.Setup(context.Background(), false)
		if err != nil && !errors.As(err, new(*dbconnect.UnreachableError)) {
			return err
		}
	}
	g.pending = nil
	return nil
}

// Stop implements caddy.App.
func (g *schemaGate) Stop() error { return nil }

var _ caddy.App = (*schemaGate)(nil)
