package store

import (
	"database/sql"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
)

// The procedure's three statements are the portable path's, each ? replaced
// by the parameter that Go passes there: the same text, and the same value
// in each place. (TestWritePathsWriteTheSameRows checks the rows.)
func TestProcedureRunsTheStoreStatements(t *testing.T) {
	body := procedureDefinition(t)
	params := regexp.MustCompile(`(?m)^\s*IN (p_\w+)`).FindAllStringSubmatch(body, -1)
	// Every value distinct, so that each argument names one parameter.
	w := closeWrite{
		rid: "rid", now: time.Unix(1, 0),
		closedByID:       sql.NullString{String: "visitor id", Valid: true},
		closedByUsername: sql.NullString{String: "visitor username", Valid: true},
		callDuration:     1, waiting: sql.NullInt64{Int64: 2, Valid: true}, hold: 3,
		messageID: "message id", tags: "tags", messageType: "message type", msg: "msg", agentID: "agent id",
		agentUsername: sql.NullString{String: "agent username", Valid: true},
		agentName:     sql.NullString{String: "agent name", Valid: true},
		payload:       []byte("payload"),
	}
	procArgs := w.procedureArgs() // and then the time left
	if len(params) != len(procArgs)+1 || params[len(procArgs)][1] != "p_time_left_us" || strings.Count(callCloseSQL, "?") != len(params) {
		t.Fatalf("the procedure has %d parameters, procedureArgs %d and the time left, the CALL %d placeholders",
			len(params), len(procArgs), strings.Count(callCloseSQL, "?"))
	}
	nameOf := func(v any) string {
		found := ""
		for i, a := range procArgs {
			if reflect.DeepEqual(a, v) {
				if found != "" {
					t.Fatalf("%v is two parameters' value", v)
				}
				found = params[i][1]
			}
		}
		if found == "" {
			t.Fatalf("%v is passed to a statement but not to the procedure", v)
		}
		return found
	}
	for _, st := range []struct {
		name string
		sql  string
		args []any
	}{
		{"closeRoomSQL", closeRoomSQL, w.closeRoomArgs()},
		{"insertMessageSQL", insertMessageSQL, w.insertMessageArgs()},
		{"insertEventSQL", insertEventSQL, w.insertEventArgs()},
	} {
		parts := strings.Split(st.sql, "?")
		if len(parts)-1 != len(st.args) {
			t.Fatalf("%s: %d placeholders, %d arguments", st.name, len(parts)-1, len(st.args))
		}
		var want strings.Builder
		for i, a := range st.args {
			want.WriteString(parts[i] + nameOf(a))
		}
		want.WriteString(parts[len(parts)-1])
		if !strings.Contains(oneSpaced(body), oneSpaced(want.String())+";") {
			t.Errorf("the procedure does not run %s as\n%s;", st.name, want.String())
		}
	}
}

// procedureDefinition is the newest migration's CREATE PROCEDURE of the
// close.
func procedureDefinition(t *testing.T) string {
	t.Helper()
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	def := ""
	for _, m := range ms {
		for _, st := range m.Statements {
			if strings.HasPrefix(st, "CREATE PROCEDURE "+CloseProcedure+"(") {
				def = st
			}
		}
	}
	if def == "" {
		t.Fatalf("no migration creates %s", CloseProcedure)
	}
	return def
}

func oneSpaced(s string) string { return strings.Join(strings.Fields(s), " ") }

// The fast close's procedure (migration 0006) writes with the portable
// path's three statements too, each ? replaced by what it writes there: a
// parameter where Go decides the value, the room's value the procedure
// read or derived (v_…) where the store derives it from the read.
// (TestFastCloseMatchesOrdinaryPath checks the rows.)
func TestFastProcedureRunsTheStoreStatements(t *testing.T) {
	body := ""
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		for _, st := range m.Statements {
			if strings.HasPrefix(st, "CREATE PROCEDURE "+FastCloseProcedure+"(") {
				body = st
			}
		}
	}
	if body == "" {
		t.Fatalf("no migration creates %s", FastCloseProcedure)
	}
	if n := len(regexp.MustCompile(`(?m)^\s*IN p_\w+`).FindAllString(body, -1)); n != strings.Count(callFastCloseSQL, "?") {
		t.Fatalf("the procedure has %d parameters, the CALL %d placeholders", n, strings.Count(callFastCloseSQL, "?"))
	}
	payload := `CONCAT(p_payload_head, v_visitor_id, IF(LENGTH(v_visitor_username) > 0, CONCAT('","username":"', v_visitor_username), ''), p_payload_middle, v_duration, p_payload_tail)`
	for _, st := range []struct {
		name  string
		sql   string
		names []string // in the order of closeRoomArgs, insertMessageArgs, insertEventArgs
	}{
		{"closeRoomSQL", closeRoomSQL, []string{"p_now", "v_visitor_id", "v_visitor_username", "v_duration", "v_waiting", "v_hold",
			"p_now", "p_now", "p_message_id", "p_tags", "p_rid"}},
		{"insertMessageSQL", insertMessageSQL, []string{"p_message_id", "p_rid", "p_message_type", "p_msg", "p_user_id",
			"NULLIF(p_agent_username, BINARY '')", "NULLIF(p_agent_name, BINARY '')", "p_now", "p_now"}},
		{"insertEventSQL", insertEventSQL, []string{"p_rid", payload, "p_now"}},
	} {
		parts := strings.Split(st.sql, "?")
		if len(parts)-1 != len(st.names) {
			t.Fatalf("%s: %d placeholders, %d names", st.name, len(parts)-1, len(st.names))
		}
		var want strings.Builder
		for i, n := range st.names {
			want.WriteString(parts[i] + n)
		}
		want.WriteString(parts[len(parts)-1])
		if !strings.Contains(oneSpaced(body), oneSpaced(want.String())+";") {
			t.Errorf("the fast procedure does not run %s as\n%s;", st.name, want.String())
		}
	}
}

// A write path is fixable (logged at warn) where the engine has procedures
// and one of the two is not used; never on TiDB, which has none.
func TestWritePathFixable(t *testing.T) {
	for _, c := range []struct {
		path WritePath
		want bool
	}{
		{WritePath{Engine: dbconnect.MariaDB, Procedure: true, FastClose: true}, false},
		{WritePath{Engine: dbconnect.MySQL, Procedure: true, FastClose: false}, true},
		{WritePath{Engine: dbconnect.MariaDB, Procedure: false}, true},
		{WritePath{Engine: dbconnect.TiDB}, false},
	} {
		if got := c.path.Fixable(); got != c.want {
			t.Errorf("%+v: Fixable %v, want %v", c.path, got, c.want)
		}
	}
}
