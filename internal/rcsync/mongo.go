// Package rcsync keeps the gateway's MySQL tables (docs/contract.md, "The
// MySQL schema") in step with a Rocket.Chat MongoDB, and writes the edge's
// closes back to it (docs/sync.md). The Mongo side is read with projections
// that name only the fields the gateway needs, so password hashes, TOTP and
// E2E secrets never leave MongoDB.
package rcsync

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// The Rocket.Chat collections the sync reads (packages/models: users has no
// rocketchat_ prefix).
const (
	CollUsers       = "users"
	CollPermissions = "rocketchat_permissions"
	CollVisitors    = "rocketchat_livechat_visitor"
	CollRooms       = "rocketchat_room"
	CollMessages    = "rocketchat_message"
)

// Collections are the followed collections, in the order a pass reads them.
var Collections = []string{CollPermissions, CollUsers, CollVisitors, CollRooms}

// projections name every field read from each collection, and nothing else:
// a field not listed here never reaches this process.
var projections = map[string]bson.D{
	CollUsers: {
		{Key: "_id", Value: 1}, {Key: "username", Value: 1}, {Key: "name", Value: 1}, {Key: "type", Value: 1},
		{Key: "active", Value: 1}, {Key: "roles", Value: 1}, {Key: "_updatedAt", Value: 1},
		{Key: "services.resume.loginTokens.hashedToken", Value: 1},
		{Key: "services.resume.loginTokens.when", Value: 1},
		{Key: "services.resume.loginTokens.type", Value: 1},
		{Key: "services.resume.loginTokens.createdAt", Value: 1},
		{Key: "services.resume.loginTokens.name", Value: 1},
	},
	CollPermissions: {{Key: "_id", Value: 1}, {Key: "roles", Value: 1}, {Key: "_updatedAt", Value: 1}},
	CollVisitors: {
		{Key: "_id", Value: 1}, {Key: "token", Value: 1}, {Key: "username", Value: 1}, {Key: "name", Value: 1},
		{Key: "_updatedAt", Value: 1},
	},
	CollRooms: {
		{Key: "_id", Value: 1}, {Key: "t", Value: 1}, {Key: "name", Value: 1}, {Key: "open", Value: 1}, {Key: "ts", Value: 1},
		{Key: "v._id", Value: 1}, {Key: "v.token", Value: 1}, {Key: "v.username", Value: 1}, {Key: "v.status", Value: 1},
		{Key: "servedBy._id", Value: 1}, {Key: "servedBy.username", Value: 1}, {Key: "queue", Value: 1},
		{Key: "direction", Value: 1}, {Key: "callUniqueId", Value: 1}, {Key: "msgs", Value: 1}, {Key: "lm", Value: 1},
		{Key: "lastMessage._id", Value: 1}, {Key: "tags", Value: 1}, {Key: "closedAt", Value: 1}, {Key: "closer", Value: 1},
		{Key: "closedBy._id", Value: 1}, {Key: "closedBy.username", Value: 1}, {Key: "callDuration", Value: 1},
		{Key: "callWaitingTime", Value: 1}, {Key: "callTotalHoldTime", Value: 1}, {Key: "_updatedAt", Value: 1},
	},
}

// scope is the filter that selects a collection's documents of interest:
// only VoIP rooms.
func scope(coll string) bson.D {
	if coll == CollRooms {
		return bson.D{{Key: "t", Value: "v"}}
	}
	return bson.D{}
}

// User is a Rocket.Chat user, as far as the gateway reads it.
type User struct {
	ID       string   `bson:"_id"`
	Username *string  `bson:"username"`
	Name     *string  `bson:"name"`
	Type     *string  `bson:"type"`
	Active   *bool    `bson:"active"`
	Roles    []string `bson:"roles"`
	Services struct {
		Resume struct {
			LoginTokens []LoginToken `bson:"loginTokens"`
		} `bson:"resume"`
	} `bson:"services"`
	UpdatedAt time.Time `bson:"_updatedAt"`
}

// LoginToken is an element of services.resume.loginTokens: a resume token
// ({hashedToken, when}) or a personal access token ({hashedToken,
// type: personalAccessToken, createdAt, name}).
type LoginToken struct {
	HashedToken string     `bson:"hashedToken"`
	When        *time.Time `bson:"when"`
	Type        string     `bson:"type"`
	CreatedAt   *time.Time `bson:"createdAt"`
	Name        *string    `bson:"name"`
}

// Permission is a rocketchat_permissions document.
type Permission struct {
	ID        string    `bson:"_id"`
	Roles     []string  `bson:"roles"`
	UpdatedAt time.Time `bson:"_updatedAt"`
}

// Visitor is a rocketchat_livechat_visitor document.
type Visitor struct {
	ID        string    `bson:"_id"`
	Token     string    `bson:"token"`
	Username  *string   `bson:"username"`
	Name      *string   `bson:"name"`
	UpdatedAt time.Time `bson:"_updatedAt"`
}

type idUsername struct {
	ID       *string `bson:"_id"`
	Username *string `bson:"username"`
}

// Room is a rocketchat_room document of type v.
type Room struct {
	ID   string    `bson:"_id"`
	T    string    `bson:"t"`
	Name *string   `bson:"name"`
	Open *bool     `bson:"open"` // a close $unsets it: absent is closed
	Ts   time.Time `bson:"ts"`
	V    *struct {
		ID       *string `bson:"_id"`
		Token    *string `bson:"token"`
		Username *string `bson:"username"`
		Status   *string `bson:"status"`
	} `bson:"v"`
	ServedBy     *idUsername   `bson:"servedBy"`
	Queue        *string       `bson:"queue"`
	Direction    *string       `bson:"direction"`
	CallUniqueID *string       `bson:"callUniqueId"`
	Msgs         bson.RawValue `bson:"msgs"`
	Lm           *time.Time    `bson:"lm"`
	LastMessage  *struct {
		ID *string `bson:"_id"`
	} `bson:"lastMessage"`
	Tags              []string      `bson:"tags"`
	ClosedAt          *time.Time    `bson:"closedAt"`
	Closer            *string       `bson:"closer"`
	ClosedBy          *idUsername   `bson:"closedBy"`
	CallDuration      bson.RawValue `bson:"callDuration"`
	CallWaitingTime   bson.RawValue `bson:"callWaitingTime"`
	CallTotalHoldTime bson.RawValue `bson:"callTotalHoldTime"`
	UpdatedAt         time.Time     `bson:"_updatedAt"`
}

// integer reads a BSON number as an integer: nil when absent, null, not a
// number, or NaN (Rocket.Chat's callWaitingTime without a PBX event).
func integer(v bson.RawValue) *int64 {
	var n int64
	switch v.Type {
	case bson.TypeInt32:
		n = int64(v.Int32())
	case bson.TypeInt64:
		n = v.Int64()
	case bson.TypeDouble:
		f := v.Double()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil
		}
		n = int64(math.Round(f))
	default:
		return nil
	}
	return &n
}

// Source reads a Rocket.Chat database.
type Source struct {
	client  *mongo.Client
	db      *mongo.Database
	timeout time.Duration // bounds each round trip (a find, each getMore)
}

// Connect opens a client for uri on database, each round trip bounded by
// timeout; extra options apply after those (tests add a command monitor).
// Connecting is lazy: a server that is away fails the first read, not this
// call.
func Connect(uri, database string, timeout time.Duration, extra ...*options.ClientOptions) (*Source, error) {
	if database == "" {
		return nil, errors.New("mongodb: no database named")
	}
	opts := options.Client().ApplyURI(uri).SetServerSelectionTimeout(timeout).SetConnectTimeout(timeout)
	client, err := mongo.Connect(append([]*options.ClientOptions{opts}, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("mongodb: %w", err)
	}
	return &Source{client: client, db: client.Database(database), timeout: timeout}, nil
}

// Close disconnects.
func (s *Source) Close(ctx context.Context) error { return s.client.Disconnect(ctx) }

// Database is the Rocket.Chat database (the write-back writes through it).
func (s *Source) Database() *mongo.Database { return s.db }

// Timeout is the bound of one round trip.
func (s *Source) Timeout() time.Duration { return s.timeout }

// Ping checks that the server answers.
func (s *Source) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.db.RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err()
}

// Page is a run of documents of one collection, in the order they were read,
// each decoded into its collection's type.
type Page struct {
	Coll  string
	Users []User
	Perms []Permission
	Vis   []Visitor
	Rooms []Room
	// Last is the position of the last document read: its _id, and its
	// _updatedAt for an incremental read.
	LastID      string
	LastUpdated time.Time
	Len         int
}

// ScanByID reads coll's documents of interest with _id greater than after,
// in _id order, handing them to fn a page of up to batch at a time (a full
// pass, resumable after any page fn returned from).
func (s *Source) ScanByID(ctx context.Context, coll, after string, batch int, fn func(*Page) error) error {
	filter := scope(coll)
	if after != "" {
		filter = append(filter, bson.E{Key: "_id", Value: bson.D{{Key: "$gt", Value: after}}})
	}
	opts := options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetBatchSize(int32(batch)).SetProjection(projections[coll])
	return s.scan(ctx, coll, filter, opts, batch, fn)
}

// Cursor is where the incremental read of one collection stands: the last
// document applied, by (_updatedAt, _id).
type Cursor struct {
	Updated time.Time `json:"t"`
	ID      string    `json:"id"`
}

// ChangedAfter reads coll's documents whose (_updatedAt, _id) comes after c,
// in that order, handing them to fn a page at a time.
func (s *Source) ChangedAfter(ctx context.Context, coll string, c Cursor, batch int, fn func(*Page) error) error {
	filter := append(scope(coll), bson.E{Key: "$or", Value: bson.A{
		bson.D{{Key: "_updatedAt", Value: bson.D{{Key: "$gt", Value: c.Updated}}}},
		bson.D{{Key: "_updatedAt", Value: c.Updated}, {Key: "_id", Value: bson.D{{Key: "$gt", Value: c.ID}}}},
	}})
	opts := options.Find().SetSort(bson.D{{Key: "_updatedAt", Value: 1}, {Key: "_id", Value: 1}}).
		SetBatchSize(int32(batch)).SetProjection(projections[coll])
	return s.scan(ctx, coll, filter, opts, batch, fn)
}

// scan runs one find and pages its cursor: one query per pass over a
// collection, each round trip bounded by the source's timeout.
func (s *Source) scan(ctx context.Context, coll string, filter bson.D, opts *options.FindOptionsBuilder, batch int, fn func(*Page) error) error {
	fctx, cancel := context.WithTimeout(ctx, s.timeout)
	cur, err := s.db.Collection(coll).Find(fctx, filter, opts)
	cancel()
	if err != nil {
		return fmt.Errorf("mongodb: reading %s: %w", coll, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	p := &Page{Coll: coll}
	lastID := ""
	for {
		nctx, cancel := context.WithTimeout(ctx, s.timeout)
		more := cur.Next(nctx)
		cancel()
		if !more {
			break
		}
		var id string
		var updated time.Time
		var derr error
		switch coll {
		case CollUsers:
			var d User
			derr = cur.Decode(&d)
			id, updated = d.ID, d.UpdatedAt
			p.Users = append(p.Users, d)
		case CollPermissions:
			var d Permission
			derr = cur.Decode(&d)
			id, updated = d.ID, d.UpdatedAt
			p.Perms = append(p.Perms, d)
		case CollVisitors:
			var d Visitor
			derr = cur.Decode(&d)
			id, updated = d.ID, d.UpdatedAt
			p.Vis = append(p.Vis, d)
		case CollRooms:
			var d Room
			derr = cur.Decode(&d)
			id, updated = d.ID, d.UpdatedAt
			p.Rooms = append(p.Rooms, d)
		}
		if derr != nil {
			// The document's content is not in the error: only where it is.
			return fmt.Errorf("mongodb: decoding a document of %s after _id %q: %w", coll, lastID, derr)
		}
		p.LastID, p.LastUpdated, lastID = id, updated, id
		p.Len++
		if p.Len == batch {
			if err := fn(p); err != nil {
				return err
			}
			p = &Page{Coll: coll}
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("mongodb: reading %s: %w", coll, err)
	}
	if p.Len > 0 {
		return fn(p)
	}
	return nil
}

// IDs reads every _id of coll's documents of interest (for the sweep of
// hard deletes), projecting nothing else.
func (s *Source) IDs(ctx context.Context, coll string) (map[string]struct{}, error) {
	opts := options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}).SetBatchSize(10000)
	fctx, cancel := context.WithTimeout(ctx, s.timeout)
	cur, err := s.db.Collection(coll).Find(fctx, scope(coll), opts)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("mongodb: reading the ids of %s: %w", coll, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	ids := map[string]struct{}{}
	for {
		nctx, cancel := context.WithTimeout(ctx, s.timeout)
		more := cur.Next(nctx)
		cancel()
		if !more {
			break
		}
		var d struct {
			ID bson.RawValue `bson:"_id"`
		}
		if err := cur.Decode(&d); err != nil {
			return nil, fmt.Errorf("mongodb: reading the ids of %s: %w", coll, err)
		}
		if id, ok := d.ID.StringValueOK(); ok {
			ids[id] = struct{}{}
		}
	}
	return ids, cur.Err()
}
