package systemtest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A user without the inbound-voip-calls permission (but authenticated, and
// exempt from the rate limit as bots are) opens many room.close
// connections that announce a body of max_body: half send nothing after
// their headers, half send 64 KiB of it and stop. The body budget is
// taken as bytes arrive, and one user never holds more than its share
// (half of body_budget while it is alone), so an agent closing rooms
// meanwhile has its bodies read at once: every close answers 200 with the
// exact body (a close that waited past db_timeout, for its body's budget
// or the database, would have answered 503). Each of the attacker's
// connections is answered too, none later than db_timeout after it stopped
// sending, and the budget is all given back.
func TestBodyBudgetIsNotHeldByOneUser(t *testing.T) {
	for _, n := range []int{64, 1000} {
		t.Run(fmt.Sprintf("%d connections", n), func(t *testing.T) {
			if n > 64 && testing.Short() {
				t.Skip("1,000 connections: not with -short")
			}
			bodyBudgetAttack(t, n)
		})
	}
}

func bodyBudgetAttack(t *testing.T, n int) {
	e, _ := startEnv(t, envOptions{extra: []string{"max_body 1MiB", "body_budget 2MiB", "db_timeout 2s"}, site: withMetricsRoute})
	bot := e.db.AddUser(t, "bot1", "user", "bot") // authenticated, api-bypass-rate-limit, no inbound-voip-calls
	const rooms = 5
	for i := 2; i <= rooms; i++ {
		e.db.AddRoom(t, fmt.Sprintf("ROOM%d", i), e.visitor, time.Now().UTC(), nil)
	}
	before := scrape(t, e)

	headers := map[string]string{"X-User-Id": bot.ID, "X-Auth-Token": bot.Token}
	attack := make([]*partialRequest, n)
	for i := range attack {
		part := ""
		if i%2 == 1 {
			part = strings.Repeat(" ", 64<<10) // white space: the start of a valid JSON body
		}
		attack[i] = startRaw(t, e, headers, 1<<20, part)
	}
	used := `caddy_rocketchat_voip_body_budget_used_bytes`
	waitFor(t, "the attack to hold most of its share of the budget", func() bool { return scrape(t, e)[used] >= 768<<10 })

	for i := 1; i <= rooms; i++ {
		rid := fmt.Sprintf("ROOM%d", i)
		expect(t, e.post(t, closeBody(rid, e.visitor.Token)), 200, fmt.Sprintf(`{"rid":"%s","success":true}`, rid))
		if !e.room(t, rid).closed() {
			t.Fatalf("%s is still open", rid)
		}
	}

	// Every attacker is answered: a body that stopped arriving gets 400
	// after db_timeout, one that could not have more of the budget in time
	// gets 503.
	answers := map[string]int{}
	for _, rr := range attack {
		got := rr.answer(t)
		answers[fmt.Sprintf("%d %s", got.status, got.body)]++
	}
	unreadable := `400 {"success":false,"error":"request body could not be read"}`
	shed := `503 ` + body503
	if len(answers) > 2 || answers[unreadable]+answers[shed] != n {
		t.Fatalf("the attacker's %d connections got %v", n, answers)
	}
	after := scrape(t, e)
	key := func(o string) string { return fmt.Sprintf(`caddy_rocketchat_voip_requests_total{outcome="%s"}`, o) }
	t.Logf("the attacker's %d connections: %v", n, answers)
	for outcome, want := range map[string]float64{"closed": rooms, "unavailable": 0, "overloaded": 0, "forbidden": 0} {
		if got := after[key(outcome)] - before[key(outcome)]; got != want {
			t.Errorf("%s grew by %v, want %v", outcome, got, want)
		}
	}
	waitFor(t, "the budget to be given back", func() bool { return scrape(t, e)[used] == 0 })
}
