package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A delivery as the outbox sends it, with the signature computed apart
// from any code here:
//
//	printf '%s' '1764579600.42.<body>' | openssl dgst -sha256 -hmac 'test-webhook-secret'
const (
	secret    = "test-webhook-secret"
	body      = `{"id":42,"type":"room.closed","rid":"GOLDEN","created_at":"2026-12-01T09:00:00.120Z","payload":{"n":1}}`
	signature = "t=1764579600,v1=03612e7300084e8910dbabde99a0a3f94aad57b1253d86c28f1102625007703c"
)

var signedAt = time.Unix(1764579600, 0)

func post(t *testing.T, rc *receiver, id, sig, b string) int {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/hooks/voip", strings.NewReader(b))
	req.Header.Set("X-RocketChat-Voip-Delivery", id)
	req.Header.Set("X-RocketChat-Voip-Signature", sig)
	w := httptest.NewRecorder()
	rc.ServeHTTP(w, req)
	return w.Code
}

func TestReceiver(t *testing.T) {
	now := signedAt.Add(30 * time.Second)
	var handled []string
	rc := &receiver{secret: []byte(secret), now: func() time.Time { return now }, seen: map[string]bool{},
		handle: func(id string, _ []byte) { handled = append(handled, id) }}
	for _, c := range []struct {
		name, id, sig, body string
		want                int
	}{
		{"the delivery", "42", signature, body, http.StatusNoContent},
		{"the same delivery again (a retry): answered, not handled twice", "42", signature, body, http.StatusNoContent},
		{"replayed under another delivery id", "43", signature, body, http.StatusUnauthorized},
		{"another body", "42", signature, strings.Replace(body, "GOLDEN", "OTHER", 1), http.StatusUnauthorized},
		{"another time", "42", strings.Replace(signature, "t=1764579600", "t=1764579601", 1), body, http.StatusUnauthorized},
		{"the old body-only scheme", "42", "sha256=bba5a9cbffd4f9ce092c93e4e7ac2370bc7786ceb1c83321c51d28e5bf4935b4", body, http.StatusUnauthorized},
		{"no signature", "42", "", body, http.StatusUnauthorized},
	} {
		if got := post(t, rc, c.id, c.sig, c.body); got != c.want {
			t.Errorf("%s: answered %d, want %d", c.name, got, c.want)
		}
	}
	if len(handled) != 1 || handled[0] != "42" {
		t.Errorf("handled %v, want [42] once", handled)
	}
	// The same capture, kept past the window: refused as stale.
	now = signedAt.Add(Window + time.Second)
	rc.seen = map[string]bool{}
	if got := post(t, rc, "42", signature, body); got != http.StatusUnauthorized {
		t.Errorf("a stale delivery: answered %d, want 401", got)
	}
	if err := Verify([]byte(secret), signature, "42", []byte(body), signedAt.Add(-Window-time.Second)); err != errStale {
		t.Errorf("a delivery signed in the future: %v, want errStale", err)
	}
}
