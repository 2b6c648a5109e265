package rocketchatvoip

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// newLoad is the context of a config load of its own, cancelled (its
// modules cleaned up) when the test ends.
func newLoad(t *testing.T) caddy.Context {
	t.Helper()
	base, err := caddy.ProvisionContext(&caddy.Config{Admin: &caddy.AdminConfig{Disabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(base)
	t.Cleanup(cancel)
	return ctx
}

// provision provisions h as the only module of a load, and starts the
// load's gate as Caddy would once every module is provisioned.
func provision(t *testing.T, h *Handler) error {
	t.Helper()
	ctx := newLoad(t)
	if err := h.Provision(ctx); err != nil {
		return err
	}
	gate, err := gateOf(ctx)
	if err != nil {
		return err
	}
	if err := gate.Start(); err != nil {
		return err
	}
	t.Cleanup(func() { gate.Stop() }) //nolint:errcheck
	return nil
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
	n := 0
	dbpool.Each(func(p *dbpool.Pool) {
		if p == b.pool {
			n++
		}
	})
	if n != 0 {
		t.Fatal("pool entry left behind")
	}
}

func TestProvisionErrors(t *testing.T) {
	db := testdb.New(t)
	db.Exec(t, "DELETE FROM rocketchat_voip_schema_migrations")
	// What a server answers is final: a wrong password, an unknown database.
	wrongPassword := db.Cfg.Clone()
	wrongPassword.Passwd = "sekret-not-the-password"
	unknownDB := db.Cfg.Clone()
	unknownDB.DBName = db.Name + "_nope"
	cases := []struct {
		h    *Handler
		want string
	}{
		{&Handler{}, "dsn is required"},
		{&Handler{DSN: "not a dsn"}, "invalid dsn"},
		{&Handler{DSN: "root:sekret@tcp(127.0.0.1:1)/x", RequireDatabase: true}, "cannot connect to MySQL at tcp(127.0.0.1:1)/x"},
		{&Handler{DSN: wrongPassword.FormatDSN()}, "cannot connect to MySQL at tcp(" + db.Cfg.Addr + ")/" + db.Name + ": Error 1045"},
		{&Handler{DSN: unknownDB.FormatDSN()}, "cannot connect to MySQL at tcp(" + db.Cfg.Addr + ")/" + unknownDB.DBName + ": Error 1049"},
		{&Handler{DSN: db.DSN, Compat: 5}, "compat: must be 6 or 7"},
	}
	for _, c := range cases {
		err := provision(t, c.h)
		c.h.Cleanup()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.h, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), "sekret") || strings.Contains(err.Error(), wrongPassword.Passwd)) {
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

// A database that does not answer does not stop the handler: it starts
// without it (room.close answers 503, see systemtest/latedb_test.go) and
// its pool keeps trying in the background.
func TestProvisionWithoutTheDatabase(t *testing.T) {
	h := &Handler{DSN: "root:sekret@tcp(127.0.0.1:1)/x"}
	if err := provision(t, h); err != nil {
		t.Fatalf("provision failed without the database: %v", err)
	}
	defer h.Cleanup()
	if h.db.Store() != nil || h.pool.Up() {
		t.Fatal("a pool without its database is in service")
	}
	// A second holder of the same pool (a reload) starts as fast: the
	// background loop owns the pool now.
	again := &Handler{DSN: h.DSN}
	if err := provision(t, again); err != nil {
		t.Fatal(err)
	}
	defer again.Cleanup()
	// With require_database the same reload fails, naming the server only.
	strict := &Handler{DSN: h.DSN, RequireDatabase: true}
	err := provision(t, strict)
	strict.Cleanup()
	if err == nil || !strings.Contains(err.Error(), "cannot connect to MySQL at tcp(127.0.0.1:1)/x") || strings.Contains(err.Error(), "sekret") {
		t.Fatalf("require_database: %v", err)
	}
}
