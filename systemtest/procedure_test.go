package systemtest

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// engine is what the test server is.
func (e *env) engine(t *testing.T) dbconnect.Engine {
	t.Helper()
	return engineOf(t, e.db)
}

// engineOf is the engine of the server that holds db.
func engineOf(t *testing.T, db *testdb.DB) dbconnect.Engine {
	t.Helper()
	engine, _, err := dbconnect.DetectEngine(context.Background(), db.DB)
	if err != nil {
		t.Fatal(err)
	}
	return engine
}

// procedurePath reports whether the gateway writes closes by the
// procedure on the test server (it does wherever the engine has
// procedures: the test databases are migrated fresh).
func (e *env) procedurePath(t *testing.T) bool {
	t.Helper()
	return e.engine(t).HasProcedures()
}

// testServerHasProcedures reports whether the test server's engine has
// the procedure path.
func testServerHasProcedures(t *testing.T, db *testdb.DB) bool {
	t.Helper()
	return engineOf(t, db).HasProcedures()
}

// TestExecutePrivilege: a gateway whose database user may not call the
// close's procedure fails its config load with a message that names the
// privilege and the GRANT, rather than answer 503 to every close; with the
// grant it closes rooms as that user.
func TestExecutePrivilege(t *testing.T) {
	db := testdb.New(t)
	if !testServerHasProcedures(t, db) {
		t.Skip("the test server has no procedure path")
	}
	_, dsn := db.NewUser(t, "SELECT, INSERT, UPDATE, DELETE")
	config := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\nhttp://127.0.0.1:%d {\n\trocketchat_voip {\n\t\tdsn %q\n\t}\n\trespond 404\n}\n",
		testcaddy.FreePort(t), dsn)
	err := testcaddy.Load(config)
	if err == nil {
		caddy.Stop() //nolint:errcheck
		t.Fatal("a gateway whose user lacks EXECUTE on the procedure started")
	}
	want := "lacks the EXECUTE privilege on the procedure " + store.CloseProcedure + ": GRANT EXECUTE ON PROCEDURE " + db.Name + "." + store.CloseProcedure
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("the load failed with %q, want it to say %q", err, want)
	}

	e, _ := startEnv(t, envOptions{dsn: func(d *testdb.DB) string {
		user, dsn := d.NewUser(t, "SELECT, INSERT, UPDATE, DELETE")
		d.Exec(t, "GRANT EXECUTE ON PROCEDURE "+d.Name+"."+store.CloseProcedure+" TO '"+user+"'@'%'")
		return dsn
	}})
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	if n := e.db.Count(t, "room_events"); n != 1 || e.room(t, e.roomID).open {
		t.Fatalf("%d outbox rows, open %v; want 1, closed", n, e.room(t, e.roomID).open)
	}
}
