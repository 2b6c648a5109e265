package rcsync_test

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/rcsync"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	tf "github.com/edgevoip/caddy-rocketchat-voip/internal/testferret"
)

func (r *recorder) WritebackDone(state string) { r.add("writeback " + state) }

// edgeClose closes rid at the edge through the gateway's own close path.
func edgeClose(t *testing.T, st *store.Store, rid, visitorToken, comment string, tags ...string) store.Result {
	t.Helper()
	ctx := context.Background()
	f, err := st.ReadRoom(ctx, rid, visitorToken)
	if err != nil {
		t.Fatal(err)
	}
	res, err := st.CloseRoom(ctx, store.CloseRequest{Rid: rid, VisitorToken: visitorToken,
		Agent: store.Agent{ID: "agent1", Username: "alice", Name: "Agent alice"}, Comment: comment, Tags: tags}, f)
	if err != nil {
		t.Fatalf("edge close of %s: %v", rid, err)
	}
	return res
}

// Edge closes reach Rocket.Chat's documents as Rocket.Chat writes a close;
// a room Rocket.Chat closed first is a conflict, left as Rocket.Chat wrote
// it; a room gone from Rocket.Chat is parked; a retry writes nothing twice;
// and the sync's read of the written-back room changes nothing in MySQL.
func TestEdgeCloseWrittenBack(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	t0 := f.tick().Add(-time.Minute)
	tf.InsertAll(t, f.rc.Collection(rcsync.CollUsers), []any{tf.User("agent1", "alice", []string{"livechat-agent"}, t0, tf.ResumeToken("alice-web", t0))})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis1", "vtok-1", t0)})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollRooms), []any{
		tf.Room("room1", "vis1", "vtok-1", "agent1", "alice", t0),
		tf.Room("room2", "vis1", "vtok-1", "agent1", "alice", t0),
		tf.Room("room3", "vis1", "vtok-1", "agent1", "alice", t0),
	})
	s := f.syncer("gw-1")
	f.round(s)
	st, err := store.New(ctx, f.db.DB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	res1 := edgeClose(t, st, "room1", "vtok-1", "Customer happy", "sale")
	edgeClose(t, st, "room2", "vtok-1", "")
	edgeClose(t, st, "room3", "vtok-1", "")
	rcClosed := f.tick()
	tf.CloseRoom(t, f.rc, "room2", "agent1", "alice", rcClosed) // Rocket.Chat closes room2 before the write-back
	if _, err := f.rc.Collection(rcsync.CollRooms).DeleteOne(ctx, bson.D{{Key: "_id", Value: "room3"}}); err != nil {
		t.Fatal(err)
	}

	wb := rcsync.NewWriteback(f.db.DB, f.src, rcsync.WritebackConfig{MaxAttempts: 3, BackoffBase: time.Second, BackoffMax: time.Minute, Batch: 64}, f.obs)
	if err := wb.Run(ctx); err != nil {
		t.Fatal(err)
	}
	f.wantRows(`SELECT rid, state, attempts, rc_closer FROM rocketchat_writeback ORDER BY rid`,
		"room1|done|1|NULL", "room2|conflict|1|user", "room3|parked|1|NULL")
	var rcAt time.Time
	if err := f.db.QueryRow(`SELECT rc_closed_at FROM rocketchat_writeback WHERE rid = 'room2'`).Scan(&rcAt); err != nil || !rcAt.Equal(tf.MS(rcClosed)) {
		t.Fatalf("the conflict records Rocket.Chat's closedAt %v, want %v (%v)", rcAt, tf.MS(rcClosed), err)
	}

	// room1 in Rocket.Chat, as LivechatVoip.closeRoom leaves it.
	room := f.doc(rcsync.CollRooms, "room1")
	if _, err := room.LookupErr("open"); err == nil {
		t.Fatalf("room1 still has open: %v", room.Lookup("open"))
	}
	closedAt := res1.ClosedAt.UTC().Truncate(time.Millisecond)
	for _, c := range []struct {
		path []string
		want any
	}{
		{[]string{"closer"}, "visitor"}, {[]string{"closedAt"}, closedAt}, {[]string{"callDuration"}, res1.CallDuration},
		{[]string{"msgs"}, int64(1)}, {[]string{"lm"}, closedAt}, {[]string{"t"}, "v"},
		{[]string{"closedBy", "_id"}, "vis1"}, {[]string{"closedBy", "username"}, "guest-vis1"},
		{[]string{"v", "status"}, "offline"}, {[]string{"v", "token"}, "vtok-1"}, {[]string{"tags", "0"}, "sale"},
		{[]string{"lastMessage", "_id"}, res1.MessageID}, {[]string{"lastMessage", "msg"}, "Customer happy"},
		{[]string{"lastMessage", "t"}, store.MessageTypeWrapup}, {[]string{"lastMessage", "u", "_id"}, "agent1"},
	} {
		if got := value(room, c.path...); got != c.want {
			t.Errorf("room1.%v = %#v, want %#v", c.path, got, c.want)
		}
	}
	msg := f.doc(rcsync.CollMessages, res1.MessageID)
	for _, c := range []struct {
		path []string
		want any
	}{
		{[]string{"rid"}, "room1"}, {[]string{"t"}, store.MessageTypeWrapup}, {[]string{"msg"}, "Customer happy"},
		{[]string{"groupable"}, false}, {[]string{"ts"}, closedAt}, {[]string{"u", "_id"}, "agent1"},
		{[]string{"u", "username"}, "alice"}, {[]string{"u", "name"}, "Agent alice"},
	} {
		if got := value(msg, c.path...); got != c.want {
			t.Errorf("message.%v = %#v, want %#v", c.path, got, c.want)
		}
	}
	// room2 is as Rocket.Chat closed it.
	room2 := f.doc(rcsync.CollRooms, "room2")
	if value(room2, "closer") != "user" || value(room2, "callDuration") != int64(61000) || value(room2, "lastMessage", "_id") != "rcmsg-room2" {
		t.Errorf("room2 was overwritten: %v", room2)
	}

	// A retry after an unknown outcome (the state was not recorded) finds
	// its own close and writes nothing twice.
	f.db.Exec(t, `UPDATE rocketchat_writeback SET state = 'pending', next_attempt_at = NOW(3) WHERE rid = 'room1'`)
	if err := wb.Run(ctx); err != nil {
		t.Fatal(err)
	}
	f.wantRows(`SELECT state, attempts FROM rocketchat_writeback WHERE rid = 'room1'`, "done|2")
	if n, _ := f.rc.Collection(rcsync.CollMessages).CountDocuments(ctx, bson.D{{Key: "rid", Value: "room1"}}); n != 1 {
		t.Fatalf("%d messages in room1", n)
	}
	if n := value(f.doc(rcsync.CollRooms, "room1"), "msgs"); n != int64(1) {
		t.Fatalf("msgs %v after the retry", n)
	}

	// The sync reads the rooms back: MySQL keeps the edge's closes, room2's
	// included.
	f.round(s)
	f.wantRows(`SELECT id, open, closer, closed_by_id FROM rooms ORDER BY id`, "room1|0|visitor|vis1", "room2|0|visitor|vis1", "room3|0|visitor|vis1")
}

// MongoDB away: each failure backs off, and the last allowed one parks the
// event; the webhook's own delivery state is untouched.
func TestWritebackBacksOffAndParks(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	t0 := f.tick()
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis1", "vtok-1", t0)})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollRooms), []any{tf.Room("room1", "vis1", "vtok-1", "agent1", "alice", t0)})
	f.round(f.syncer("gw-1"))
	f.db.AddUser(t, "agent1")
	st, err := store.New(ctx, f.db.DB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	edgeClose(t, st, "room1", "vtok-1", "")
	f.fdb.Stop()
	src, err := rcsync.Connect(f.fdb.URI, "rocketchat", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	wb := rcsync.NewWriteback(f.db.DB, src, rcsync.WritebackConfig{MaxAttempts: 2, BackoffBase: time.Hour, BackoffMax: time.Hour, Batch: 64}, f.obs)
	if err := wb.Run(ctx); err != nil {
		t.Fatal(err)
	}
	f.wantRows(`SELECT state, attempts, next_attempt_at > NOW(3) + INTERVAL 20 MINUTE FROM rocketchat_writeback`, "pending|1|1")
	f.db.Exec(t, `UPDATE rocketchat_writeback SET next_attempt_at = NOW(3)`)
	if err := wb.Run(ctx); err != nil {
		t.Fatal(err)
	}
	f.wantRows(`SELECT state, attempts FROM rocketchat_writeback`, "parked|2")
	f.wantRows(`SELECT delivery_state FROM room_events`, "pending")
}

func (f *fixture) doc(coll, id string) bson.Raw {
	f.t.Helper()
	raw, err := f.rc.Collection(coll).FindOne(context.Background(), bson.D{{Key: "_id", Value: id}}).Raw()
	if err != nil {
		f.t.Fatalf("%s %s: %v", coll, id, err)
	}
	return raw
}

// value is the value at path in doc: strings, booleans and times as such,
// every integer as int64; nil when absent.
func value(doc bson.Raw, path ...string) any {
	v, err := doc.LookupErr(path...)
	if err != nil {
		return nil
	}
	switch v.Type {
	case bson.TypeString:
		return v.StringValue()
	case bson.TypeBoolean:
		return v.Boolean()
	case bson.TypeDateTime:
		return v.Time().UTC()
	case bson.TypeInt32:
		return int64(v.Int32())
	case bson.TypeInt64:
		return v.Int64()
	case bson.TypeDouble:
		return v.Double()
	}
	return v.String()
}

// An event whose transaction committed after a later one's (ids are taken
// in one order and committed in another) is still written back.
func TestWritebackTakesInLateCommits(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	t0 := f.tick()
	tf.InsertAll(t, f.rc.Collection(rcsync.CollVisitors), []any{tf.Visitor("vis1", "vtok-1", t0)})
	tf.InsertAll(t, f.rc.Collection(rcsync.CollRooms), []any{
		tf.Room("room1", "vis1", "vtok-1", "agent1", "alice", t0), tf.Room("room2", "vis1", "vtok-1", "agent1", "alice", t0),
	})
	f.round(f.syncer("gw-1"))
	f.db.AddUser(t, "agent1")
	st, err := store.New(ctx, f.db.DB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	edgeClose(t, st, "room2", "vtok-1", "")
	f.db.Exec(t, `UPDATE room_events SET id = 100 WHERE rid = 'room2'`)
	wb := rcsync.NewWriteback(f.db.DB, f.src, rcsync.WritebackConfig{MaxAttempts: 3, BackoffBase: time.Second, BackoffMax: time.Minute, Batch: 64}, f.obs)
	if err := wb.Run(ctx); err != nil {
		t.Fatal(err)
	}
	// room1's close got a lower id than room2's but commits only now.
	edgeClose(t, st, "room1", "vtok-1", "")
	f.db.Exec(t, `UPDATE room_events SET id = 50 WHERE rid = 'room1'`)
	if err := wb.Run(ctx); err != nil {
		t.Fatal(err)
	}
	f.wantRows(`SELECT rid, state FROM rocketchat_writeback ORDER BY event_id`, "room1|done", "room2|done")
}
