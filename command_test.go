package rocketchatvoip

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// run executes one subcommand as 'caddy rocketchat-voip <args>' would.
func run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "rocketchat-voip", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(migrateCommand(), checkCommand(), syncCommand(), hashTokenCommand(), versionCommand())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestCommandMigrateStatusCheck(t *testing.T) {
	t.Setenv(dsnEnv, "")
	cfg := testdb.ServerConfig(t)
	db := testdb.New(t) // migrated; make an empty one beside it
	empty := db.Name + "_empty"
	db.Exec(t, "CREATE DATABASE "+empty)
	t.Cleanup(func() { db.Exec(t, "DROP DATABASE "+empty) })
	cfg.DBName = empty
	dsn := cfg.FormatDSN()

	latest := schema.Latest()
	out, err := run(t, "", "migrate", "--status", "--dsn", dsn)
	if err == nil || !strings.Contains(out, fmt.Sprintf("schema version 0, this build needs %d", latest)) {
		t.Fatalf("status of an empty database: %v %q", err, out)
	}
	if out, err = run(t, "", "check", "--dsn", dsn); err == nil || !strings.Contains(out, "problem: database schema is at version 0") {
		t.Fatalf("check of an empty database: %v %q", err, out)
	}
	if out, err = run(t, "", "migrate", "--dsn", dsn); err != nil || !strings.Contains(out, "applied migrations [1 2 ") || !strings.Contains(out, fmt.Sprintf("schema at version %d", latest)) {
		t.Fatalf("migrate: %v %q", err, out)
	}
	t.Setenv(dsnEnv, dsn) // the environment stands in for --dsn
	if out, err = run(t, "", "migrate"); err != nil || !strings.Contains(out, fmt.Sprintf("schema already at version %d", latest)) {
		t.Fatalf("migrate again: %v %q", err, out)
	}
	if out, err = run(t, "", "migrate", "--status"); err != nil || !strings.Contains(out, fmt.Sprintf("schema version %d, this build needs %d", latest, latest)) {
		t.Fatalf("status: %v %q", err, out)
	}
	if out, err = run(t, "", "check"); err != nil || !strings.Contains(out, fmt.Sprintf("ok (schema version %d)", latest)) {
		t.Fatalf("check: %v %q", err, out)
	}
	if _, err := db.DB.Exec("DELETE FROM " + empty + ".permission_roles WHERE permission = 'inbound-voip-calls'"); err != nil {
		t.Fatal(err)
	}
	if out, err = run(t, "", "check"); err == nil || !strings.Contains(out, `no role grants "inbound-voip-calls"`) {
		t.Fatalf("check without permission rows: %v %q", err, out)
	}
}

// check says how closes would be written, and reports a user that may not
// call the close's procedure, naming the privilege; and a procedure gone
// missing (a restore without routines), which leaves the slower path.
func TestCommandCheckProcedure(t *testing.T) {
	t.Setenv(dsnEnv, "")
	db := testdb.New(t)
	engine, _, err := dbconnect.DetectEngine(context.Background(), db.DB)
	if err != nil {
		t.Fatal(err)
	}
	if !engine.HasProcedures() {
		out, err := run(t, "", "check", "--dsn", db.DSN)
		if err != nil || !strings.Contains(out, "closes are written by portable transaction") {
			t.Fatalf("check on %s: %v %q", engine, err, out)
		}
		return
	}
	out, err := run(t, "", "check", "--dsn", db.DSN)
	if err != nil || !strings.Contains(out, "closes are written by procedure "+store.CloseProcedure) {
		t.Fatalf("check: %v %q", err, out)
	}
	user, userDSN := db.NewUser(t, "SELECT, INSERT, UPDATE, DELETE")
	out, err = run(t, "", "check", "--dsn", userDSN)
	if err == nil || !strings.Contains(out, "problem: the gateway would not start: the database user lacks the EXECUTE privilege on the procedure "+store.CloseProcedure) {
		t.Fatalf("check without EXECUTE: %v %q", err, out)
	}
	db.Exec(t, "GRANT EXECUTE ON PROCEDURE "+db.Name+"."+store.CloseProcedure+" TO '"+user+"'@'%'")
	if out, err = run(t, "", "check", "--dsn", userDSN); err == nil ||
		!strings.Contains(out, "problem: a recent closer's close would take two round trips, not one: the database user lacks the EXECUTE privilege on the procedure "+store.FastCloseProcedure) {
		t.Fatalf("check with EXECUTE on %s alone: %v %q", store.CloseProcedure, err, out)
	}
	db.Exec(t, "GRANT EXECUTE ON PROCEDURE "+db.Name+"."+store.FastCloseProcedure+" TO '"+user+"'@'%'")
	if out, err = run(t, "", "check", "--dsn", userDSN); err != nil || !strings.Contains(out, "ok (schema version") ||
		!strings.Contains(out, "and by "+store.FastCloseProcedure) {
		t.Fatalf("check with EXECUTE: %v %q", err, out)
	}
	db.Exec(t, "DROP PROCEDURE "+store.CloseProcedure)
	if out, err = run(t, "", "check", "--dsn", db.DSN); err == nil || !strings.Contains(out, "problem: closes would take the slower portable path: the procedure "+store.CloseProcedure+" is missing") {
		t.Fatalf("check without the procedure: %v %q", err, out)
	}
}

func TestCommandErrors(t *testing.T) {
	t.Setenv(dsnEnv, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate"}, "no DSN: pass --dsn or set ROCKETCHAT_VOIP_DSN"},
		{[]string{"check", "--dsn", "root:hunter2@tcp(127.0.0.1:1)/x"}, "cannot connect to MySQL at tcp(127.0.0.1:1)/x"},
		{[]string{"migrate", "--dsn", "bad dsn"}, "invalid dsn"},
		{[]string{"migrate", "extra-arg"}, "unknown command"},
		{[]string{"hash-token"}, "no token on stdin"},
	} {
		out, err := run(t, "", c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v (%q), want an error containing %q", c.args, err, out, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%v: the error shows the password: %v", c.args, err)
		}
	}
}

func TestCommandHashTokenAndHelp(t *testing.T) {
	out, err := run(t, "secret\n", "hash-token")
	if err != nil || out != "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=\n" || strings.TrimSpace(out) != store.HashLoginToken("secret") {
		t.Fatalf("hash-token: %v %q", err, out)
	}
	for _, sub := range []string{"migrate", "check", "hash-token"} {
		out, err := run(t, "", sub, "--help")
		if err != nil || !strings.Contains(out, "Usage:") || (sub != "hash-token" && !strings.Contains(out, "--dsn")) {
			t.Errorf("%s --help: %v %q", sub, err, out)
		}
	}
}

// The version the module reports is a v0.x.y release that CHANGELOG.md
// records, printed beside the schema version this build migrates to.
func TestCommandVersion(t *testing.T) {
	out, err := run(t, "", "version")
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(out, "\n")
	if want := fmt.Sprintf("rocketchat_voip %s (schema version %d)", Version, schema.Latest()); first != want {
		t.Fatalf("version printed %q, want %q", first, want)
	}
	if !regexp.MustCompile(`^v0\.\d+\.\d+$`).MatchString(Version) {
		t.Errorf("Version %q is not a v0.x.y release", Version)
	}
	changelog, err := os.ReadFile("CHANGELOG.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(changelog), "\n## ["+Version+"] - ") {
		t.Errorf("CHANGELOG.md has no section for %s", Version)
	}
	if !strings.Contains(string(changelog), "\n## [Unreleased]\n") {
		t.Error("CHANGELOG.md has no Unreleased section")
	}
}

func TestCommandSyncStatusSnapshot(t *testing.T) {
	t.Setenv(dsnEnv, "")
	db := testdb.New(t)
	if out, err := run(t, "", "sync", "status", "--dsn", db.DSN); err == nil || !strings.Contains(out, "never ran") {
		t.Fatalf("status before the sync ran: %v %q", err, out)
	}
	db.Exec(t, `INSERT INTO sync_state (source, phase, cursors, caught_up_at, reconciled_at, last_error, updated_at)
		VALUES ('rocketchat', 'poll', '{}', NOW(3) - INTERVAL 2 SECOND, NOW(3) - INTERVAL 30 SECOND, 'mongodb: reading users: timeout', NOW(3))`)
	db.Exec(t, `INSERT INTO sync_lease (name, owner, lease_until) VALUES ('rocketchat', 'gw-a/1/ff', NOW(3) + INTERVAL 10 SECOND)`)
	db.Exec(t, `INSERT INTO rocketchat_writeback (event_id, rid, state, next_attempt_at, updated_at) VALUES
		(1, 'r1', 'done', NOW(3), NOW(3)), (2, 'r2', 'conflict', NOW(3), NOW(3)), (3, 'r3', 'pending', NOW(3), NOW(3))`)
	out, err := run(t, "", "sync", "status", "--dsn", db.DSN)
	for _, want := range []string{"phase poll, mode poll", "leader         gw-a/1/ff (lease ", "staleness      30.",
		"last error     mongodb: reading users: timeout", "write-back     pending 1, done 1, conflict 1, parked 0"} {
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("status: %v, no %q in\n%s", err, want, out)
		}
	}
	if out, err := run(t, "", "sync", "snapshot", "--dsn", db.DSN); err != nil || !strings.Contains(out, "a snapshot of \"rocketchat\" will start") {
		t.Fatalf("snapshot: %v %q", err, out)
	}
	if n := db.Count(t, "sync_state WHERE phase = 'snapshot' AND snapshot_coll IS NULL"); n != 1 {
		t.Fatal("snapshot did not mark the state")
	}
	if out, err := run(t, "", "sync", "status", "--dsn", db.DSN); err != nil || !strings.Contains(out, "staleness      unknown") {
		t.Fatalf("status during a snapshot: %v %q", err, out)
	}
}
