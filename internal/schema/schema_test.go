package schema_test

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

func TestCheckAndMigrate(t *testing.T) {
	db := testdb.NewEmpty(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var outdated *schema.OutdatedError
	if err := schema.Check(ctx, db.DB); !errors.As(err, &outdated) || outdated.Have != 0 || outdated.Want != schema.Latest() {
		t.Fatalf("Check on an empty database: %v, want an OutdatedError from 0", err)
	}
	applied, err := schema.Migrate(ctx, db.DB)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != migrationCount(t) {
		t.Fatalf("applied %v, want every migration up to %d", applied, schema.Latest())
	}
	if err := schema.Check(ctx, db.DB); err != nil {
		t.Fatal(err)
	}
	if again, err := schema.Migrate(ctx, db.DB); err != nil || len(again) != 0 {
		t.Fatalf("second Migrate: applied %v, err %v; want nothing", again, err)
	}
}

// Every migration is safe to run twice: forget that they ran and run them
// again over the tables and rows they made.
func TestMigrationsRunTwice(t *testing.T) {
	db := testdb.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	perms := db.Count(t, "permission_roles")
	db.Exec(t, "DELETE FROM "+schema.VersionTable)
	applied, err := schema.Migrate(ctx, db.DB)
	if err != nil {
		t.Fatalf("running the migrations again: %v", err)
	}
	if len(applied) != migrationCount(t) {
		t.Fatalf("applied %v", applied)
	}
	if n := db.Count(t, "permission_roles"); n != perms {
		t.Fatalf("permission rows %d after a second run, want %d", n, perms)
	}
	if n := db.Count(t, schema.VersionTable); n != migrationCount(t) {
		t.Fatalf("%d version rows, want %d", n, migrationCount(t))
	}
}

// migrationCount is how many migrations there are (numbers are reserved
// ahead, so the latest version may be more).
func migrationCount(t *testing.T) int {
	t.Helper()
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	return len(ms)
}

// Many migrators at once on a fresh database (gateways and commands started
// together) all succeed and leave one schema; without the lock too, as on
// separate nodes of a Galera cluster, where GET_LOCK is per node.
func TestConcurrentMigrators(t *testing.T) {
	t.Run("with the lock", func(t *testing.T) { concurrentMigrators(t, schema.Migrate) })
	t.Run("without the lock", func(t *testing.T) { concurrentMigrators(t, schema.MigrateWithoutLock) })
}

func concurrentMigrators(t *testing.T, migrate func(context.Context, *sql.DB) ([]int, error)) {
	db := testdb.NewEmpty(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := migrate(ctx, db.DB)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if err := schema.Check(ctx, db.DB); err != nil {
		t.Fatal(err)
	}
	if n := db.Count(t, schema.VersionTable); n != migrationCount(t) {
		t.Fatalf("%d version rows, want %d", n, migrationCount(t))
	}
}

// A broken set of migrations is an error, never a schema version of 0 that
// every database would pass.
func TestLoadRefusesBrokenMigrations(t *testing.T) {
	ok := &fstest.MapFile{Data: []byte("CREATE TABLE t (id INT PRIMARY KEY);\n")}
	cases := []struct {
		name  string
		files fstest.MapFS
		want  string
	}{
		{"no migration", fstest.MapFS{"m/README": &fstest.MapFile{}}, "name must be NNNN_name.sql"},
		{"empty directory", fstest.MapFS{"m": &fstest.MapFile{Mode: fs.ModeDir}}, "no migration is embedded"},
		{"no version", fstest.MapFS{"m/initial.sql": ok}, "name must be NNNN_name.sql"},
		{"version zero", fstest.MapFS{"m/0000_x.sql": ok}, "positive number"},
		{"two files, one version", fstest.MapFS{"m/0001_a.sql": ok, "m/01_b.sql": ok}, "have the same version"},
		{"only comments", fstest.MapFS{"m/0001_a.sql": &fstest.MapFile{Data: []byte("-- nothing\n")}}, "has no statement"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := schema.Load(c.files, "m"); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	ms, err := schema.Load(fstest.MapFS{"m/0002_b.sql": ok, "m/0001_a.sql": ok}, "m")
	if err != nil || len(ms) != 2 || ms[0].Version != 1 || ms[1].Name != "0002_b" {
		t.Fatalf("a good set: %+v, %v", ms, err)
	}
	if _, err := schema.Migrations(); err != nil || schema.Latest() < 3 {
		t.Fatalf("the embedded set: latest %d, %v", schema.Latest(), err)
	}
}

// A user that may not create routines cannot migrate where the close's
// procedure is created, and the error says which privilege is missing.
func TestMigrateNeedsCreateRoutine(t *testing.T) {
	db := testdb.NewEmpty(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	engine, _, err := dbconnect.DetectEngine(ctx, db.DB)
	if err != nil {
		t.Fatal(err)
	}
	if !engine.HasProcedures() {
		t.Skipf("%s: migration 0005 creates nothing", engine)
	}
	user, dsn := db.NewUser(t, "CREATE, ALTER, INDEX, SELECT, INSERT, UPDATE, DELETE")
	limited, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { limited.Close() })
	_, err = schema.Migrate(ctx, limited)
	if err == nil || !strings.Contains(err.Error(), "CREATE ROUTINE") || !strings.Contains(err.Error(), "0005_close_procedure") {
		t.Fatalf("migrating without CREATE ROUTINE: %v, want an error naming the privilege", err)
	}
	db.Exec(t, "GRANT CREATE ROUTINE ON "+db.Name+".* TO '"+user+"'@'%'")
	limited.Close() // a connection sees database privileges as they were when it connected
	if limited, err = sql.Open("mysql", dsn); err != nil {
		t.Fatal(err)
	}
	if _, err := schema.Migrate(ctx, limited); err != nil {
		t.Fatalf("with CREATE ROUTINE: %v", err)
	}
}

// A migrator without CREATE is refused at the very first statement (the
// version table), and that refusal names what migrate needs, as later
// statements' refusals do.
func TestDeniedFirstStatementNamesThePrivileges(t *testing.T) {
	db := testdb.NewEmpty(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, dsn := db.NewUser(t, "SELECT, INSERT, UPDATE, DELETE")
	limited, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { limited.Close() })
	_, err = schema.Migrate(ctx, limited)
	if err == nil || !strings.Contains(err.Error(), "creating "+schema.VersionTable) ||
		!strings.Contains(err.Error(), "needs CREATE, ALTER, INDEX, SELECT and INSERT") {
		t.Fatalf("migrating without CREATE: %v, want the version table's refusal naming the privileges", err)
	}
}
