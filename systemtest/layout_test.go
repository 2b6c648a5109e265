package systemtest

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestLayoutsNeverForwardRoomClose runs the Caddyfile layouts sites are
// commonly written in, each as an operator would write it (no 'order'
// line), against a real upstream that records what it receives: room.close
// is answered by the module in every one, other traffic reaches the
// upstream, and the upstream never sees room.close. The directive's place
// in Caddy's order (after forward_auth, before handle, handle_path and
// route) is what makes the handle, handle_path and route layouts pass; with
// the place it had before (just before reverse_proxy) they forward
// room.close.
func TestLayoutsNeverForwardRoomClose(t *testing.T) {
	auth := startAuthServer(t)
	layouts := []struct {
		name string
		// site builds the site body from the module's block and the
		// upstream's address.
		site func(voip, upstream string) string
		// other is a request that must reach the upstream, and what the
		// upstream must see of it.
		other, otherSeen string
		authSeesClose    bool
	}{
		{"plain", func(voip, up string) string {
			return voip + "\n\treverse_proxy " + up
		}, "/api/v1/me", "/api/v1/me", false},
		{"handle beside handle /admin/*", func(voip, up string) string {
			return voip + "\n\thandle /admin/* {\n\t\trespond \"admin\" 403\n\t}\n\thandle {\n\t\treverse_proxy " + up + "\n\t}"
		}, "/api/v1/me", "/api/v1/me", false},
		{"handle_path /api/*", func(voip, up string) string {
			return voip + "\n\thandle_path /api/* {\n\t\treverse_proxy " + up + "\n\t}\n\thandle {\n\t\trespond \"not here\" 404\n\t}"
		}, "/api/v1/me", "/v1/me", false},
		{"route", func(voip, up string) string {
			return voip + "\n\troute {\n\t\theader X-Route yes\n\t\treverse_proxy " + up + "\n\t}"
		}, "/api/v1/me", "/api/v1/me", false},
		{"forward_auth in front", func(voip, up string) string {
			return "\tforward_auth " + auth.addr + " {\n\t\turi /verify\n\t}\n" + voip + "\n\treverse_proxy " + up
		}, "/api/v1/me", "/api/v1/me", true},
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			auth.reset()
			e, _ := startEnv(t, envOptions{site: func(handlers string) string {
				voip, up, ok := strings.Cut(handlers, "\n\treverse_proxy ")
				if !ok {
					t.Fatalf("unexpected handlers %q", handlers)
				}
				return l.site(voip, up)
			}})

			expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
			expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 400, `{"success":false,"error":"room-closed"}`)
			if e.room(t, e.roomID).open {
				t.Fatal("the room is still open after a 200")
			}

			got := e.do(t, http.MethodGet, l.other, map[string]string{"X-User-Id": e.agent.ID, "X-Auth-Token": e.agent.Token}, "")
			want := "upstream GET " + l.otherSeen + " body="
			if got.status != 200 || got.body != want {
				t.Errorf("other traffic: got %d %q, want 200 %q from the upstream", got.status, got.body, want)
			}
			reqs := e.up.Requests()
			for _, r := range reqs {
				if strings.Contains(r.RequestURI, "room.close") {
					t.Errorf("the upstream saw room.close: %s %s body=%s", r.Method, r.RequestURI, r.Body)
				}
			}
			if len(reqs) != 1 || reqs[0].RequestURI != l.otherSeen {
				t.Errorf("the upstream saw %d requests (%+v), want only GET %s", len(reqs), reqs, l.otherSeen)
			}
			if seen := auth.sawURI(closePath); seen != l.authSeesClose {
				t.Errorf("forward_auth consulted for room.close: %v, want %v", seen, l.authSeesClose)
			}
		})
	}
}

// authServer is a forward_auth endpoint that lets every request through and
// records the original URIs it was asked about.
type authServer struct {
	addr string
	mu   sync.Mutex
	uris []string
}

func startAuthServer(t *testing.T) *authServer {
	a := &authServer{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.uris = append(a.uris, r.Header.Get("X-Forwarded-Uri"))
		a.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	a.addr = srv.Listener.Addr().String()
	return a
}

func (a *authServer) reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.uris = nil
}

func (a *authServer) sawURI(uri string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, u := range a.uris {
		if u == uri {
			return true
		}
	}
	return false
}
