package systemtest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// fastStep is one request of TestRevocationsBetweenCloses, after the
// statements that change what the request finds.
type fastStep struct {
	name   string
	before []string // statements on the test's database; {agent} is the agent's id
	rid    string
	status int
	fast   bool // through the fast close: one round trip
}

// answer is what a client sees of one response: status, body and the rate
// limit's headers (the window's end is a time, so only whether it is set).
type answer struct {
	status           int
	body             string
	limit, remaining string
	reset            bool
}

// TestRevocationsBetweenCloses: a role, a permission, a token revoked, a
// token expiring, the rate-limit bypass granted and removed, the user
// renamed, between two closes of one agent. The same requests through a
// gateway with the fast close and through one without it (its procedure
// dropped) get the same answers, byte for byte with the rate limit's
// headers and counts, and leave the same rooms and messages; the fast
// gateway closes in one round trip exactly where nothing changed since the
// agent's last close.
func TestRevocationsBetweenCloses(t *testing.T) {
	if !testServerHasProcedures(t, seededEnv(t).db) {
		t.Skip("the test server has no stored procedures: there is no fast close")
	}
	steps := []fastStep{
		{name: "first close of the token", rid: "R00", status: 200},
		{name: "a recent closer's close", rid: "R01", status: 200, fast: true},
		{name: "room-closed", rid: "R01", status: 400},
		{name: "bypass role granted", before: []string{"INSERT INTO user_roles (user_id, role) VALUES ({agent}, 'admin')"}, rid: "R02", status: 200},
		{name: "bypassing, as last time", rid: "R03", status: 200, fast: true},
		{name: "bypass role removed", before: []string{"DELETE FROM user_roles WHERE user_id = {agent} AND role = 'admin'"}, rid: "R04", status: 200},
		{name: "limited, as last time", rid: "R05", status: 200, fast: true},
		{name: "role revoked", before: []string{"DELETE FROM user_roles WHERE user_id = {agent} AND role = 'livechat-agent'"}, rid: "R06", status: 403},
		{name: "role given back", before: []string{"INSERT INTO user_roles (user_id, role) VALUES ({agent}, 'livechat-agent')"}, rid: "R06", status: 200},
		{name: "permission revoked from the role", before: []string{"DELETE FROM permission_roles WHERE permission = 'inbound-voip-calls' AND role = 'livechat-agent'"},
			rid: "R07", status: 403},
		{name: "permission given back", before: []string{"INSERT INTO permission_roles (permission, role) VALUES ('inbound-voip-calls', 'livechat-agent')"},
			rid: "R07", status: 200},
		{name: "renamed", before: []string{"UPDATE users SET username = 'renamed', name = 'Renamed' WHERE id = {agent}"}, rid: "R08", status: 200},
		{name: "as renamed", rid: "R09", status: 200, fast: true},
		{name: "token expired", before: []string{"UPDATE user_login_tokens SET created_at = UTC_TIMESTAMP(3) - INTERVAL 1 HOUR - INTERVAL 1 SECOND WHERE user_id = {agent}"},
			rid: "R10", status: 401},
		{name: "token renewed", before: []string{"UPDATE user_login_tokens SET created_at = UTC_TIMESTAMP(3) - INTERVAL 1 HOUR + INTERVAL 1 MINUTE WHERE user_id = {agent}"},
			rid: "R10", status: 200},
		{name: "renewed, as last time", rid: "R11", status: 200, fast: true},
		{name: "token revoked", before: []string{"DELETE FROM user_login_tokens WHERE user_id = {agent}"}, rid: "R12", status: 401},
	}
	var answers [2][]answer
	var rows [2][]string
	for i, o := range []envOptions{{ordinary: true}, {}} {
		name := map[bool]string{true: "ordinary", false: "fast"}[o.ordinary]
		t.Run(name, func(t *testing.T) {
			o.extra, o.proxied = []string{"rate_limit 30 1m", "login_expiration 1h", "max_open_conns 1"}, true
			e, proxy := startEnv(t, o)
			for j := range 13 {
				e.db.AddRoom(t, fmt.Sprintf("R%02d", j), e.visitor, time.Now().UTC(), nil)
			}
			for _, s := range steps {
				for _, q := range s.before {
					if strings.Contains(q, "{agent}") {
						e.db.Exec(t, strings.ReplaceAll(q, "{agent}", "?"), e.agent.ID)
					} else {
						e.db.Exec(t, q)
					}
				}
				before := proxy.Commands()
				got := e.post(t, closeBody(s.rid, e.visitor.Token))
				n := proxy.Commands() - before
				if got.status != s.status {
					t.Errorf("%s: %d %s, want %d", s.name, got.status, got.body, s.status)
				}
				if fast := n == 1 && got.status == 200; !o.ordinary && fast != s.fast {
					t.Errorf("%s: %d round trips, want the fast close %v", s.name, n, s.fast)
				}
				answers[i] = append(answers[i], answer{got.status, got.body, got.header.Get("X-RateLimit-Limit"),
					got.header.Get("X-RateLimit-Remaining"), got.header.Get("X-RateLimit-Reset") != ""})
			}
			r, err := e.db.Query(`SELECT r.id, r.open, r.closed_by_id, r.msgs, COALESCE(m.t, ''), COALESCE(m.user_id, ''),
  COALESCE(m.username, 'NULL'), COALESCE(m.name, 'NULL'), (SELECT COUNT(*) FROM room_events ev WHERE ev.rid = r.id)
FROM rooms r LEFT JOIN messages m ON m.rid = r.id ORDER BY r.id`)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			for r.Next() {
				var id, closedBy, mt, uid, un, mn string
				var open bool
				var msgs, events int
				var closedByNull *string
				if err := r.Scan(&id, &open, &closedByNull, &msgs, &mt, &uid, &un, &mn, &events); err != nil {
					t.Fatal(err)
				}
				if closedByNull != nil {
					closedBy = *closedByNull
				}
				rows[i] = append(rows[i], fmt.Sprintf("%s open=%v closed_by=%s msgs=%d message=%s/%s/%s/%s events=%d", id, open, closedBy, msgs, mt, uid, un, mn, events))
			}
		})
	}
	for j, s := range steps {
		if j < len(answers[0]) && j < len(answers[1]) && answers[0][j] != answers[1][j] {
			t.Errorf("%s: without the fast close %+v, with it %+v", s.name, answers[0][j], answers[1][j])
		}
	}
	if !slices.Equal(rows[0], rows[1]) {
		t.Errorf("rows differ:\nwithout the fast close %q\nwith it                %q", rows[0], rows[1])
	}
	t.Logf("answers: %+v", answers[1])
}
