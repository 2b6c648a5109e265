package outbox

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// goldenBody is the delivery body of goldenEvent; goldenSignature is its
// signature under "test-webhook-secret" at goldenTime, computed apart from
// this code:
//
//	printf '%s' '1764579600.42.<goldenBody>' | openssl dgst -sha256 -hmac 'test-webhook-secret'
const (
	goldenBody      = `{"id":42,"type":"room.closed","rid":"GOLDEN","created_at":"2026-12-01T09:00:00.120Z","payload":{"n":1}}`
	goldenSignature = "t=1764579600,v1=03612e7300084e8910dbabde99a0a3f94aad57b1253d86c28f1102625007703c"
)

var (
	goldenEvent = Event{ID: 42, Rid: "GOLDEN", Type: "room.closed", Payload: json.RawMessage(`{"n": 1}`),
		CreatedAt: time.Date(2026, 12, 1, 9, 0, 0, 120e6, time.UTC)}
	goldenTime = time.Unix(1764579600, 0)
)

func TestSign(t *testing.T) {
	for _, c := range []struct {
		name, secret string
		at           time.Time
		id           int64
		body, want   string
	}{
		{"the golden delivery", "test-webhook-secret", goldenTime, 42, goldenBody, goldenSignature},
		// The id and the time are signed: another of either is another MAC.
		// printf '%s' '1764579600.43.<goldenBody>' | openssl dgst -sha256 -hmac 'test-webhook-secret'
		{"another delivery id", "test-webhook-secret", goldenTime, 43, goldenBody,
			"t=1764579600,v1=51249058f2a4ebe4cf8b56977a91519b65c9013919270af471c751ad68e46f43"},
		// printf '%s' '1764579900.42.<goldenBody>' | openssl dgst -sha256 -hmac 'test-webhook-secret'
		{"five minutes later, sub-second digits dropped", "test-webhook-secret", goldenTime.Add(5*time.Minute + 999*time.Millisecond), 42, goldenBody,
			"t=1764579900,v1=80a2b20c8d3f30230dd83e2ccf3e6c83e9f4fbb92a6e4e1333508475f4c752aa"},
		// printf '%s' '1764579600.7.' | openssl dgst -sha256 -hmac 'test-webhook-secret'
		{"an empty body", "test-webhook-secret", goldenTime, 7, "",
			"t=1764579600,v1=7e08c272e25265e7e9cd807bdb83ff92eacca0935b73c3eba1fa0910a93bf9d4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Sign([]byte(c.secret), c.at, c.id, []byte(c.body)); got != c.want {
				t.Fatalf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

// Encode writes the body the README documents: created_at in UTC with
// milliseconds and a Z, the payload compacted as it came.
func TestEncode(t *testing.T) {
	berlin := time.FixedZone("CET", 3600)
	for _, c := range []struct {
		name string
		e    Event
		want string
	}{
		{"the golden event", goldenEvent, goldenBody},
		{"a zone other than UTC is written in UTC",
			Event{ID: 1, Rid: "R", Type: "room.closed", Payload: json.RawMessage(`{}`), CreatedAt: time.Date(2026, 12, 1, 10, 0, 0, 0, berlin)},
			`{"id":1,"type":"room.closed","rid":"R","created_at":"2026-12-01T09:00:00.000Z","payload":{}}`},
		{"sub-millisecond digits are cut, not rounded",
			Event{ID: 2, Rid: "R", Type: "room.closed", Payload: json.RawMessage(`[1, 2]`), CreatedAt: time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC)},
			`{"id":2,"type":"room.closed","rid":"R","created_at":"2026-12-31T23:59:59.999Z","payload":[1,2]}`},
		{"a rid that needs escaping",
			Event{ID: 3, Rid: "a\"b<c", Type: "room.closed", Payload: json.RawMessage(`null`), CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)},
			`{"id":3,"type":"room.closed","rid":"a\"b\u003cc","created_at":"2026-01-02T03:04:05.006Z","payload":null}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := string(Encode(c.e)); got != c.want {
				t.Fatalf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

// backoff waits min(max, base·2^(n-1)) after the n-th failure, with jitter
// taking off up to half of it.
func TestBackoff(t *testing.T) {
	d := &Deliverer{cfg: Config{BackoffBase: 100 * time.Millisecond, BackoffMax: 1500 * time.Millisecond}}
	for _, c := range []struct {
		attempt int
		full    time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, 1500 * time.Millisecond}, // 1.6s capped
		{60, 1500 * time.Millisecond},
		{5000, 1500 * time.Millisecond}, // 2^4999 overflows to +Inf, still capped
	} {
		t.Run(fmt.Sprint("attempt ", c.attempt), func(t *testing.T) {
			lo, hi := c.full, time.Duration(0)
			for range 2000 {
				w := d.backoff(c.attempt)
				if w < c.full/2 || w > c.full {
					t.Fatalf("waited %v, want between %v and %v", w, c.full/2, c.full)
				}
				lo, hi = min(lo, w), max(hi, w)
			}
			// With 2000 draws the jitter covers most of its range; a constant
			// wait (no jitter) would not.
			if hi-lo < c.full/4 {
				t.Fatalf("waits spread over only %v..%v", lo, hi)
			}
		})
	}
}
