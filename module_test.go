package rocketchatvoip

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

func provision(t *testing.T, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	return h.Provision(ctx)
}

// One *sql.DB per DSN: configs that name the same DSN share it (a reload
// reuses connections), and it is closed when the last of them is cleaned up.
func TestPoolSharedPerDSNAndClosedByLastUser(t *testing.T) {
	db := testdb.New(t)
	a, b := &Handler{DSN: db.DSN}, &Handler{DSN: db.DSN}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	if err := provision(t, b); err != nil {
		t.Fatal(err)
	}
	if a.pool != b.pool {
		t.Fatal("two handlers with one DSN opened two pools")
	}
	other := &Handler{DSN: db.DSN + "&timeout=7s"}
	if err := provision(t, other); err != nil {
		t.Fatal(err)
	}
	if other.pool == a.pool {
		t.Fatal("a different DSN shares a pool")
	}
	other.Cleanup()
	a.Cleanup()
	if err := b.pool.DB().Ping(); err != nil {
		t.Fatalf("pool closed while a config still uses it: %v", err)
	}
	b.Cleanup()
	if err := b.pool.DB().Ping(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("pool still open after the last config went: %v", err)
	}
	if refs := b.pool.References(); refs != 0 {
		t.Fatalf("pool entry left behind: %d", refs)
	}
}

func TestProvisionErrors(t *testing.T) {
	db := testdb.New(t)
	db.Exec(t, "DELETE FROM rocketchat_voip_schema_migrations")
	cases := []struct {
		h    *Handler
		want string
	}{
		{&Handler{}, "dsn is required"},
		{&Handler{DSN: "not a dsn"}, "invalid dsn"},
		{&Handler{DSN: "root:sekret@tcp(127.0.0.1:1)/x"}, "cannot connect to MySQL at tcp(127.0.0.1:1)/x"},
		{&Handler{DSN: db.DSN, Compat: 5}, "compat: must be 6 or 7"},
	}
	for _, c := range cases {
		err := provision(t, c.h)
		c.h.Cleanup()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.h, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "sekret") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
	// An outdated schema without migrate is the schema gate's to refuse, once
	// the whole config is provisioned (systemtest/migrate_test.go).
	// With migrate, the same database is brought up to date.
	h := &Handler{DSN: db.DSN, Migrate: true}
	if err := provision(t, h); err != nil {
		t.Fatal(err)
	}
	h.Cleanup()
}
