package systemtest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Hostile input beyond the validator: a clear 4xx, nothing written, no
// token in any log line.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(dir, "caddy.log")
	globals := fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n", logFile)
	e, _ := startEnv(t, envOptions{globals: globals, extra: []string{"rate_limit off"}})
	before := e.snapshot(t)
	auth := map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token, "Content-Type": "application/json"}
	sqlish := `x' OR '1'='1' -- ;DROP TABLE rooms;`

	for _, c := range []struct {
		name    string
		headers map[string]string
		body    string
		status  int
		want    string
	}{
		{"SQL in the user id", map[string]string{"X-User-Id": sqlish, "X-Auth-Token": e.agent.Token}, "{}", 401, body401},
		{"SQL in the token", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": sqlish}, "{}", 401, body401},
		{"SQL in the user id with the right token", map[string]string{"X-User-Id": e.agent.ID + "' OR 1=1 -- ", "X-Auth-Token": e.agent.Token}, "{}", 401, body401},
		{"a 10,000-character user id", map[string]string{"X-User-Id": strings.Repeat("u", 10000), "X-Auth-Token": e.agent.Token}, "{}", 401, body401},
		{"a 20,000-character token", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": strings.Repeat("t", 20000)}, "{}", 401, body401},
		{"invalid UTF-8 in the user id", map[string]string{"X-User-Id": "agent\xff\xfe1", "X-Auth-Token": e.agent.Token}, "{}", 401, body401},
		{"invalid UTF-8 in the token", map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token + "\xff"}, "{}", 401, body401},
		{"SQL in rid", auth, closeBody(sqlish, e.visitor.Token), 400, `{"success":false,"error":"invalid-room"}`},
		{"SQL in the visitor token", auth, closeBody(e.roomID, sqlish), 400, `{"success":false,"error":"invalid-token"}`},
		{"wildcards in the visitor token", auth, closeBody(e.roomID, "%"), 400, `{"success":false,"error":"invalid-token"}`},
		{"a 500,000-character rid", auth, closeBody(strings.Repeat("r", 500000), e.visitor.Token), 400, `{"success":false,"error":"invalid-room"}`},
		{"a 500,000-character visitor token", auth, closeBody(e.roomID, strings.Repeat("v", 500000)), 400, `{"success":false,"error":"invalid-token"}`},
		{"NUL in rid", auth, `{"rid":"ROOM1\u0000","token":"` + e.visitor.Token + `"}`, 400, `{"success":false,"error":"invalid-room"}`},
		{"NUL in the visitor token", auth, `{"rid":"ROOM1","token":"` + e.visitor.Token + `\u0000"}`, 400, `{"success":false,"error":"invalid-token"}`},
		{"invalid UTF-8 in rid", auth, "{\"rid\":\"ROOM1\xff\",\"token\":\"" + e.visitor.Token + "\"}", 400, `{"success":false,"error":"invalid-room"}`},
		{"invalid UTF-8 in the visitor token", auth, "{\"rid\":\"ROOM1\",\"token\":\"" + e.visitor.Token + "\xc3\"}", 400, `{"success":false,"error":"invalid-token"}`},
		{"CRLF in rid", auth, closeBody("ROOM1\r\nX-Injected: yes", e.visitor.Token), 400, `{"success":false,"error":"invalid-room"}`},
		{"deeply nested options", auth, `{"rid":"ROOM1","token":"t","options":{"comment":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}}`, 400, invalid("must be string")},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := e.do(t, http.MethodPost, closePath, c.headers, c.body)
			if got.status != c.status || got.body != c.want {
				t.Errorf("got %d %s, want %d %s", got.status, got.body, c.status, c.want)
			}
			if got.header.Get("X-Injected") != "" {
				t.Error("a header was injected")
			}
		})
	}

	// Malformed HTTP (NUL or CR in a header, huge headers) is not here: Go's
	// server refuses it before any handler runs, and nothing in this module
	// could change that.
	e.expectUnchanged(t, before)
	e.expectNothingUpstream(t)

	stopCaddy(t)
	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{e.agent.Token, e.visitor.Token, strings.Repeat("t", 64), strings.Repeat("v", 64)} {
		if strings.Contains(string(logs), secret) {
			t.Errorf("the log shows a token (%.20s…)", secret)
		}
	}
}
