package testferret

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

// Rocket.Chat-shaped documents, built from the field map of docs/sync.md:
// every field the sync must not read (password hash, TOTP and E2E secrets,
// a PAT's last characters) is present, with a marker a test can look for
// anywhere it must not be.

// SecretMarker is in every secret the documents hold.
const SecretMarker = "SECRET-MUST-NOT-LEAVE-MONGO"

// MS is t in UTC at MongoDB's precision (milliseconds).
func MS(t time.Time) time.Time { return t.UTC().Truncate(time.Millisecond) }

// ResumeToken is a loginTokens element as Meteor writes it.
func ResumeToken(plain string, when time.Time) bson.D {
	return bson.D{{Key: "when", Value: MS(when)}, {Key: "hashedToken", Value: store.HashLoginToken(plain)}}
}

// PATToken is a personal access token as Rocket.Chat's
// addPersonalAccessTokenToUser writes it.
func PATToken(plain, name string, created time.Time) bson.D {
	return bson.D{
		{Key: "hashedToken", Value: store.HashLoginToken(plain)}, {Key: "type", Value: "personalAccessToken"},
		{Key: "createdAt", Value: MS(created)}, {Key: "lastTokenPart", Value: SecretMarker + "-pat"},
		{Key: "name", Value: name}, {Key: "bypassTwoFactor", Value: false},
	}
}

// User is a users document as Rocket.Chat keeps it.
func User(id, username string, roles []string, updated time.Time, tokens ...bson.D) bson.D {
	lt := bson.A{}
	for _, t := range tokens {
		lt = append(lt, t)
	}
	return bson.D{
		{Key: "_id", Value: id}, {Key: "createdAt", Value: MS(updated.Add(-time.Hour))},
		{Key: "services", Value: bson.D{
			{Key: "password", Value: bson.D{{Key: "bcrypt", Value: "$2b$10$" + SecretMarker + "-bcrypt"}}},
			{Key: "totp", Value: bson.D{{Key: "enabled", Value: true}, {Key: "secret", Value: SecretMarker + "-totp"},
				{Key: "hashedBackup", Value: bson.A{SecretMarker + "-backup"}}}},
			{Key: "email2fa", Value: bson.D{{Key: "enabled", Value: true}}},
			{Key: "resume", Value: bson.D{{Key: "loginTokens", Value: lt}}},
		}},
		{Key: "emails", Value: bson.A{bson.D{{Key: "address", Value: username + "@example.com"}, {Key: "verified", Value: true}}}},
		{Key: "type", Value: "user"}, {Key: "status", Value: "online"}, {Key: "active", Value: true},
		{Key: "name", Value: "Agent " + username}, {Key: "username", Value: username},
		{Key: "roles", Value: toA(roles)}, {Key: "statusConnection", Value: "online"},
		{Key: "e2e", Value: bson.D{{Key: "private_key", Value: SecretMarker + "-e2e"}, {Key: "public_key", Value: "pub"}}},
		{Key: "lastLogin", Value: MS(updated)}, {Key: "_updatedAt", Value: MS(updated)},
	}
}

func toA(xs []string) bson.A {
	a := bson.A{}
	for _, x := range xs {
		a = append(a, x)
	}
	return a
}

// Permission is a rocketchat_permissions document.
func Permission(id string, updated time.Time, roles ...string) bson.D {
	return bson.D{{Key: "_id", Value: id}, {Key: "roles", Value: toA(roles)}, {Key: "_updatedAt", Value: MS(updated)}}
}

// Visitor is a rocketchat_livechat_visitor document.
func Visitor(id, token string, updated time.Time) bson.D {
	return bson.D{
		{Key: "_id", Value: id}, {Key: "token", Value: token}, {Key: "username", Value: "guest-" + id},
		{Key: "name", Value: "Visitor " + id}, {Key: "ts", Value: MS(updated)}, {Key: "_updatedAt", Value: MS(updated)},
		{Key: "phone", Value: bson.A{bson.D{{Key: "phoneNumber", Value: "+15550000"}}}},
	}
}

// Room is a VoIP room as LivechatVoip's createRoom writes it (open).
func Room(id, visitorID, visitorToken, agentID, agentUsername string, ts time.Time) bson.D {
	return bson.D{
		{Key: "_id", Value: id}, {Key: "fname", Value: "guest-" + visitorID}, {Key: "name", Value: "guest-" + visitorID},
		{Key: "msgs", Value: int32(0)}, {Key: "usersCount", Value: int32(1)}, {Key: "lm", Value: MS(ts)},
		{Key: "t", Value: "v"}, {Key: "ts", Value: MS(ts)},
		{Key: "v", Value: bson.D{{Key: "_id", Value: visitorID}, {Key: "token", Value: visitorToken},
			{Key: "username", Value: "guest-" + visitorID}, {Key: "status", Value: "online"}}},
		{Key: "servedBy", Value: bson.D{{Key: "_id", Value: agentID}, {Key: "username", Value: agentUsername}, {Key: "ts", Value: MS(ts)}}},
		{Key: "cl", Value: false}, {Key: "open", Value: true}, {Key: "waitingResponse", Value: true},
		{Key: "queue", Value: "q1"}, {Key: "callUniqueId", Value: "call-" + id}, {Key: "direction", Value: "inbound"},
		{Key: "callStarted", Value: MS(ts)}, {Key: "_updatedAt", Value: MS(ts)},
	}
}

// CloseRoom closes a room as Rocket.Chat's LivechatVoip.closeRoom does:
// the wrap-up message, the room's last message, then closeByRoomId (which
// $unsets open), each write bumping _updatedAt.
func CloseRoom(t testing.TB, db *mongo.Database, rid, agentID, agentUsername string, at time.Time) {
	t.Helper()
	ctx := context.Background()
	msg := bson.D{
		{Key: "_id", Value: "rcmsg-" + rid}, {Key: "t", Value: "voip-call-ended-unexpectedly"}, {Key: "msg", Value: "Agent disconnected abruptly"},
		{Key: "groupable", Value: false}, {Key: "ts", Value: MS(at)}, {Key: "u", Value: bson.D{{Key: "_id", Value: agentID}, {Key: "username", Value: agentUsername}}},
		{Key: "rid", Value: rid}, {Key: "_updatedAt", Value: MS(at)},
	}
	if _, err := db.Collection("rocketchat_message").InsertOne(ctx, msg); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Collection("rocketchat_room").UpdateOne(ctx, bson.D{{Key: "_id", Value: rid}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "lm", Value: MS(at)}, {Key: "lastMessage", Value: msg}, {Key: "_updatedAt", Value: MS(at)}}},
			{Key: "$inc", Value: bson.D{{Key: "msgs", Value: 1}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Collection("rocketchat_room").UpdateOne(ctx, bson.D{{Key: "_id", Value: rid}, {Key: "t", Value: "v"}},
		bson.D{{Key: "$set", Value: bson.D{
			{Key: "closer", Value: "user"}, {Key: "closedBy", Value: bson.D{{Key: "_id", Value: agentID}, {Key: "username", Value: agentUsername}}},
			{Key: "closedAt", Value: MS(at)}, {Key: "callDuration", Value: int64(61000)}, {Key: "metrics.serviceTimeDuration", Value: int32(61)},
			{Key: "v.status", Value: "offline"}, {Key: "_updatedAt", Value: MS(at)},
		}}, {Key: "$unset", Value: bson.D{{Key: "open", Value: 1}}}}); err != nil {
		t.Fatal(err)
	}
}

// InsertAll inserts docs a thousand at a time.
func InsertAll(t testing.TB, coll *mongo.Collection, docs []any) {
	t.Helper()
	for len(docs) > 0 {
		n := min(len(docs), 1000)
		if _, err := coll.InsertMany(context.Background(), docs[:n]); err != nil {
			t.Fatalf("inserting into %s: %v", coll.Name(), err)
		}
		docs = docs[n:]
	}
}

// UserID is the id of the i-th generated user.
func UserID(i int) string { return fmt.Sprintf("u%016d", i) }
