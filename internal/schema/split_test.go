package schema

import (
	"slices"
	"strings"
	"testing"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
)

// Statements end where the mysql client would end them: at ";" ending a
// line, or at the delimiter a DELIMITER line sets, so that a procedure's
// body is one statement.
func TestSplitStatements(t *testing.T) {
	src := `-- a comment
CREATE TABLE a (x INT);
INSERT INTO a VALUES (1),
  (2);

DELIMITER $$
CREATE PROCEDURE p()
BEGIN
  -- inside
  UPDATE a SET x = 3;
  SELECT 1;
END$$
DELIMITER ;
DROP TABLE b;
`
	got := splitStatements(src)
	want := []string{
		"CREATE TABLE a (x INT)",
		"INSERT INTO a VALUES (1),\n  (2)",
		"CREATE PROCEDURE p()\nBEGIN\n  UPDATE a SET x = 3;\n  SELECT 1;\nEND",
		"DROP TABLE b",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestEnginesDirective(t *testing.T) {
	cases := []struct {
		src  string
		want []dbconnect.Engine
		err  string
	}{
		{"-- 0009: something\n-- engines: MariaDB MySQL\nCREATE TABLE a (x INT);", []dbconnect.Engine{dbconnect.MariaDB, dbconnect.MySQL}, ""},
		{"-- no directive\nCREATE TABLE a (x INT);\n-- engines: TiDB\n", nil, ""}, // only among the leading comments
		{"-- engines: MariaDB Oracle\n", nil, `unknown engine "Oracle"`},
	}
	for _, c := range cases {
		got, err := enginesDirective(c.src)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want %q", c.src, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%q: %v, %v; want %v", c.src, got, err, c.want)
		}
	}
	m := Migration{Engines: []dbconnect.Engine{dbconnect.MariaDB, dbconnect.MySQL}}
	if !m.runsOn(dbconnect.MySQL) || m.runsOn(dbconnect.TiDB) || m.runsOn(dbconnect.Vitess) || !(Migration{}).runsOn(dbconnect.TiDB) {
		t.Fatal("runsOn: a migration with engines runs only on them; one without, everywhere")
	}
}

// The close's procedures (0005's, and 0006's fast close) are created only
// where the gateway can call them, under the module's sql_mode.
func TestCloseProcedureMigrationEngines(t *testing.T) {
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, m := range ms {
		if m.Version != 5 && m.Version != 6 {
			continue
		}
		seen++
		for _, e := range []dbconnect.Engine{dbconnect.MariaDB, dbconnect.MySQL, dbconnect.TiDB, dbconnect.Vitess} {
			if m.runsOn(e) != e.HasProcedures() {
				t.Errorf("%04d runs on %s: %v, but HasProcedures says %v", m.Version, e, m.runsOn(e), e.HasProcedures())
			}
		}
		if len(m.Statements) != 2 || m.Statements[0] != "SET SESSION sql_mode = '"+dbconnect.SessionSQLMode+"'" ||
			!strings.HasPrefix(m.Statements[1], "CREATE PROCEDURE ") {
			t.Fatalf("%04d is %q, want the module's sql_mode set and one CREATE PROCEDURE", m.Version, m.Statements)
		}
	}
	if seen != 2 {
		t.Fatal("no migration 0005 or 0006")
	}
}
