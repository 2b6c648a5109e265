// Package schema holds the gateway's MySQL schema as embedded, versioned
// migrations (docs/contract.md, "The MySQL schema", is the contract they implement).
//
// The SQL is plain DDL and INSERT IGNORE that runs unchanged on MariaDB 10.11+,
// MySQL 8.0+ and TiDB. MySQL commits DDL implicitly, so a migration is not one
// transaction; instead every statement is idempotent and a migration is
// recorded only after all of its statements ran, so running again after an
// interruption finishes the job.
//
// A migration file is read as the mysql client reads it, so an operator can
// also apply one with `mysql < file`: statements end at a semicolon that
// ends a line, and a `DELIMITER $$` line changes that terminator until the
// next DELIMITER line, which is how a stored procedure's body (semicolons
// and all) becomes one statement. Comment lines are dropped, except a
// directive at the top of a file:
//
//	-- engines: MariaDB MySQL
//
// runs the file's statements only on those engines (dbconnect.EngineOf
// names them). On the others the migration is recorded as applied without
// running anything, so a version number means the same on every engine;
// what the gateway does there is up to the code that would use the
// migration's objects (internal/store chooses its close path by engine).
package schema

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// VersionTable records the migrations applied to a database.
const VersionTable = "rocketchat_voip_schema_migrations"

// lockName serialises migrations of gateways that start at the same time on
// one server. It is only an economy: GET_LOCK is local to one node of a
// Galera cluster or a Group Replication group, so correctness rests on every
// statement being idempotent, not on the lock.
const lockName = "rocketchat_voip_migrate"

// OutdatedError is Check's error for a database whose schema is older than
// this build needs; its message says what to do.
type OutdatedError struct{ Have, Want int }

func (e *OutdatedError) Error() string {
	return fmt.Sprintf("database schema is at version %d, this gateway needs %d: "+
		"run 'caddy rocketchat-voip migrate --dsn ...' or add 'migrate' to the rocketchat_voip block", e.Have, e.Want)
}

// Migration is one embedded migration file.
type Migration struct {
	Version    int
	Name       string
	Statements []string
	// Engines, when not empty, are the only engines the statements run on.
	Engines []dbconnect.Engine
}

// runsOn reports whether m's statements run on engine e.
func (m Migration) runsOn(e dbconnect.Engine) bool {
	return len(m.Engines) == 0 || slices.Contains(m.Engines, e)
}

// embedded are the migrations built in, read and checked once at start: a
// broken set is an error of every call that needs it, never a version 0.
var embedded, embeddedErr = load(migrationFiles, "migrations")

// Migrations returns the embedded migrations in version order.
func Migrations() ([]Migration, error) { return embedded, embeddedErr }

// load reads the migrations in dir of fsys: files named NNNN_name.sql, each
// version once, each with at least one statement.
func load(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("reading the embedded migrations: %w", err)
	}
	var out []Migration
	seen := map[int]string{}
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		if !ok || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.sql", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("migration %s: the version must be a positive number", name)
		}
		if other, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s have the same version", other, name)
		}
		seen[v] = name
		body, err := fs.ReadFile(fsys, dir+"/"+name)
		if err != nil {
			return nil, err
		}
		stmts := splitStatements(string(body))
		if len(stmts) == 0 {
			return nil, fmt.Errorf("migration %s has no statement", name)
		}
		m := Migration{Version: v, Name: strings.TrimSuffix(name, ".sql"), Statements: stmts}
		if m.Engines, err = enginesDirective(string(body)); err != nil {
			return nil, fmt.Errorf("migration %s: %w", name, err)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("no migration is embedded")
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Latest is the schema version this build of the gateway needs (0 only
// when the embedded migrations are broken, which Check and Migrate report).
func Latest() int {
	if embeddedErr != nil {
		return 0
	}
	return embedded[len(embedded)-1].Version
}

// splitStatements cuts a migration file into statements at the delimiter
// (";" until a DELIMITER line changes it) where it ends a line. Comment
// lines are dropped. The files are ours, so this simple rule is enough and
// avoids the driver's multiStatements mode.
func splitStatements(src string) []string {
	var stmts []string
	var cur strings.Builder
	delimiter := ";"
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		if d, ok := strings.CutPrefix(trimmed, "DELIMITER "); ok {
			delimiter = strings.TrimSpace(d)
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, delimiter) {
			stmts = append(stmts, strings.TrimSuffix(strings.TrimSpace(cur.String()), delimiter))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		stmts = append(stmts, s)
	}
	return stmts
}

// enginesDirective reads the "-- engines:" line among a file's leading
// comments.
func enginesDirective(src string) ([]dbconnect.Engine, error) {
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" {
			continue
		}
		comment, ok := strings.CutPrefix(trimmed, "--")
		if !ok {
			return nil, nil // past the leading comments
		}
		list, ok := strings.CutPrefix(strings.TrimSpace(comment), "engines:")
		if !ok {
			continue
		}
		var engines []dbconnect.Engine
		for _, name := range strings.Fields(list) {
			e := dbconnect.Engine(name)
			if dbconnect.EngineOf(name) != e { // a name EngineOf would not give
				return nil, fmt.Errorf("engines: unknown engine %q", name)
			}
			engines = append(engines, e)
		}
		return engines, nil
	}
	return nil, nil
}

// Version returns the highest migration version applied to db, or 0 when
// the database has never been migrated.
func Version(ctx context.Context, db *sql.DB) (int, error) {
	var v sql.NullInt64
	err := db.QueryRowContext(ctx, "SELECT MAX(version) FROM "+VersionTable).Scan(&v)
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1146 { // ER_NO_SUCH_TABLE
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return int(v.Int64), nil
}

// Check returns an error that tells the operator what to do when db's schema
// is older than this build needs.
func Check(ctx context.Context, db *sql.DB) error {
	if embeddedErr != nil {
		return embeddedErr
	}
	have, err := Version(ctx, db)
	if err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if want := Latest(); have < want {
		return &OutdatedError{Have: have, Want: want}
	}
	return nil
}

// Migrate applies every embedded migration newer than the database's version
// and returns the versions it applied. Any number of callers may run it at
// once, against one server or any nodes of a cluster: every statement is
// idempotent (CREATE … IF NOT EXISTS, INSERT IGNORE), a statement that loses
// a deadlock or a cluster certification conflict is run again, and a
// version recorded by another caller is not an error. Callers on one server
// also wait for each other through a named lock, so only one does the work.
func Migrate(ctx context.Context, db *sql.DB) ([]int, error) {
	return migrate(ctx, db, true)
}

// migrate is Migrate; without lock, as on one node of a cluster whose other
// nodes' locks it cannot see.
func migrate(ctx context.Context, db *sql.DB, lock bool) ([]int, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	// GET_LOCK is per connection, so pin one.
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if lock {
		var got sql.NullInt64
		if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 60)", lockName).Scan(&got); err != nil {
			return nil, fmt.Errorf("taking the migration lock: %w", err)
		}
		if got.Int64 != 1 {
			return nil, errors.New("another process held the migration lock for 60s")
		}
		defer conn.ExecContext(context.Background(), "SELECT RELEASE_LOCK(?)", lockName) //nolint:errcheck
	}

	if err := execIdempotent(ctx, conn, "CREATE TABLE IF NOT EXISTS "+VersionTable+` (
  version    INT          NOT NULL,
  name       VARCHAR(255) NOT NULL,
  applied_at DATETIME(3)  NOT NULL,
  PRIMARY KEY (version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`); err != nil {
		return nil, fmt.Errorf("creating %s: %w%s", VersionTable, err, privilegeHint(err))
	}
	var have sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT MAX(version) FROM "+VersionTable).Scan(&have); err != nil {
		return nil, fmt.Errorf("reading %s: %w%s", VersionTable, err, privilegeHint(err))
	}
	var applied []int
	var engine dbconnect.Engine // asked for when a migration needs it
	for _, m := range ms {
		if m.Version <= int(have.Int64) {
			continue
		}
		if len(m.Engines) > 0 && engine == "" {
			if engine, _, err = dbconnect.DetectEngine(ctx, conn); err != nil {
				return applied, err
			}
		}
		if !m.runsOn(engine) {
			m.Statements = nil // recorded, not run: see the package comment
		}
		for i, stmt := range m.Statements {
			if err := execIdempotent(ctx, conn, stmt); err != nil {
				return applied, fmt.Errorf("migration %s, statement %d: %w%s", m.Name, i+1, err, privilegeHint(err))
			}
		}
		// Another node may have recorded it first; that is the same outcome.
		if err := execIdempotent(ctx, conn, "INSERT IGNORE INTO "+VersionTable+" (version, name, applied_at) VALUES (?, ?, ?)",
			m.Version, m.Name, time.Now().UTC()); err != nil {
			return applied, fmt.Errorf("recording migration %s: %w%s", m.Name, err, privilegeHint(err))
		}
		applied = append(applied, m.Version)
	}
	return applied, nil
}

// privilegeHint names what the migrating user lacks when the server denied
// a statement.
func privilegeHint(err error) string {
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1044 || me.Number == 1142 || me.Number == 1227) { // ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR
		return " (the user that migrates needs CREATE, ALTER, INDEX, SELECT and INSERT on the database and, on MariaDB and MySQL, CREATE ROUTINE: see docs/grants-migrator.sql and docs/operating.md, Database users)"
	}
	return ""
}

// execIdempotent runs an idempotent statement, again when it loses a
// deadlock, a lock wait, or (on Galera) a certification conflict with the
// same statement run on another node, all of which roll it back whole. A
// column, index or procedure that exists already (ADD COLUMN, CREATE INDEX
// and CREATE PROCEDURE have no IF NOT EXISTS that MySQL 8.0 accepts) counts
// as done.
func execIdempotent(ctx context.Context, conn *sql.Conn, stmt string, args ...any) error {
	for attempt := 1; ; attempt++ {
		_, err := conn.ExecContext(ctx, stmt, args...)
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 1060 || me.Number == 1061 || me.Number == 1304) { // ER_DUP_FIELDNAME, ER_DUP_KEYNAME, ER_SP_ALREADY_EXISTS
			return nil
		}
		if err == nil || attempt == 10 || !errors.As(err, &me) || (me.Number != 1213 && me.Number != 1205) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt*20) * time.Millisecond):
		}
	}
}
