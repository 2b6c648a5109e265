package systemtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/rcsync"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
	tf "github.com/edgevoip/caddy-rocketchat-voip/internal/testferret"
)

// syncUsers is how many users the whole-loop test puts in Rocket.Chat:
// $ROCKETCHAT_VOIP_SYNC_USERS, default 1,000 (docs/sync.md's figures use
// 10,000; FerretDB reads a few thousand documents a second).
func syncUsers(t *testing.T) int {
	if v := os.Getenv("ROCKETCHAT_VOIP_SYNC_USERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("ROCKETCHAT_VOIP_SYNC_USERS: %q", v)
		}
		return n
	}
	return 1000
}

// waitUntil polls cond until it holds or the deadline passes; it returns how
// long that took.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	began := time.Now()
	for !cond() {
		if time.Since(began) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(began)
}

// The whole loop in front of a Rocket.Chat MongoDB (FerretDB, with
// Rocket.Chat-shaped documents): Caddy with the handler and the sync app
// snapshots the users; a login made in MongoDB becomes usable at the edge;
// an edge close reaches Rocket.Chat's room; a close made in Rocket.Chat
// closes the room at the edge; a token Rocket.Chat removes without bumping
// _updatedAt is refused after the next reconciliation; and no secret of
// the documents reaches MySQL or Caddy's log.
func TestSyncWholeLoop(t *testing.T) {
	users := syncUsers(t)
	fdb := tf.Start(t)
	rc := fdb.Client(t).Database("rocketchat")
	db := testdb.New(t)
	up := testcaddy.StartUpstream(t)
	ctx := context.Background()
	now := time.Now().UTC().Add(-time.Hour)

	tf.InsertAll(t, rc.Collection(rcsync.CollPermissions), []any{
		tf.Permission("inbound-voip-calls", now, "livechat-agent"),
		tf.Permission("api-bypass-rate-limit", now, "admin", "bot", "app"),
	})
	docs := make([]any, 0, users)
	for i := range users {
		roles := []string{"user"}
		if i == 0 {
			roles = []string{"user", "livechat-agent", "bot"} // bot: not rate limited while the test polls
		}
		docs = append(docs, tf.User(tf.UserID(i), fmt.Sprintf("user%d", i), roles, now,
			tf.ResumeToken(fmt.Sprintf("web-%d", i), now), tf.ResumeToken(fmt.Sprintf("phone-%d", i), now),
			tf.PATToken(fmt.Sprintf("pat-%d", i), "crm", now)))
	}
	tf.InsertAll(t, rc.Collection(rcsync.CollUsers), docs)
	tf.InsertAll(t, rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis1", "vtok-1", now)})
	roomTs := time.Now().UTC().Add(-2 * time.Minute)
	tf.InsertAll(t, rc.Collection(rcsync.CollRooms), []any{
		tf.Room("room1", "vis1", "vtok-1", tf.UserID(0), "user0", roomTs),
		tf.Room("room2", "vis1", "vtok-1", tf.UserID(0), "user0", roomTs),
	})

	logFile := filepath.Join(t.TempDir(), "caddy.log")
	globals := fmt.Sprintf(`	log {
		output file %s
		level DEBUG
	}
	rocketchat_voip_sync {
		dsn %q
		mongodb_uri %q
		database rocketchat
		poll_interval 100ms
		reconcile_interval 1s
		timeout 2m
		lease 5m
		writeback {
			backoff 100ms 1s
		}
	}
`, logFile, db.DSN, fdb.URI)
	// A pass over 10,000 users on FerretDB takes a minute or more: a
	// max_staleness above reconcile_interval plus a pass (docs/sync.md), so
	// that this test sees the data, not the freshness check.
	c := testcaddy.Start(t, globals, fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\tmax_staleness 30m\n\t}\n\treverse_proxy %s", db.DSN, up.Addr))
	client := &http.Client{Timeout: 30 * time.Second}
	post := func(userID, token, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, c.BaseURL+closePath, strings.NewReader(body))
		req.Header.Set("X-User-Id", userID)
		req.Header.Set("X-Auth-Token", token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	const authedButNoRid = `{"success":false,"error":"must have required property 'rid' [invalid-params]","errorType":"invalid-params"}`
	const loggedOut = `{"status":"error","message":"You must be logged in to do this."}`
	state := func() *rcsync.State {
		st, err := rcsync.ReadState(ctx, db.DB, "rocketchat")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	snap := waitUntil(t, "the snapshot", 30*time.Minute, func() bool {
		st := state()
		return st != nil && st.Phase == rcsync.PhasePoll && !st.CaughtUpAt.IsZero()
	})
	if n := db.Count(t, "user_login_tokens"); n != 3*users {
		t.Fatalf("%d tokens after the snapshot of %d users", n, users)
	}
	agent := tf.UserID(0)
	// The gateway reads the sync's freshness once a second: it answers
	// from MySQL once it has seen the snapshot complete.
	waitUntil(t, "the edge answering from the snapshot", time.Minute, func() bool {
		status, body := post(agent, "web-0", `{}`)
		return status == 400 && body == authedButNoRid
	})

	// A login, as Meteor makes it: lastLogin first, then the token.
	login := time.Now().UTC()
	updateUser(t, rc, agent, bson.D{{Key: "$set", Value: bson.D{{Key: "lastLogin", Value: tf.MS(login)}, {Key: "_updatedAt", Value: tf.MS(login)}}}})
	updateUser(t, rc, agent, bson.D{{Key: "$addToSet", Value: bson.D{{Key: "services.resume.loginTokens", Value: tf.ResumeToken("fresh-login", login)}}}})
	loginTook := waitUntil(t, "the new login accepted at the edge", time.Minute, func() bool {
		status, body := post(agent, "fresh-login", `{}`)
		if status != 400 && status != 401 {
			t.Fatalf("while waiting for the login: %d %s", status, body)
		}
		return status == 400 && body == authedButNoRid
	})

	// An edge close reaches Rocket.Chat's room.
	if status, body := post(agent, "fresh-login", `{"rid":"room1","token":"vtok-1","options":{"comment":"done"}}`); status != 200 || body != `{"rid":"room1","success":true}` {
		t.Fatalf("edge close: %d %s", status, body)
	}
	var msgID string
	if err := db.QueryRow(`SELECT last_message_id FROM rooms WHERE id = 'room1'`).Scan(&msgID); err != nil {
		t.Fatal(err)
	}
	closeTook := waitUntil(t, "room1's open gone in MongoDB", time.Minute, func() bool {
		raw, err := rc.Collection(rcsync.CollRooms).FindOne(ctx, bson.D{{Key: "_id", Value: "room1"}}).Raw()
		if err != nil {
			t.Fatal(err)
		}
		_, absent := raw.LookupErr("open")
		return absent != nil
	})
	raw, _ := rc.Collection(rcsync.CollRooms).FindOne(ctx, bson.D{{Key: "_id", Value: "room1"}}).Raw()
	if got := raw.Lookup("lastMessage", "_id").StringValue(); got != msgID {
		t.Fatalf("room1's lastMessage is %q, the edge's message %q", got, msgID)
	}
	if got := raw.Lookup("lastMessage", "msg").StringValue(); got != "done" {
		t.Fatalf("room1's lastMessage.msg %q", got)
	}

	// A close made in Rocket.Chat closes the room at the edge.
	tf.CloseRoom(t, rc, "room2", agent, "user0", time.Now())
	rcCloseTook := waitUntil(t, "room2 closed in MySQL", time.Minute, func() bool {
		return db.Count(t, "rooms WHERE id = 'room2' AND NOT open AND closer = 'user'") == 1
	})
	if status, body := post(agent, "fresh-login", `{"rid":"room2","token":"vtok-1"}`); status != 400 || body != `{"success":false,"error":"room-closed"}` {
		t.Fatalf("edge close of a room Rocket.Chat closed: %d %s", status, body)
	}

	// A revocation Rocket.Chat makes without bumping _updatedAt
	// (unsetLoginTokens, the expiry job): the array is rewritten with $set.
	updateUser(t, rc, agent, bson.D{{Key: "$set", Value: bson.D{{Key: "services.resume.loginTokens", Value: bson.A{tf.ResumeToken("web-0", now)}}}}})
	revokeTook := waitUntil(t, "the revoked token refused at the edge", 30*time.Minute, func() bool {
		status, body := post(agent, "fresh-login", `{}`)
		return status == 401 && body == loggedOut
	})
	if status, body := post(agent, "web-0", `{}`); status != 400 || body != authedButNoRid {
		t.Fatalf("the token kept: %d %s", status, body)
	}
	t.Logf("figures with %d users: snapshot %v; login -> accepted at the edge %v; edge close -> open gone in MongoDB %v; "+
		"Rocket.Chat close -> closed at the edge %v; revocation -> 401 %v", users, snap.Round(time.Millisecond),
		loginTook.Round(time.Millisecond), closeTook.Round(time.Millisecond), rcCloseTook.Round(time.Millisecond), revokeTook.Round(time.Millisecond))

	// Secrets: not in any MySQL row, not in Caddy's log (at DEBUG).
	assertNoSecretRows(t, db)
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "sync: pass done") {
		t.Fatalf("the log has none of the sync's lines: %s", log)
	}
	for _, secret := range []string{tf.SecretMarker, "fresh-login", store.HashLoginToken("fresh-login")} {
		if strings.Contains(string(log), secret) {
			t.Fatalf("the log holds %q", secret)
		}
	}
}

func updateUser(t *testing.T, rc *mongo.Database, id string, update bson.D) {
	t.Helper()
	res, err := rc.Collection(rcsync.CollUsers).UpdateOne(context.Background(), bson.D{{Key: "_id", Value: id}}, update)
	if err != nil || res.MatchedCount != 1 {
		t.Fatalf("updating %s: %v %+v", id, err, res)
	}
}

func assertNoSecretRows(t *testing.T, db *testdb.DB) {
	t.Helper()
	rows, err := db.Query(`SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		_ = rows.Scan(&name)
		tables = append(tables, name)
	}
	rows.Close()
	for _, table := range tables {
		var n int
		// Every column of every row, as text.
		cols, err := db.Query("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?", table)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for cols.Next() {
			var c string
			_ = cols.Scan(&c)
			names = append(names, "COALESCE(CAST(`"+c+"` AS CHAR), '')")
		}
		cols.Close()
		if err := db.QueryRow("SELECT COUNT(*) FROM `"+table+"` WHERE CONCAT_WS('|', "+strings.Join(names, ", ")+") LIKE ?",
			"%"+tf.SecretMarker+"%").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			t.Fatalf("%d rows of %s hold a secret", n, table)
		}
	}
}

// MongoDB away: the edge keeps answering from MySQL while the data is
// younger than max_staleness; past it, room.close answers 503 (outcome
// stale), or, with when_stale upstream, goes to Rocket.Chat untouched; once
// MongoDB is back and the sync has caught up, the edge answers again.
// Staleness is moved on by moving the sync's times back in MySQL (no
// waiting on the clock), as hours without MongoDB would.
func TestSyncStaleness(t *testing.T) {
	fdb := tf.Start(t)
	rc := fdb.Client(t).Database("rocketchat")
	db := testdb.New(t)
	up := testcaddy.StartUpstream(t)
	now := time.Now().UTC().Add(-time.Hour)
	tf.InsertAll(t, rc.Collection(rcsync.CollPermissions), []any{
		tf.Permission("inbound-voip-calls", now, "livechat-agent"),
		tf.Permission("api-bypass-rate-limit", now, "admin", "bot", "app"),
	})
	tf.InsertAll(t, rc.Collection(rcsync.CollUsers), []any{tf.User("agent1", "alice", []string{"livechat-agent", "bot"}, now, tf.ResumeToken("alice-web", now))})
	globals := fmt.Sprintf(`	rocketchat_voip_sync {
		dsn %q
		mongodb_uri %q
		poll_interval 100ms
		reconcile_interval 1s
		timeout 2s
		lease 5s
	}
`, db.DSN, fdb.URI)
	site := func(whenStale string) string {
		return fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\tmax_staleness 1h\n\t\twhen_stale %s\n\t}\n\treverse_proxy %s", db.DSN, whenStale, up.Addr)
	}
	c := testcaddy.Start(t, globals, site("unavailable"))
	client := &http.Client{Timeout: 30 * time.Second}
	post := func() (int, string) {
		req, _ := http.NewRequest(http.MethodPost, c.BaseURL+closePath, strings.NewReader(`{}`))
		req.Header.Set("X-User-Id", "agent1")
		req.Header.Set("X-Auth-Token", "alice-web")
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			// Just after a reload, Caddy may close a kept-alive connection
			// unanswered: the callers wait on a condition and ask again.
			t.Logf("no answer: %v", err)
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	const authedButNoRid = `{"success":false,"error":"must have required property 'rid' [invalid-params]","errorType":"invalid-params"}`
	const unavailable = `{"success":false,"error":"service-unavailable"}`
	answeredAtEdge := func() bool { s, b := post(); return s == 400 && b == authedButNoRid }
	waitUntil(t, "the first snapshot, then answers from MySQL", 5*time.Minute, answeredAtEdge)

	fdb.Stop()
	if s, b := post(); s != 400 || b != authedButNoRid {
		t.Fatalf("MongoDB just went away, within max_staleness: %d %s", s, b)
	}
	// Hours pass without MongoDB.
	db.Exec(t, `UPDATE sync_state SET caught_up_at = caught_up_at - INTERVAL 2 HOUR, reconciled_at = reconciled_at - INTERVAL 2 HOUR`)
	waitUntil(t, "503 past max_staleness", time.Minute, func() bool {
		s, b := post()
		if s != 400 && s != 503 && s != 0 {
			t.Fatalf("while waiting for 503: %d %s", s, b)
		}
		return s == 503 && b == unavailable
	})
	for _, r := range up.Requests() {
		if r.RequestURI == closePath {
			t.Fatal("room.close reached the upstream with when_stale unavailable")
		}
	}

	// when_stale upstream: Rocket.Chat answers (here the recording upstream).
	if err := testcaddy.Load(strings.Replace(c.Caddyfile, "when_stale unavailable", "when_stale upstream", 1)); err != nil {
		t.Fatal(err)
	}
	client.CloseIdleConnections()
	waitUntil(t, "room.close passed upstream", time.Minute, func() bool {
		s, b := post()
		return s == 200 && strings.Contains(b, closePath)
	})
	var passed *testcaddy.Recorded
	for _, r := range up.Requests() {
		if r.RequestURI == closePath {
			passed = &r
		}
	}
	if passed == nil || passed.Body != `{}` || passed.Header.Get("X-Auth-Token") != "alice-web" {
		t.Fatalf("what reached the upstream: %+v", passed)
	}

	// MongoDB back: the sync catches up, and the edge answers again.
	fdb.Restart(t)
	waitUntil(t, "answers from MySQL once caught up", 5*time.Minute, answeredAtEdge)
}
