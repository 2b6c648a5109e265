package store

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"
)

// The outcomes of a close that are not a success, in the contract's order.
var (
	ErrInvalidToken = errors.New("invalid-token") // no visitor has the token
	ErrInvalidRoom  = errors.New("invalid-room")  // no voip room of that visitor has the id
	ErrRoomClosed   = errors.New("room-closed")   // the room is not open, or another request closed it first
)

// Message types of the wrap-up message.
const (
	MessageTypeWrapup = "voip-call-wrapup"
	MessageTypeEnded  = "voip-call-ended"
)

// Found is what a close reads before its transaction: the visitor, the
// room and the call's PBX events, as the database returned them (a JSON
// array, NULL when no visitor has the token).
type Found struct{ raw []byte }

func (f *Found) scanTargets() []any { return []any{&f.raw} }

// room is the open voip room a close is about to close.
type room struct {
	visitorID, visitorUsername sql.NullString
	callUniqueID               sql.NullString
	ts                         time.Time
	pbxEvents                  json.RawMessage
}

// dbTimeLayout is how the read formats DATETIME(6) values inside JSON.
const dbTimeLayout = "2006-01-02 15:04:05.000000"

// decodeRoom returns the visitor's open voip room named by rid from what
// the read found, or one of the Err* outcomes. Its errors never quote the
// row: the row holds the visitor's token.
func decodeRoom(raw []byte, rid, visitorToken string) (room, error) {
	if len(raw) == 0 {
		return room{}, ErrInvalidToken
	}
	var cols []json.RawMessage // token, visitor id, username, room id, open, ts, call id, events
	if err := json.Unmarshal(raw, &cols); err != nil {
		return room{}, fmt.Errorf("reading the room: the row is not a JSON array: %w", err)
	}
	if len(cols) != 8 {
		return room{}, fmt.Errorf("reading the room: the row has %d values, not 8", len(cols))
	}
	str := func(b json.RawMessage) (v sql.NullString) {
		json.Unmarshal(b, &v.String) //nolint:errcheck // null stays invalid
		v.Valid = string(b) != "null"
		return v
	}
	// The collation pads spaces; ids and tokens must match byte for byte.
	if token := str(cols[0]); !token.Valid || token.String != visitorToken {
		return room{}, ErrInvalidToken
	}
	if id := str(cols[3]); !id.Valid || id.String != rid || rid == "" {
		return room{}, ErrInvalidRoom
	}
	if open := string(cols[4]); open != "1" && open != "true" {
		return room{}, ErrRoomClosed
	}
	ts, err := time.ParseInLocation(dbTimeLayout, str(cols[5]).String, time.UTC)
	if err != nil {
		return room{}, fmt.Errorf("reading the room's creation time: %w", err)
	}
	r := room{visitorID: str(cols[1]), visitorUsername: str(cols[2]), callUniqueID: str(cols[6]), ts: ts}
	if string(cols[7]) != "null" {
		r.pbxEvents = cols[7]
	}
	return r, nil
}

// callMetrics computes callWaitingTime and callTotalHoldTime the way
// Rocket.Chat does: the first AgentConnect event's hold time in ms, and the
// sum of Hold/Unhold pairs taken in time order, a trailing Hold counting
// until now.
func callMetrics(callUniqueID sql.NullString, pbxEvents []byte, now time.Time) (waiting sql.NullInt64, hold int64, err error) {
	if !callUniqueID.Valid || callUniqueID.String == "" || len(pbxEvents) == 0 {
		return waiting, 0, nil
	}
	var events [][4]*string // event, hold_time, ts, id
	if err := json.Unmarshal(pbxEvents, &events); err != nil {
		return waiting, 0, fmt.Errorf("reading PBX events: %w", err)
	}
	for _, e := range events {
		if e[0] == nil || e[2] == nil || e[3] == nil {
			return waiting, 0, errors.New("reading PBX events: a NULL where none can be")
		}
	}
	// ORDER BY ts, id: the timestamps are fixed-width text, ids compare as
	// bytes (utf8mb4_bin).
	sort.Slice(events, func(i, j int) bool {
		if *events[i][2] != *events[j][2] {
			return *events[i][2] < *events[j][2]
		}
		return *events[i][3] < *events[j][3]
	})
	var holds []time.Time
	seenConnect := false
	for _, e := range events {
		switch *e[0] {
		case "AgentConnect":
			if !seenConnect && e[1] != nil {
				if secs, err := strconv.ParseFloat(*e[1], 64); err == nil && !math.IsInf(secs, 0) && !math.IsNaN(secs) {
					waiting = sql.NullInt64{Int64: int64(math.Round(secs * 1000)), Valid: true}
				}
			}
			seenConnect = true
		default: // Hold or Unhold, paired by position as Rocket.Chat pairs them
			ts, err := time.ParseInLocation(dbTimeLayout, *e[2], time.UTC)
			if err != nil {
				return waiting, 0, fmt.Errorf("reading PBX events: %w", err)
			}
			holds = append(holds, ts)
		}
	}
	for i := 0; i < len(holds); i += 2 {
		end := now
		if i+1 < len(holds) {
			end = holds[i+1]
		}
		hold += end.Sub(holds[i]).Milliseconds()
	}
	return waiting, hold, nil
}

type idName struct {
	ID       string `json:"_id"`
	Username string `json:"username,omitempty"`
}

// closedEvent is the payload of the room.closed outbox row.
type closedEvent struct {
	Rid          string   `json:"rid"`
	Closer       string   `json:"closer"`
	ClosedBy     idName   `json:"closedBy"`
	Agent        idName   `json:"agent"`
	ClosedAt     string   `json:"closedAt"`
	CallDuration int64    `json:"callDuration"`
	MessageID    string   `json:"messageId"`
	MessageType  string   `json:"messageType"`
	Tags         []string `json:"tags,omitempty"`
}
