package systemtest

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// TestHealthFollowsThePool: rocketchat_voip_health answers 503 while the
// database is away and 200 once the pool is in service, with no reload;
// other requests pass as ever.
func TestHealthFollowsThePool(t *testing.T) {
	e := seededEnv(t)
	addr, dsn := awayAddr(t, e.db)
	handlers := fmt.Sprintf("\trocketchat_voip_health /healthz {\n\t\tdsn %q\n\t}\n\trocketchat_voip {\n\t\tdsn %q\n\t\trate_limit off\n\t}\n\treverse_proxy %s", dsn, dsn, e.up.Addr)
	e.caddy = testcaddy.Start(t, "", handlers)

	health := func() response {
		got := e.do(t, http.MethodGet, "/healthz", nil, "")
		if got.header.Get("Cache-Control") != "no-store" || got.header.Get("Content-Type") != "application/json" {
			t.Fatalf("health headers %v", got.header)
		}
		return got
	}
	expect(t, health(), 503, `{"database":"down"}`)
	e.expectPassThrough(t)

	testdb.StartProxyOn(t, addr, e.db.Cfg.Addr)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := health()
		if got.status == 200 {
			expect(t, got, 200, `{"database":"up"}`)
			break
		}
		expect(t, got, 503, `{"database":"down"}`)
		if time.Now().After(deadline) {
			t.Fatal("health still 503 5 s after the database appeared")
		}
		time.Sleep(20 * time.Millisecond)
	}
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`)
	e.expectNothingUpstream(t)
}
