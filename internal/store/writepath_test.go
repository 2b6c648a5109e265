package store

import (
	"database/sql"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

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
