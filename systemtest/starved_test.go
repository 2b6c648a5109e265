package systemtest

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// An agent's first close on this gateway reads its credentials with one
// database slot and its room with a second, after its body. When that
// second slot comes only after most of db_timeout has gone to the queue
// (a known closer's close held it), and the room's read then runs into the
// deadline, the request is shed: 503 with Rocket.Chat's body, counted
// overloaded, not a database failure (which would page about a healthy
// database and halve db_concurrency). Nothing is written, and the agent's
// next try closes the room.
func TestStarvedFirstCloseIsOverloadedNotUnavailable(t *testing.T) {
	// Every command the gateway sends reaches the database 800 ms later. A
	// known closer's close is one command (the fast close), and the
	// newcomer waits that long for its second slot after its credentials
	// read: what is left of its 2.1 s, about 500 ms, is less than it waited
	// and less than one command's time, so its room read meets the
	// deadline. The known closer's own close ends 500 ms before its deadline.
	const delay = 800 * time.Millisecond
	e, proxy := startEnv(t, envOptions{
		extra:   []string{"db_timeout 2100ms", "db_concurrency 1", "max_open_conns 1", "rate_limit off"},
		proxied: true, site: withMetricsRoute,
	})
	if engine := engineOf(t, e.db); !engine.HasProcedures() {
		// The rule under test is the engine's no more than the limiter's;
		// the timing is the one-CALL close's.
		t.Skipf("%s has no stored procedures: a known closer's close is its read and the portable transaction there, not the one CALL this timing assumes", engine)
	}
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 200, `{"rid":"ROOM1","success":true}`) // agent1 is a known closer now
	e.db.AddRoom(t, "ROOM2", e.visitor, time.Now().UTC(), nil)
	newcomer := e.db.AddUser(t, "agent2first", "livechat-agent")
	visitor2 := e.db.AddVisitor(t, "visitor2")
	e.db.AddRoom(t, "ROOM3", visitor2, time.Now().UTC(), nil)
	before := scrape(t, e)
	waiting := fmt.Sprintf(`caddy_rocketchat_voip_db_waiting{database="tcp(%s)/%s"}`, proxy.Addr, e.db.Name)

	proxy.SetDelay(delay)
	defer proxy.SetDelay(0)
	// The newcomer's credentials read is held at the proxy while it holds
	// the only slot, until the known closer waits for that slot.
	commands := proxy.Commands()
	proxy.FreezeWhenSent([]byte(newcomer.ID), false)
	first := make(chan response, 1)
	go func() {
		r, err := e.try(http.MethodPost, closePath, map[string]string{"X-User-Id": newcomer.ID, "X-Auth-Token": newcomer.Token, "Content-Type": "application/json"}, closeBody("ROOM3", visitor2.Token))
		if err != nil {
			t.Error(err)
		}
		first <- r
	}()
	waitFor(t, "the newcomer's credentials read", func() bool { return proxy.Commands() > commands })
	known := make(chan response, 1)
	go func() {
		r, err := e.tryPost(closeBody("ROOM2", e.visitor.Token))
		if err != nil {
			t.Error(err)
		}
		known <- r
	}()
	waitFor(t, "the known closer waiting for the slot", func() bool { return scrape(t, e)[waiting] == 1 })
	proxy.Up()

	expect(t, <-known, 200, `{"rid":"ROOM2","success":true}`)
	expect(t, <-first, 503, body503)
	after := scrape(t, e)
	key := func(o string) string { return fmt.Sprintf(`caddy_rocketchat_voip_requests_total{outcome="%s"}`, o) }
	for outcome, n := range map[string]float64{"overloaded": 1, "unavailable": 0, "closed": 1} {
		if got := after[key(outcome)] - before[key(outcome)]; got != n {
			t.Errorf("%s grew by %v, want %v", outcome, got, n)
		}
	}
	if !e.room(t, "ROOM3").open {
		t.Fatal("a shed request closed ROOM3")
	}
	proxy.SetDelay(0)
	expect(t, e.postAs(t, newcomer, closeBody("ROOM3", visitor2.Token)), 200, `{"rid":"ROOM3","success":true}`)
}
