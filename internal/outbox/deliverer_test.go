package outbox

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// goldenBody is the delivery body of goldenEvent, and goldenSignature its
// signature under "test-webhook-secret", computed apart from this code:
//
//	printf '%s' '<goldenBody>' | openssl dgst -sha256 -hmac 'test-webhook-secret'
const (
	goldenBody      = `{"id":42,"type":"room.closed","rid":"GOLDEN","created_at":"2026-12-01T09:00:00.120Z","payload":{"n":1}}`
	goldenSignature = "sha256=bba5a9cbffd4f9ce092c93e4e7ac2370bc7786ceb1c83321c51d28e5bf4935b4"
)

var goldenEvent = Event{ID: 42, Rid: "GOLDEN", Type: "room.closed", Payload: json.RawMessage(`{"n": 1}`),
	CreatedAt: time.Date(2026, 12, 1, 9, 0, 0, 120e6, time.UTC)}

func TestSign(t *testing.T) {
	for _, c := range []struct {
		name, secret, body, want string
	}{
		{"the golden body", "test-webhook-secret", goldenBody, goldenSignature},
		// printf '' | openssl dgst -sha256 -hmac 'test-webhook-secret'
		{"an empty body", "test-webhook-secret", "", "sha256=5ba515637937b8b5e10c5afe6ce35393b8cdc623dd2e34987b4b95b67ff96249"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Sign([]byte(c.secret), []byte(c.body)); got != c.want {
				t.Fatalf("got %s, want %s", got, c.want)
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
