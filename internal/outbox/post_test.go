package outbox

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A 3xx is a failed attempt, whatever it points at: the redirect's target
// is never asked, and the error names the status and the Location without
// its query string.
func TestPostDoesNotFollowRedirects(t *testing.T) {
	var targetHit atomic.Bool
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { targetHit.Store(true) }))
	defer target.Close()
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/stop?token=LOCATION-SECRET", status)
			}))
			defer recv.Close()
			d := NewDeliverer(nil, Config{URL: recv.URL + "/hook", Secret: []byte("s"), Timeout: 5 * time.Second}, nil)
			err := d.post(context.Background(), goldenEvent)
			if err == nil {
				t.Fatal("a redirect counted as delivered")
			}
			wantMsg := "(Location " + target.URL + "/stop); redirects are not followed"
			if !strings.Contains(err.Error(), wantMsg) || !strings.HasPrefix(err.Error(), "the receiver answered "+strconv.Itoa(status)+" ") {
				t.Fatalf("got %q, want the status and %q", err, wantMsg)
			}
			if strings.Contains(err.Error(), "LOCATION-SECRET") {
				t.Fatalf("the Location's query is in the error: %v", err)
			}
		})
	}
	if targetHit.Load() {
		t.Fatal("the redirect's target was asked")
	}
}

// A transport error names the webhook URL without its query string (nor
// a password): the error goes to the warn log and room_events.last_error.
func TestPostRedactsTheURL(t *testing.T) {
	gone := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	url := strings.Replace(gone.URL, "http://", "http://hook:URL-PASSWORD@", 1) + "/hook?apikey=QUERY-SECRET#frag"
	gone.Close() // refused from now on
	d := NewDeliverer(nil, Config{URL: url, Secret: []byte("s"), Timeout: 5 * time.Second}, nil)
	err := d.post(context.Background(), goldenEvent)
	if err == nil {
		t.Fatal("a closed port took the delivery")
	}
	if msg := err.Error(); strings.Contains(msg, "QUERY-SECRET") || strings.Contains(msg, "URL-PASSWORD") || strings.Contains(msg, "frag") ||
		!strings.Contains(msg, `"http://hook:xxxxx@`+strings.TrimPrefix(gone.URL, "http://")+`/hook"`) {
		t.Fatalf("error %q: want the URL without its query, fragment and password", msg)
	}
}

// The headers of a delivery: the signature in the documented scheme at
// the time of the attempt, none at all without a secret.
func TestPostHeaders(t *testing.T) {
	var got http.Header
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.Header.Clone() }))
	defer recv.Close()
	d := NewDeliverer(nil, Config{URL: recv.URL, Secret: []byte("test-webhook-secret"), Timeout: 5 * time.Second}, nil)
	d.now = func() time.Time { return goldenTime }
	if err := d.post(context.Background(), goldenEvent); err != nil {
		t.Fatal(err)
	}
	if got.Get(HeaderSignature) != goldenSignature || got.Get(HeaderDelivery) != "42" || got.Get(HeaderEvent) != "room.closed" {
		t.Fatalf("headers %v", got)
	}
	d = NewDeliverer(nil, Config{URL: recv.URL, Timeout: 5 * time.Second}, nil)
	if err := d.post(context.Background(), goldenEvent); err != nil {
		t.Fatal(err)
	}
	if _, ok := got[HeaderSignature]; ok {
		t.Fatalf("an unsigned delivery has a signature header: %v", got)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://crm.example.com/hooks/voip":              "https://crm.example.com/hooks/voip",
		"https://crm.example.com/hooks/voip?apikey=S&x=1": "https://crm.example.com/hooks/voip",
		"https://crm.example.com/hooks/voip?":             "https://crm.example.com/hooks/voip",
		"https://u:p@crm.example.com/h#k=S":               "https://u:xxxxx@crm.example.com/h",
		"/relative?apikey=S":                              "/relative",
		"http://[::1]:%zz/":                               "(an unparsable URL)",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// A receiver's Location is cut, at a character, before it goes into
// last_error (255 bytes).
func TestClip(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"abcdefghijk", 10, "abcdefghij…"},
		{"abcdefghi\u00fc", 10, "abcdefghi…"}, // ü is two bytes: not cut in half
		{"a\xffb", 10, "a?b"},
	} {
		if got := clip(c.in, c.n); got != c.want {
			t.Errorf("clip(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}
