package rocketchatvoip_test

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// twoSites is a config of two servers whose handlers share dsn, each with
// its own extra handler fields.
func twoSites(t *testing.T, dsn string, a, b map[string]any) []byte {
	t.Helper()
	server := func(port int, fields map[string]any) map[string]any {
		h := map[string]any{"handler": "rocketchat_voip", "dsn": dsn}
		for k, v := range fields {
			h[k] = v
		}
		return map[string]any{"listen": []string{fmt.Sprintf("127.0.0.1:%d", port)}, "routes": []any{map[string]any{"handle": []any{h}}}}
	}
	cfg, err := json.Marshal(map[string]any{
		"admin": map[string]any{"disabled": true},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{
			"a": server(freePort(t), a), "b": server(freePort(t), b),
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// poolSettings are the connection cap and the concurrency floor in
// effect on the pool named name: the cap as database/sql enforces it, the
// limit as the handlers' limiter does.
func poolSettings(t *testing.T, name string) (maxOpen, limit int) {
	t.Helper()
	maxOpen, limit = -1, -1
	dbpool.Each(func(p *dbpool.Pool) {
		if p.Name() == name {
			maxOpen, limit = p.DB().Stats().MaxOpenConnections, p.Limiter().Limit()
		}
	})
	return maxOpen, limit
}

// A pool's settings never depend on the order Caddy provisions sites in:
// handlers of one load that share a DSN and state a setting must state the
// same value, whichever comes first; one that leaves it unset has no say;
// and each load applies its own.
func TestPoolSettingsAgreeWithinALoad(t *testing.T) {
	db := testdb.New(t)
	name := fmt.Sprintf("tcp(%s)/%s", db.Cfg.Addr, db.Name)
	t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck

	// 8 beside 16: refused, in whichever order the sites are provisioned
	// (Caddy's map order varies from load to load).
	for range 4 {
		err := caddy.Load(twoSites(t, db.DSN, map[string]any{"max_open_conns": 8}, map[string]any{"max_open_conns": 16}), true)
		if err == nil {
			t.Fatal("two handlers with one DSN and different max_open_conns were loaded")
		}
		for _, want := range []string{"share the pool of " + name, "max_open_conns 8", "max_open_conns 16", "the rocketchat_voip handler of /api/v1/voip/room.close"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("the refusal %q does not say %q", err, want)
			}
		}
	}

	// One site states 8, the other nothing: 8.
	if err := caddy.Load(twoSites(t, db.DSN, map[string]any{"max_open_conns": 8}, nil), true); err != nil {
		t.Fatal(err)
	}
	if got, _ := poolSettings(t, name); got != 8 {
		t.Fatalf("pool capped at %d connections, want 8", got)
	}
	// A reload that leaves the setting unset everywhere applies the default.
	if err := caddy.Load(twoSites(t, db.DSN, nil, nil), true); err != nil {
		t.Fatal(err)
	}
	if got, _ := poolSettings(t, name); got != 64 {
		t.Fatalf("after the reload, pool capped at %d connections, want 64", got)
	}
}

// A reload that fails for a reason of its own, after every handler of it
// was provisioned (here a port in use), leaves the running config's pool
// as it was: its settings take effect only when the load starts, and a
// start that fails is undone.
func TestFailedReloadLeavesThePool(t *testing.T) {
	db := testdb.New(t)
	name := fmt.Sprintf("tcp(%s)/%s", db.Cfg.Addr, db.Name)
	t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck
	eight := map[string]any{"max_open_conns": 8, "db_concurrency": 8}
	if err := caddy.Load(twoSites(t, db.DSN, eight, eight), true); err != nil {
		t.Fatal(err)
	}
	if maxOpen, limit := poolSettings(t, name); maxOpen != 8 || limit != 8 {
		t.Fatalf("serving with %d connections and limit %d, want 8 and 8", maxOpen, limit)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	two := map[string]any{"max_open_conns": 2, "db_concurrency": 2}
	// Caddy starts apps in map order: over a few tries the gate starts
	// both before the HTTP app fails and after.
	for range 6 {
		cfg := twoSites(t, db.DSN, two, two)
		var parsed map[string]any
		if err := json.Unmarshal(cfg, &parsed); err != nil {
			t.Fatal(err)
		}
		servers := parsed["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
		servers["taken"] = map[string]any{"listen": []string{taken.Addr().String()}, "routes": []any{}}
		cfg, _ = json.Marshal(parsed)
		if err := caddy.Load(cfg, true); err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("a config with a port in use: %v", err)
		}
		if maxOpen, limit := poolSettings(t, name); maxOpen != 8 || limit != 8 {
			t.Fatalf("after a failed reload the pool serves with %d connections and limit %d, want 8 and 8", maxOpen, limit)
		}
	}
}
