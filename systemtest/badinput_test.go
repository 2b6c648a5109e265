package systemtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rawRequest sends bytes as they are and returns the status line and body.
func rawRequest(t *testing.T, addr, raw string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw[:min(len(raw), 80)], err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

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
		got := e.do(t, http.MethodPost, closePath, c.headers, c.body)
		if got.status != c.status || got.body != c.want {
			t.Errorf("%s: got %d %s, want %d %s", c.name, got.status, got.body, c.status, c.want)
		}
		if got.header.Get("X-Injected") != "" {
			t.Errorf("%s: a header was injected", c.name)
		}
	}

	// Malformed HTTP: Go's server refuses it before the module sees it.
	host := "Host: " + e.caddy.Addr + "\r\n"
	for _, c := range []struct{ name, raw string }{
		{"NUL in a header", "POST " + closePath + " HTTP/1.1\r\n" + host + "X-User-Id: a\x00b\r\nX-Auth-Token: " + e.agent.Token + "\r\nContent-Length: 2\r\n\r\n{}"},
		{"CR in a header", "POST " + closePath + " HTTP/1.1\r\n" + host + "X-User-Id: a\rX-Injected: 1\r\nContent-Length: 2\r\n\r\n{}"},
		{"huge headers", "POST " + closePath + " HTTP/1.1\r\n" + host + "X-Auth-Token: " + strings.Repeat("h", 2<<20) + "\r\nContent-Length: 2\r\n\r\n{}"},
		{"a space before the colon", "POST " + closePath + " HTTP/1.1\r\n" + host + "X-User-Id : " + e.agent.ID + "\r\nContent-Length: 2\r\n\r\n{}"},
	} {
		status, body := rawRequest(t, e.caddy.Addr, c.raw)
		if status < 400 || status > 499 || strings.Contains(body, e.agent.Token) {
			t.Errorf("%s: got %d %s, want a 4xx", c.name, status, body)
		}
	}
	// A bare LF ends a header line (RFC 9112 lets servers accept it): two
	// headers, parsed as such, and an ordinary answer.
	status, body := rawRequest(t, e.caddy.Addr, "POST "+closePath+" HTTP/1.1\r\n"+host+"X-User-Id: "+e.agent.ID+"\nX-Auth-Token: "+e.agent.Token+"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
	if status != 400 || body != invalid("must have required property 'rid'") {
		t.Errorf("bare LF: got %d %s", status, body)
	}
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
