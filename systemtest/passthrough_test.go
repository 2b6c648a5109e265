package systemtest

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestPassThrough(t *testing.T) {
	e := newEnv(t)
	cases := []struct{ method, uri, body string }{
		{http.MethodGet, "/api/v1/me?fields=%7B%22name%22%3A1%7D&x=1", ""},
		{http.MethodPost, "/api/v1/chat.postMessage", `{"rid":"GENERAL","msg":"hi"}`},
		{http.MethodGet, closePath, ""},
		{http.MethodPut, closePath, `{"rid":"ROOM1"}`},
		{http.MethodPost, closePath + "/", `{"rid":"ROOM1"}`},
		{http.MethodPost, "/API/v1/voip/room.close", `{"rid":"ROOM1"}`},
	}
	for _, c := range cases {
		got := e.do(t, c.method, c.uri, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token, "X-Custom": "kept", "Content-Type": "application/json"}, c.body)
		want := "upstream " + c.method + " " + c.uri + " body=" + c.body
		if got.status != 200 || got.body != want || got.header.Get("X-Upstream") != "yes" {
			t.Errorf("%s %s: got %d %q, want %q from the upstream", c.method, c.uri, got.status, got.body, want)
		}
	}
	reqs := e.up.Requests()
	if len(reqs) != len(cases) {
		t.Fatalf("upstream saw %d requests, want %d", len(reqs), len(cases))
	}
	for i, r := range reqs {
		if r.Method != cases[i].method || r.RequestURI != cases[i].uri || r.Body != cases[i].body ||
			r.Header.Get("X-Custom") != "kept" || r.Header.Get("X-Auth-Token") != e.agent.Token || r.Header.Get("X-User-Id") != e.agent.ID {
			t.Errorf("upstream request %d: %+v", i, r)
		}
	}
	if !e.room(t, e.roomID).open {
		t.Fatal("a forwarded request closed the room")
	}
	// A handled request next to them never reaches the upstream.
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	if n := len(e.up.Requests()); n != len(cases) {
		t.Fatalf("room.close reached the upstream (%d requests)", n)
	}
}

func TestPassThroughStreams(t *testing.T) {
	e := newEnv(t)
	resp, err := http.Get(e.caddy.BaseURL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	// The first chunk arrives while the upstream is still holding the second.
	first := make(chan string, 1)
	go func() { l, _ := br.ReadString('\n'); first <- l }()
	select {
	case l := <-first:
		if l != "chunk-1\n" {
			t.Fatalf("first chunk %q", l)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the first chunk was buffered, not streamed")
	}
	close(e.up.StreamRelease)
	rest, _ := io.ReadAll(br)
	if string(rest) != "chunk-2\n" {
		t.Fatalf("rest %q", rest)
	}
}

func TestPassThroughWebSocket(t *testing.T) {
	e := newEnv(t)
	conn, err := net.DialTimeout("tcp", e.caddy.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: "+e.caddy.Addr+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("upgrade answered %d %v", resp.StatusCode, resp.Header)
	}
	// A masked text frame "hello", echoed byte for byte by the upstream.
	frame := []byte{0x81, 0x85, 1, 2, 3, 4, 'h' ^ 1, 'e' ^ 2, 'l' ^ 3, 'l' ^ 4, 'o' ^ 1}
	for i := 0; i < 3; i++ {
		if _, err := conn.Write(frame); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(frame))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(frame) {
			t.Fatalf("echo %v, want %v", got, frame)
		}
	}
}

// TestPathVariants: a path is room.close only where Rocket.Chat's router
// would route it there. An encoded slash is not a separator to it, so
// voip%2Froom.close is another path and goes upstream; an encoded
// unreserved character decodes to the route in both.
func TestPathVariants(t *testing.T) {
	e := newEnv(t)
	const handled = `{"success":false,"error":"must have required property 'rid' [invalid-params]","errorType":"invalid-params"}`
	cases := []struct {
		name, uri string
		handled   bool
	}{
		{"exact", "/api/v1/voip/room.close", true},
		{"query string", "/api/v1/voip/room.close?x=1", true},
		{"encoded dot", "/api/v1/voip/room%2Eclose", true},
		{"encoded letter", "/api/v1/voip/r%6Fom.close", true},
		{"encoded slash", "/api/v1/voip%2Froom.close", false},
		{"encoded slash, lower case", "/api/v1/voip%2froom.close", false},
		{"trailing slash", "/api/v1/voip/room.close/", false},
		{"double slash", "/api/v1/voip//room.close", false},
		{"leading double slash", "//api/v1/voip/room.close", false},
		{"dot segment", "/api/v1/voip/./room.close", false},
		{"dot-dot segment", "/api/v1/x/../voip/room.close", false},
		{"other case", "/api/v1/voip/Room.Close", false},
		{"encoded dot-dot", "/api/v1/x/%2E%2E/voip/room.close", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := e.do(t, http.MethodPost, c.uri, map[string]string{
				"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token, "Content-Type": "application/json"}, `{}`)
			if c.handled {
				expect(t, got, 400, handled)
				return
			}
			want := "upstream POST " + c.uri + " body={}"
			if got.status != 200 || got.body != want || got.header.Get("X-Upstream") != "yes" {
				t.Fatalf("got %d %q, want %q from the upstream", got.status, got.body, want)
			}
		})
	}
}
