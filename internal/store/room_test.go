package store

import (
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"
)

// decodeRoom turns the read's JSON row (token, visitor id, username, room
// id, open, ts, call id, events) into the room or the contract's outcome.
func TestDecodeRoom(t *testing.T) {
	const token = "VISITOR-SECRET-TOKEN-7f3a"
	row := func(cols ...string) []byte { return []byte("[" + strings.Join(cols, ",") + "]") }
	good := func(mod func([]string)) []byte {
		cols := []string{`"` + token + `"`, `"V1"`, `"visitor.one"`, `"ROOM1"`, `1`, `"2026-12-01 09:00:00.123456"`, `"CALL1"`, `[["Hold",null,"2026-12-01 09:00:01.000000","p1"]]`}
		if mod != nil {
			mod(cols)
		}
		return row(cols...)
	}
	ts := time.Date(2026, 12, 1, 9, 0, 0, 123456000, time.UTC)

	cases := []struct {
		name    string
		raw     []byte
		rid     string // default ROOM1
		token   string // default token
		want    room
		wantErr error // nil and errText "": success
		errText string
	}{
		{name: "open room", raw: good(nil), want: room{
			visitorID: sql.NullString{String: "V1", Valid: true}, visitorUsername: sql.NullString{String: "visitor.one", Valid: true},
			callUniqueID: sql.NullString{String: "CALL1", Valid: true}, ts: ts,
			pbxEvents: []byte(`[["Hold",null,"2026-12-01 09:00:01.000000","p1"]]`)}},
		{name: "open as JSON true (MySQL)", raw: good(func(c []string) { c[4] = "true" }), want: room{
			visitorID: sql.NullString{String: "V1", Valid: true}, visitorUsername: sql.NullString{String: "visitor.one", Valid: true},
			callUniqueID: sql.NullString{String: "CALL1", Valid: true}, ts: ts,
			pbxEvents: []byte(`[["Hold",null,"2026-12-01 09:00:01.000000","p1"]]`)}},
		{name: "no username, call id or events", raw: good(func(c []string) { c[2], c[6], c[7] = "null", "null", "null" }), want: room{
			visitorID: sql.NullString{String: "V1", Valid: true}, ts: ts}},
		{name: "no visitor has the token (NULL row)", raw: nil, wantErr: ErrInvalidToken},
		{name: "the row's token has a trailing space", raw: good(func(c []string) { c[0] = `"` + token + ` "` }), wantErr: ErrInvalidToken},
		{name: "asked with a trailing space in the token", raw: good(nil), token: token + " ", wantErr: ErrInvalidToken},
		{name: "the token differs in case", raw: good(func(c []string) { c[0] = `"` + strings.ToLower(token) + `"` }), wantErr: ErrInvalidToken},
		{name: "a NULL token", raw: good(func(c []string) { c[0] = "null" }), wantErr: ErrInvalidToken},
		{name: "no room of the visitor has the id", raw: good(func(c []string) { c[3], c[4], c[5], c[6], c[7] = "null", "null", "null", "null", "null" }), wantErr: ErrInvalidRoom},
		{name: "the room id has a trailing space", raw: good(func(c []string) { c[3] = `"ROOM1 "` }), wantErr: ErrInvalidRoom},
		{name: "the room id differs in case", raw: good(func(c []string) { c[3] = `"room1"` }), wantErr: ErrInvalidRoom},
		{name: "an empty rid", raw: good(func(c []string) { c[3] = `""` }), rid: "-", wantErr: ErrInvalidRoom},
		{name: "closed room", raw: good(func(c []string) { c[4] = "0" }), wantErr: ErrRoomClosed},
		{name: "closed room (JSON false)", raw: good(func(c []string) { c[4] = "false" }), wantErr: ErrRoomClosed},
		{name: "open is NULL", raw: good(func(c []string) { c[4] = "null" }), wantErr: ErrRoomClosed},
		{name: "not a JSON array", raw: []byte(`{"token":"` + token + `"}`), errText: "reading the room: the row is not a JSON array: "},
		{name: "cut short", raw: good(nil)[:40], errText: "reading the room: the row is not a JSON array: "},
		{name: "seven values", raw: row(`"`+token+`"`, `"V1"`, `null`, `"ROOM1"`, `1`, `"2026-12-01 09:00:00.123456"`, `null`), errText: "reading the room: the row has 7 values, not 8"},
		{name: "nine values", raw: good(func(c []string) { c[7] = "null,null" }), errText: "reading the room: the row has 9 values, not 8"},
		{name: "an unreadable creation time", raw: good(func(c []string) { c[5] = `"2026-12-01T09:00:00Z"` }), errText: "reading the room's creation time: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rid, tok := "ROOM1", token
			if c.rid == "-" {
				rid = ""
			} else if c.rid != "" {
				rid = c.rid
			}
			if c.token != "" {
				tok = c.token
			}
			got, err := decodeRoom(c.raw, rid, tok)
			switch {
			case c.wantErr != nil:
				if err != c.wantErr { // the outcome itself, not wrapped
					t.Fatalf("got %v, want %v", err, c.wantErr)
				}
			case c.errText != "":
				if err == nil || !strings.HasPrefix(err.Error(), c.errText) {
					t.Fatalf("got %v, want an error starting %q", err, c.errText)
				}
				for _, o := range []error{ErrInvalidToken, ErrInvalidRoom, ErrRoomClosed} {
					if errors.Is(err, o) {
						t.Fatalf("a broken row reads as the outcome %v", o)
					}
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if got.visitorID != c.want.visitorID || got.visitorUsername != c.want.visitorUsername ||
					got.callUniqueID != c.want.callUniqueID || !got.ts.Equal(c.want.ts) || string(got.pbxEvents) != string(c.want.pbxEvents) {
					t.Fatalf("got %+v\nwant %+v", got, c.want)
				}
			}
			// The row holds the visitor's token: no error may quote it.
			if err != nil && strings.Contains(strings.ToLower(err.Error()), strings.ToLower(token)) {
				t.Fatalf("the error shows the visitor token: %v", err)
			}
		})
	}
}

// callMetrics is Rocket.Chat's callWaitingTime and callTotalHoldTime.
func TestCallMetrics(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	call := sql.NullString{String: "CALL1", Valid: true}
	at := func(d time.Duration) string { return now.Add(d).Format(dbTimeLayout) }
	ev := func(event, holdTime, ts, id string) string {
		q := func(s string) string {
			if s == "null" {
				return s
			}
			return `"` + s + `"`
		}
		return "[" + q(event) + "," + q(holdTime) + "," + q(ts) + "," + q(id) + "]"
	}
	events := func(e ...string) []byte { return []byte("[" + strings.Join(e, ",") + "]") }
	ms := func(n int64) sql.NullInt64 { return sql.NullInt64{Int64: n, Valid: true} }
	none := sql.NullInt64{}

	cases := []struct {
		name        string
		call        sql.NullString
		events      []byte
		wantWaiting sql.NullInt64
		wantHold    int64
		errText     string
	}{
		{name: "no call id", call: sql.NullString{}, events: events(ev("AgentConnect", "5", at(-time.Minute), "a")), wantWaiting: none},
		{name: "an empty call id", call: sql.NullString{Valid: true}, events: events(ev("AgentConnect", "5", at(-time.Minute), "a")), wantWaiting: none},
		{name: "no events (NULL)", call: call, events: nil, wantWaiting: none},
		{name: "AgentConnect's hold time in ms, rounded", call: call,
			events: events(ev("AgentConnect", "12.3456", at(-time.Minute), "a")), wantWaiting: ms(12346)},
		{name: "only the first AgentConnect in time order counts", call: call,
			events: events(ev("AgentConnect", "9", at(-30*time.Second), "a"), ev("AgentConnect", "4", at(-50*time.Second), "b")), wantWaiting: ms(4000)},
		{name: "AgentConnects at the same time: ordered by id, as bytes", call: call,
			events: events(ev("AgentConnect", "1", at(-time.Minute), "a"), ev("AgentConnect", "2", at(-time.Minute), "B")), wantWaiting: ms(2000)},
		{name: "a first AgentConnect without hold time: none, and later ones do not count", call: call,
			events: events(ev("AgentConnect", "null", at(-50*time.Second), "a"), ev("AgentConnect", "4", at(-40*time.Second), "b")), wantWaiting: none},
		{name: "a hold time that is not a number", call: call,
			events: events(ev("AgentConnect", "soon", at(-time.Minute), "a")), wantWaiting: none},
		{name: "an infinite hold time", call: call,
			events: events(ev("AgentConnect", "Inf", at(-time.Minute), "a")), wantWaiting: none},
		{name: "a hold time of NaN", call: call,
			events: events(ev("AgentConnect", "NaN", at(-time.Minute), "a")), wantWaiting: none},
		{name: "Hold/Unhold pairs summed", call: call,
			events: events(ev("Hold", "null", at(-50*time.Second), "h1"), ev("Unhold", "null", at(-48*time.Second), "u1"),
				ev("Hold", "null", at(-30*time.Second), "h2"), ev("Unhold", "null", at(-29500*time.Millisecond), "u2")),
			wantWaiting: none, wantHold: 2500},
		{name: "pairs taken in time order, whatever the array's order", call: call,
			events: events(ev("Unhold", "null", at(-29500*time.Millisecond), "u2"), ev("Hold", "null", at(-30*time.Second), "h2"),
				ev("Unhold", "null", at(-48*time.Second), "u1"), ev("Hold", "null", at(-50*time.Second), "h1")),
			wantWaiting: none, wantHold: 2500},
		{name: "a trailing Hold counts until now", call: call,
			events:      events(ev("Hold", "null", at(-10*time.Second), "h1"), ev("Unhold", "null", at(-8*time.Second), "u1"), ev("Hold", "null", at(-4*time.Second), "h2")),
			wantWaiting: none, wantHold: 6000},
		{name: "paired by position, not by name (two Holds in a row)", call: call,
			events:      events(ev("Hold", "null", at(-10*time.Second), "h1"), ev("Hold", "null", at(-7*time.Second), "h2")),
			wantWaiting: none, wantHold: 3000},
		{name: "waiting and hold together", call: call,
			events:      events(ev("AgentConnect", "3.5", at(-time.Minute), "a"), ev("Hold", "null", at(-20*time.Second), "h"), ev("Unhold", "null", at(-19*time.Second), "u")),
			wantWaiting: ms(3500), wantHold: 1000},
		{name: "an empty array", call: call, events: []byte(`[]`), wantWaiting: none},
		{name: "a NULL event name", call: call, events: events(ev("null", "1", at(0), "a")), errText: "reading PBX events: a NULL where none can be"},
		{name: "a NULL time", call: call, events: events(ev("Hold", "1", "null", "a")), errText: "reading PBX events: a NULL where none can be"},
		{name: "a NULL id", call: call, events: events(ev("Hold", "1", at(0), "null")), errText: "reading PBX events: a NULL where none can be"},
		{name: "not JSON", call: call, events: []byte(`[[`), errText: "reading PBX events: "},
		{name: "an unreadable Hold time", call: call, events: events(ev("Hold", "null", "yesterday", "a")), errText: "reading PBX events: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			waiting, hold, err := callMetrics(c.call, c.events, now)
			if c.errText != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.errText) {
					t.Fatalf("got %v, want an error starting %q", err, c.errText)
				}
				return
			}
			if err != nil || waiting != c.wantWaiting || hold != c.wantHold {
				t.Fatalf("got waiting %+v, hold %d, err %v; want %+v, %d", waiting, hold, err, c.wantWaiting, c.wantHold)
			}
		})
	}
}
