package rcsync_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/rcsync"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
	tf "github.com/edgevoip/caddy-rocketchat-voip/internal/testferret"
)

// recorder is an Observer that keeps every log line it is given.
type recorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *recorder) add(s string)           { r.mu.Lock(); r.lines = append(r.lines, s); r.mu.Unlock() }
func (r *recorder) Leader(v bool)          { r.add(fmt.Sprint("leader ", v)) }
func (r *recorder) CaughtUp(*rcsync.State) {}
func (r *recorder) PassDone(kind string, users int, took time.Duration) {
	r.add(fmt.Sprintf("%s done: %d users", kind, users))
}
func (r *recorder) Error(what string, err error) { r.add(what + ": " + err.Error()) }
func (r *recorder) Warn(msg string, kv ...any)   { r.add(fmt.Sprint(append([]any{msg}, kv...)...)) }
func (r *recorder) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// replies keeps every reply MongoDB sent this process.
type replies struct {
	mu    sync.Mutex
	all   []string
	bytes int
}

func (r *replies) monitor() *options.ClientOptions {
	return options.Client().SetMonitor(&event.CommandMonitor{Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
		r.mu.Lock()
		r.all = append(r.all, e.Reply.String())
		r.bytes += len(e.Reply)
		r.mu.Unlock()
	}})
}

// load is how many replies and bytes MongoDB sent since the last call.
func (r *replies) load() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, b := len(r.all), r.bytes
	r.all, r.bytes = nil, 0
	return n, b
}

func (r *replies) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.all, "\n")
}

type fixture struct {
	t     *testing.T
	fdb   *tf.Server
	rc    *mongo.Database // Rocket.Chat's side, as Rocket.Chat writes it
	db    *testdb.DB
	obs   *recorder
	wire  *replies
	src   *rcsync.Source
	cfg   rcsync.Config
	clock time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, fdb: tf.Start(t), db: testdb.New(t), obs: new(recorder), wire: new(replies)}
	f.rc = f.fdb.Client(t).Database("rocketchat")
	f.clock = time.Now().UTC()
	// Rocket.Chat's default permission documents the gateway reads.
	tf.InsertAll(t, f.rc.Collection(rcsync.CollPermissions), []any{
		tf.Permission("inbound-voip-calls", f.clock, "livechat-agent"),
		tf.Permission("api-bypass-rate-limit", f.clock, "admin", "bot", "app"),
		tf.Permission("view-livechat-rooms", f.clock, "livechat-manager", "admin"),
	})
	// Generous: FerretDB on SQLite reads a few thousand documents a second, fewer on a busy machine.
	src, err := rcsync.Connect(f.fdb.URI, "rocketchat", 2*time.Minute, f.wire.monitor())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close(context.Background()) })
	f.src = src
	f.cfg = rcsync.Config{Source: "rocketchat", Owner: "gw-1", LeaseTTL: 30 * time.Second, PollInterval: 50 * time.Millisecond,
		ReconcileInterval: time.Hour, Overlap: 5 * time.Second, Batch: 500}
	return f
}

func (f *fixture) syncer(owner string) *rcsync.Syncer {
	cfg := f.cfg
	cfg.Owner = owner
	return rcsync.New(cfg, f.db.DB, f.src, f.obs)
}

func (f *fixture) round(s *rcsync.Syncer) {
	f.t.Helper()
	if err := s.Round(context.Background()); err != nil {
		f.t.Fatalf("round: %v", err)
	}
}

// tick moves Rocket.Chat's clock on: each write a test makes is later than the last.
func (f *fixture) tick() time.Time {
	f.clock = f.clock.Add(10 * time.Millisecond)
	return f.clock
}

func (f *fixture) rows(query string, args ...any) []string {
	f.t.Helper()
	rows, err := f.db.Query(query, args...)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			f.t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = "NULL"
			if v.Valid {
				parts[i] = v.String
			}
		}
		out = append(out, strings.Join(parts, "|"))
	}
	return out
}

func (f *fixture) wantRows(query string, want ...string) {
	f.t.Helper()
	got := f.rows(query)
	if !slices.Equal(got, want) {
		f.t.Fatalf("%s:\n got  %q\n want %q", query, got, want)
	}
}

func (f *fixture) mongoUpdate(coll string, id string, update bson.D) {
	f.t.Helper()
	res, err := f.rc.Collection(coll).UpdateOne(context.Background(), bson.D{{Key: "_id", Value: id}}, update)
	if err != nil || res.MatchedCount != 1 {
		f.t.Fatalf("update of %s %s: %v (%+v)", coll, id, err, res)
	}
}

func tokenRows(hashes ...string) []string { return hashes }

// A snapshot brings users (with roles and both kinds of tokens),
// permissions, visitors and VoIP rooms; then the poller follows a new
// login, role and permission changes, a new visitor and room, and a close
// made in Rocket.Chat; a reconciliation removes a token Rocket.Chat removed
// without bumping _updatedAt, and rows whose documents were hard-deleted.
func TestSnapshotThenFollow(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	t0 := f.tick()
	tf.InsertAll(t, f.rc.Collection(rcsync.CollUsers), []any{
		tf.User("agent1", "alice", []string{"user", "livechat-agent"}, t0,
			tf.ResumeToken("alice-web", t0.Add(-time.Hour)), tf.PATToken("alice-pat", "crm", t0.Add(-48*time.Hour)),
			bson.D{{Key: "when", Value: tf.MS(t0)}, {Key: "token", Value: "legacy-plain"}}), // legacy: no hashedToken, skipped
		tf.User("agent2", "bob", []string{"user"}, t0, tf.ResumeToken("bob-web", t0)),
		// Last changed an hour ago: outside any poll's overlap.
		tf.User("agent3", "carol", []string{"user"}, t0.Add(-time.Hour), tf.ResumeToken("carol-web", t0), tf.ResumeToken("carol-phone", t0)),
	})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis1", "vtok-1", t0)})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollRooms), []any{
		tf.Room("room1", "vis1", "vtok-1", "agent1", "alice", t0),
		bson.D{{Key: "_id", Value: "GENERAL"}, {Key: "t", Value: "c"}, {Key: "name", Value: "general"}, {Key: "_updatedAt", Value: tf.MS(t0)}},
	})

	s := f.syncer("gw-1")
	f.round(s)
	if !s.Leading() {
		t.Fatal("the only syncer does not lead")
	}
	f.wantRows(`SELECT id, username, name, type, active FROM users ORDER BY id`,
		"agent1|alice|Agent alice|user|1", "agent2|bob|Agent bob|user|1", "agent3|carol|Agent carol|user|1")
	f.wantRows(`SELECT user_id, hashed_token, type, name FROM user_login_tokens WHERE user_id <> 'agent3' ORDER BY user_id, type, hashed_token`,
		"agent1|"+store.HashLoginToken("alice-pat")+"|personalAccessToken|crm",
		"agent1|"+store.HashLoginToken("alice-web")+"|resume|NULL",
		"agent2|"+store.HashLoginToken("bob-web")+"|resume|NULL")
	f.wantRows(`SELECT user_id, role FROM user_roles ORDER BY user_id, role`, "agent1|livechat-agent", "agent1|user", "agent2|user", "agent3|user")
	f.wantRows(`SELECT permission, role FROM permission_roles ORDER BY permission, role`,
		"api-bypass-rate-limit|admin", "api-bypass-rate-limit|app", "api-bypass-rate-limit|bot", "inbound-voip-calls|livechat-agent",
		"view-livechat-rooms|admin", "view-livechat-rooms|livechat-manager")
	f.wantRows(`SELECT id, token, username, name FROM livechat_visitors`, "vis1|vtok-1|guest-vis1|Visitor vis1")
	f.wantRows(`SELECT id, t, open, visitor_id, visitor_token, visitor_status, served_by_id, served_by_username, queue, direction,
		call_unique_id, msgs, closed_at FROM rooms`,
		"room1|v|1|vis1|vtok-1|online|agent1|alice|q1|inbound|call-room1|0|NULL")
	st, err := rcsync.ReadState(ctx, f.db.DB, "rocketchat")
	if err != nil || st == nil || st.Phase != rcsync.PhasePoll || st.CaughtUpAt.IsZero() || st.ReconciledAt.IsZero() {
		t.Fatalf("state after the snapshot: %+v, %v", st, err)
	}

	// A login as Meteor makes it: lastLogin (and _updatedAt) first, then the
	// token pushed without _updatedAt. The poller's overlap re-reads the user.
	login := f.tick()
	f.mongoUpdate(rcsync.CollUsers, "agent2", bson.D{{Key: "$set", Value: bson.D{{Key: "lastLogin", Value: tf.MS(login)}, {Key: "_updatedAt", Value: tf.MS(login)}}}})
	f.round(s)
	f.mongoUpdate(rcsync.CollUsers, "agent2", bson.D{{Key: "$addToSet", Value: bson.D{{Key: "services.resume.loginTokens", Value: tf.ResumeToken("bob-phone", login)}}}})
	// Role and permission changes, a new visitor and room.
	f.mongoUpdate(rcsync.CollUsers, "agent1", bson.D{{Key: "$set", Value: bson.D{{Key: "roles", Value: bson.A{"user"}}, {Key: "_updatedAt", Value: tf.MS(f.tick())}}}})
	f.mongoUpdate(rcsync.CollPermissions, "inbound-voip-calls", bson.D{{Key: "$set", Value: bson.D{{Key: "roles", Value: bson.A{"livechat-agent", "voip-agent"}}, {Key: "_updatedAt", Value: tf.MS(f.tick())}}}})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis2", "vtok-2", f.tick())})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollRooms), []any{tf.Room("room2", "vis2", "vtok-2", "agent2", "bob", f.tick())})
	f.round(s)
	f.wantRows(`SELECT hashed_token FROM user_login_tokens WHERE user_id = 'agent2' ORDER BY created_at, hashed_token`,
		tokenRows(store.HashLoginToken("bob-web"), store.HashLoginToken("bob-phone"))...)
	f.wantRows(`SELECT user_id, role FROM user_roles ORDER BY user_id, role`, "agent1|user", "agent2|user", "agent3|user")
	f.wantRows(`SELECT role FROM permission_roles WHERE permission = 'inbound-voip-calls' ORDER BY role`, "livechat-agent", "voip-agent")
	f.wantRows(`SELECT id, token FROM livechat_visitors ORDER BY id`, "vis1|vtok-1", "vis2|vtok-2")
	f.wantRows(`SELECT id, open, visitor_token FROM rooms ORDER BY id`, "room1|1|vtok-1", "room2|1|vtok-2")

	// Rocket.Chat closes room1: MySQL closes it with Rocket.Chat's fields.
	closedAt := f.tick()
	tf.CloseRoom(t, f.rc, "room1", "agent1", "alice", closedAt)
	f.round(s)
	f.wantRows(`SELECT open, closer, closed_by_id, closed_by_username, call_duration, visitor_status, msgs, last_message_id FROM rooms WHERE id = 'room1'`,
		"0|user|agent1|alice|61000|offline|1|rcmsg-room1")
	var gotClosed time.Time
	if err := f.db.QueryRow(`SELECT closed_at FROM rooms WHERE id = 'room1'`).Scan(&gotClosed); err != nil || !gotClosed.Equal(tf.MS(closedAt)) {
		t.Fatalf("closed_at %v, want %v (%v)", gotClosed, tf.MS(closedAt), err)
	}

	// Revocations Rocket.Chat makes without bumping _updatedAt (FerretDB's
	// $pull removes only equal elements, so the array is rewritten with
	// $set, as unsetLoginTokens does), and hard deletes: the poller cannot
	// see them...
	f.mongoUpdate(rcsync.CollUsers, "agent3", bson.D{{Key: "$set", Value: bson.D{{Key: "services.resume.loginTokens", Value: bson.A{tf.ResumeToken("carol-phone", t0)}}}}})
	if _, err := f.rc.Collection(rcsync.CollUsers).DeleteOne(ctx, bson.D{{Key: "_id", Value: "agent2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rc.Collection(rcsync.CollVisitors).DeleteOne(ctx, bson.D{{Key: "_id", Value: "vis2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rc.Collection(rcsync.CollRooms).DeleteOne(ctx, bson.D{{Key: "_id", Value: "room2"}}); err != nil {
		t.Fatal(err)
	}
	f.round(s)
	if n := f.db.Count(t, "user_login_tokens WHERE user_id = 'agent3'"); n != 2 {
		t.Fatalf("before the reconciliation is due, agent3 has %d tokens (the poller saw a change it cannot see?)", n)
	}
	// ...the reconciliation, once its period has passed, does.
	f.db.Exec(t, `UPDATE sync_state SET reconciled_at = reconciled_at - INTERVAL 2 HOUR`)
	f.round(s)
	f.wantRows(`SELECT user_id, hashed_token FROM user_login_tokens ORDER BY user_id, type`,
		"agent1|"+store.HashLoginToken("alice-pat"), "agent1|"+store.HashLoginToken("alice-web"), "agent3|"+store.HashLoginToken("carol-phone"))
	f.wantRows(`SELECT id FROM users ORDER BY id`, "agent1", "agent3")
	f.wantRows(`SELECT user_id, role FROM user_roles ORDER BY user_id`, "agent1|user", "agent3|user")
	f.wantRows(`SELECT id FROM livechat_visitors`, "vis1")
	f.wantRows(`SELECT id FROM rooms`, "room1")

	// Nothing of the secrets reached MySQL, this process (every reply MongoDB
	// sent), or a log line.
	assertNoSecrets(t, f)
}

// assertNoSecrets looks for the marker in every MySQL table, every MongoDB
// reply the sync received, and every log line.
func assertNoSecrets(t *testing.T, f *fixture) {
	t.Helper()
	tables := f.rows(`SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()`)
	if len(tables) < 10 {
		t.Fatalf("only %d tables seen", len(tables))
	}
	for _, table := range tables {
		for _, row := range f.rows("SELECT * FROM `" + table + "`") {
			if strings.Contains(row, tf.SecretMarker) || strings.Contains(row, "legacy-plain") {
				t.Fatalf("a secret reached MySQL's %s: %s", table, row)
			}
		}
	}
	wire := f.wire.text()
	if !strings.Contains(wire, store.HashLoginToken("alice-pat")) {
		t.Fatal("the monitor saw no reply carrying tokens: it watches nothing")
	}
	if strings.Contains(wire, tf.SecretMarker) || strings.Contains(wire, "legacy-plain") {
		t.Fatal("a secret left MongoDB: the projection let it through")
	}
	if strings.Contains(f.obs.text(), tf.SecretMarker) {
		t.Fatal("a secret reached the log")
	}
}

// A restart mid-snapshot resumes after the last page committed: the pages
// before it are not read again, and the end state is the whole collection.
func TestRestartMidSnapshot(t *testing.T) {
	f := newFixture(t)
	f.cfg.Batch = 100
	var docs []any
	for i := range 1000 {
		docs = append(docs, tf.User(tf.UserID(i), fmt.Sprintf("user%d", i), []string{"user"}, f.clock, tf.ResumeToken(fmt.Sprintf("tok-%d", i), f.clock)))
	}
	tf.InsertAll(t, f.rc.Collection(rcsync.CollUsers), docs)

	ctx, kill := context.WithCancel(context.Background())
	first := f.syncer("gw-1")
	pages := 0
	first.SetAfterPage(func(coll string) {
		if coll == rcsync.CollUsers {
			if pages++; pages == 3 {
				kill() // dies after the third page of users committed
			}
		}
	})
	if err := first.Round(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("the interrupted round: %v", err)
	}
	st, err := rcsync.ReadState(context.Background(), f.db.DB, "rocketchat")
	if err != nil || st.Phase != rcsync.PhaseSnapshot || st.SnapshotColl != rcsync.CollUsers || st.SnapshotAfter != tf.UserID(299) {
		t.Fatalf("state after the interruption: %+v, %v", st, err)
	}
	if n := f.db.Count(t, "users"); n != 300 {
		t.Fatalf("%d users after three pages", n)
	}
	// Another gateway cannot take over while the dead one's lease runs...
	second := f.syncer("gw-2")
	f.round(second)
	if second.Leading() {
		t.Fatal("gw-2 leads while gw-1's lease runs")
	}
	// ...and does once it lapses, resuming where gw-1 stopped.
	f.db.Exec(t, `UPDATE sync_lease SET lease_until = NOW(3) - INTERVAL 1 SECOND`)
	pages = 0
	second.SetAfterPage(func(coll string) {
		if coll == rcsync.CollUsers {
			pages++
		}
	})
	f.round(second)
	if !second.Leading() || pages != 7 {
		t.Fatalf("gw-2 leading %v, read %d pages of users after the restart, want the 7 left", second.Leading(), pages)
	}
	if n := f.db.Count(t, "users"); n != 1000 {
		t.Fatalf("%d users after the snapshot", n)
	}
	if n := f.db.Count(t, "user_login_tokens"); n != 1000 {
		t.Fatalf("%d tokens after the snapshot", n)
	}
	// The first gateway, back, finds the lease taken: it applies nothing.
	f.round(first)
	if first.Leading() {
		t.Fatal("two leaders")
	}
}

// An edge close is never undone by the sync: Rocket.Chat's document still
// says open (the write-back has not run), the sync reads it, and MySQL keeps
// the room closed with the edge's fields.
func TestEdgeCloseIsNotReopened(t *testing.T) {
	f := newFixture(t)
	t0 := f.tick()
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis1", "vtok-1", t0)})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollRooms), []any{tf.Room("room1", "vis1", "vtok-1", "agent1", "alice", t0)})
	s := f.syncer("gw-1")
	f.round(s)
	f.db.Exec(t, `UPDATE rooms SET open = FALSE, closer = 'visitor', closed_by_id = 'vis1', closed_at = NOW(3) WHERE id = 'room1'`)
	f.mongoUpdate(rcsync.CollRooms, "room1", bson.D{{Key: "$set", Value: bson.D{{Key: "callWaitingTime", Value: 4000.0}, {Key: "_updatedAt", Value: tf.MS(f.tick())}}}})
	f.round(s)
	f.db.Exec(t, `UPDATE sync_state SET reconciled_at = reconciled_at - INTERVAL 2 HOUR`)
	f.round(s)
	f.wantRows(`SELECT open, closer, closed_by_id, call_waiting_time FROM rooms`, "0|visitor|vis1|NULL")
}

// MongoDB away: rounds fail, the error is recorded, and the freshness the
// gateway reads stops advancing; back, the sync catches up by itself.
func TestMongoAway(t *testing.T) {
	f := newFixture(t)
	// A short timeout: the rounds without MongoDB fail fast.
	src, err := rcsync.Connect(f.fdb.URI, "rocketchat", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	s := rcsync.New(f.cfg, f.db.DB, src, f.obs)
	f.round(s)
	before, _ := rcsync.ReadState(context.Background(), f.db.DB, "rocketchat")
	f.fdb.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Round(ctx); err == nil {
		t.Fatal("a round without MongoDB succeeded")
	}
	after, _ := rcsync.ReadState(context.Background(), f.db.DB, "rocketchat")
	if !after.CaughtUpAt.Equal(before.CaughtUpAt) {
		t.Fatalf("caught_up_at moved without MongoDB: %v -> %v", before.CaughtUpAt, after.CaughtUpAt)
	}
	if age, ok := after.Staleness(); !ok || age <= 0 {
		t.Fatalf("staleness %v %v", age, ok)
	}
	f.fdb.Restart(t)
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis9", "vtok-9", f.tick())})
	f.round(s)
	f.wantRows(`SELECT id FROM livechat_visitors`, "vis9")
	again, _ := rcsync.ReadState(context.Background(), f.db.DB, "rocketchat")
	if !again.CaughtUpAt.After(before.CaughtUpAt) {
		t.Fatal("caught_up_at did not advance after MongoDB came back")
	}
}

// 10,000 users with 3 tokens each: the snapshot brings them all, and a
// reconciliation of the unchanged set writes nothing.
func TestSnapshotTenThousandUsers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	f := newFixture(t)
	docs := make([]any, 0, 10000)
	for i := range 10000 {
		docs = append(docs, tf.User(tf.UserID(i), fmt.Sprintf("user%d", i), []string{"user", "livechat-agent"}, f.clock,
			tf.ResumeToken(fmt.Sprintf("web-%d", i), f.clock), tf.ResumeToken(fmt.Sprintf("phone-%d", i), f.clock),
			tf.PATToken(fmt.Sprintf("pat-%d", i), "crm", f.clock)))
	}
	tf.InsertAll(t, f.rc.Collection(rcsync.CollUsers), docs)
	s := f.syncer("gw-1")
	began := time.Now()
	f.round(s)
	t.Logf("snapshot of 10,000 users x 3 tokens: %v", time.Since(began))
	if n := f.db.Count(t, "users"); n != 10000 {
		t.Fatalf("%d users", n)
	}
	if n := f.db.Count(t, "user_login_tokens"); n != 30000 {
		t.Fatalf("%d tokens", n)
	}
	if n := f.db.Count(t, "user_roles"); n != 20000 {
		t.Fatalf("%d roles", n)
	}
	var tok string
	if err := f.db.QueryRow(`SELECT hashed_token FROM user_login_tokens WHERE user_id = ? AND type = 'personalAccessToken'`, tf.UserID(9999)).Scan(&tok); err != nil ||
		tok != store.HashLoginToken("pat-9999") {
		t.Fatalf("the last user's PAT: %q %v", tok, err)
	}
	var beforeJSON []byte
	beforeJSON, _ = json.Marshal(f.rows(`SELECT COUNT(*), SUM(CRC32(CONCAT(user_id, hashed_token, type, created_at))) FROM user_login_tokens`))
	f.db.Exec(t, `UPDATE sync_state SET reconciled_at = reconciled_at - INTERVAL 2 HOUR`)
	f.wire.load()
	began = time.Now()
	f.round(s)
	replies, bytes := f.wire.load()
	t.Logf("reconciliation of 10,000 users: %v; MongoDB sent %d replies, %d bytes", time.Since(began), replies, bytes)
	afterJSON, _ := json.Marshal(f.rows(`SELECT COUNT(*), SUM(CRC32(CONCAT(user_id, hashed_token, type, created_at))) FROM user_login_tokens`))
	if string(beforeJSON) != string(afterJSON) {
		t.Fatalf("a reconciliation of an unchanged set changed the tokens: %s -> %s", beforeJSON, afterJSON)
	}
}

// A restart while following resumes from the committed checkpoint: no pass
// re-reads the collections, and what changed while the sync was down is
// applied.
func TestRestartResumesFollowing(t *testing.T) {
	f := newFixture(t)
	old := f.clock.Add(-time.Hour)
	var docs []any
	for i := range 300 {
		docs = append(docs, tf.User(tf.UserID(i), fmt.Sprintf("user%d", i), []string{"user"}, old, tf.ResumeToken(fmt.Sprintf("tok-%d", i), old)))
	}
	tf.InsertAll(t, f.rc.Collection(rcsync.CollUsers), docs)
	f.round(f.syncer("gw-1"))
	// Down: a role change and a new visitor meanwhile.
	f.mongoUpdate(rcsync.CollUsers, tf.UserID(7), bson.D{{Key: "$set", Value: bson.D{{Key: "roles", Value: bson.A{"user", "livechat-agent"}}, {Key: "_updatedAt", Value: tf.MS(f.tick())}}}})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis1", "vtok-1", f.tick())})
	restarted := f.syncer("gw-1")
	passPages := 0
	restarted.SetAfterPage(func(string) { passPages++ })
	f.wire.load()
	f.round(restarted)
	if passPages != 0 {
		t.Fatalf("the restart read %d pages of a full pass", passPages)
	}
	f.wantRows(`SELECT role FROM user_roles WHERE user_id = '`+tf.UserID(7)+`' ORDER BY role`, "livechat-agent", "user")
	f.wantRows(`SELECT id FROM livechat_visitors`, "vis1")
	if _, bytes := f.wire.load(); bytes > 20000 {
		t.Fatalf("the restarted round read %d bytes from MongoDB: a re-read, not a resume", bytes)
	}
}

// Rocket.Chat's username and visitor token indexes are not unique, and
// MySQL's are: a username moving between two users, and two visitors with
// one token, converge without failing the sync.
func TestDuplicatesConverge(t *testing.T) {
	f := newFixture(t)
	old := f.clock.Add(-time.Hour)
	tf.InsertAll(t, f.rc.Collection(rcsync.CollUsers), []any{
		tf.User("u1", "sam", []string{"user"}, old), tf.User("u2", "max", []string{"user"}, old),
	})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("v1", "shared", old), tf.Visitor("v2", "shared", old)})
	s := f.syncer("gw-1")
	f.round(s)
	f.wantRows(`SELECT id, token FROM livechat_visitors`, "v1|shared")
	if !strings.Contains(f.obs.text(), "kept the first") || strings.Contains(f.obs.text(), "shared") {
		t.Fatalf("the duplicate is not logged, or its token is:\n%s", f.obs.text())
	}
	// sam renames to samuel, and max takes sam, read in the other order.
	f.mongoUpdate(rcsync.CollUsers, "u2", bson.D{{Key: "$set", Value: bson.D{{Key: "username", Value: "sam"}, {Key: "_updatedAt", Value: tf.MS(f.tick())}}}})
	f.round(s)
	f.wantRows(`SELECT id, username FROM users ORDER BY id`, "u1|NULL", "u2|sam")
	f.mongoUpdate(rcsync.CollUsers, "u1", bson.D{{Key: "$set", Value: bson.D{{Key: "username", Value: "samuel"}, {Key: "_updatedAt", Value: tf.MS(f.tick())}}}})
	f.round(s)
	f.wantRows(`SELECT id, username FROM users ORDER BY id`, "u1|samuel", "u2|sam")
}
