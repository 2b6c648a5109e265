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

func poolMaxOpen(t *testing.T, name string) int {
	t.Helper()
	got := -1
	dbpool.Each(func(p *dbpool.Pool) {
		if p.Name() == name {
			got = p.DB().Stats().MaxOpenConnections
		}
	})
	return got
}

// A pool's settings never depend on the order Caddy provisions sites in:
// handlers of one load that share a DSN must agree on them (after
// defaults), whichever comes first, and each load applies its own.
func TestPoolSettingsAgreeWithinALoad(t *testing.T) {
	db := testdb.New(t)
	name := fmt.Sprintf("tcp(%s)/%s", db.Cfg.Addr, db.Name)
	t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck

	// Explicit 8 beside the default 64: refused, in whichever order the
	// sites are provisioned (Caddy's map order varies from load to load).
	for range 4 {
		err := caddy.Load(twoSites(t, db.DSN, map[string]any{"max_open_conns": 8}, nil), true)
		if err == nil {
			t.Fatal("two handlers with one DSN and different max_open_conns were loaded")
		}
		for _, want := range []string{"share the pool of " + name, "max_open_conns 8", "max_open_conns 64", "the rocketchat_voip handler of /api/v1/voip/room.close"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("the refusal %q does not say %q", err, want)
			}
		}
	}

	if err := caddy.Load(twoSites(t, db.DSN, map[string]any{"max_open_conns": 8}, map[string]any{"max_open_conns": 8}), true); err != nil {
		t.Fatal(err)
	}
	if got := poolMaxOpen(t, name); got != 8 {
		t.Fatalf("pool capped at %d connections, want 8", got)
	}
	// A reload that leaves the setting unset everywhere applies the default.
	if err := caddy.Load(twoSites(t, db.DSN, nil, nil), true); err != nil {
		t.Fatal(err)
	}
	if got := poolMaxOpen(t, name); got != 64 {
		t.Fatalf("after the reload, pool capped at %d connections, want 64", got)
	}
}
