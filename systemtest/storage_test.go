package systemtest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
)

// Every body that max_body admits is stored whole: a long comment, in any
// script, and many tags, land byte for byte, never a 503 nor cut short.
func TestLongValuesStoredWhole(t *testing.T) {
	e := newEnv(t, "rate_limit off")
	cases := []struct {
		name    string
		comment string
		tags    []string
	}{
		{"300,000 ASCII characters", strings.Repeat("a", 300_000), nil},
		{"40,000 accented characters", strings.Repeat("é", 40_000), nil},
		{"100,000 four-byte characters", strings.Repeat("😀", 100_000), nil},
		{"a comment near max_body", strings.Repeat("z", 1<<20-200), nil},
		{"2,000 long tags", "done", manyTags(2_000, 200)},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rid := "LONG" + string(rune('A'+i))
			e.db.AddRoom(t, rid, e.visitor, time.Now().UTC().Add(-time.Minute), nil)
			options := map[string]any{"comment": c.comment}
			if c.tags != nil {
				options["tags"] = c.tags
			}
			body, _ := json.Marshal(map[string]any{"rid": rid, "token": e.visitor.Token, "options": options})
			res := e.post(t, string(body))
			if want := `{"rid":"` + rid + `","success":true}`; res.status != http.StatusOK || res.body != want {
				t.Fatalf("got %d %s, want 200 %s", res.status, res.body, want)
			}
			var msg string
			var tags []byte
			if err := e.db.QueryRow("SELECT m.msg, COALESCE(r.tags, 'null') FROM rooms r JOIN messages m ON m.id = r.last_message_id WHERE r.id = ?", rid).
				Scan(&msg, &tags); err != nil {
				t.Fatal(err)
			}
			if msg != c.comment {
				t.Fatalf("stored comment is %d bytes, sent %d", len(msg), len(c.comment))
			}
			if c.tags != nil {
				var stored []string
				if err := json.Unmarshal(tags, &stored); err != nil || strings.Join(stored, ",") != strings.Join(c.tags, ",") {
					t.Fatalf("stored tags differ (%v): %d of %d", err, len(stored), len(c.tags))
				}
			}
		})
	}
}

func manyTags(n, size int) []string {
	tags := make([]string, n)
	for i := range tags {
		tags[i] = strings.Repeat(string(rune('a'+i%26)), size)
	}
	return tags
}

// The largest max_body allowed carries a comment the schema and a default
// server (max_allowed_packet 16 MiB on MariaDB) store whole.
func TestLargestBodyStoredWhole(t *testing.T) {
	e := newEnv(t, "rate_limit off", "max_body 8MiB")
	if e.engine(t) == dbconnect.TiDB {
		t.Skip("TiDB refuses a row over its txn-entry-size-limit, 6 MiB by default (the README says to keep max_body within it there)")
	}
	comment := strings.Repeat("y", 8<<20-200)
	body, _ := json.Marshal(map[string]any{"rid": e.roomID, "token": e.visitor.Token, "options": map[string]any{"comment": comment}})
	if res := e.post(t, string(body)); res.status != http.StatusOK {
		t.Fatalf("got %d %s, want 200", res.status, res.body)
	}
	var n int
	if err := e.db.QueryRow("SELECT LENGTH(m.msg) FROM rooms r JOIN messages m ON m.id = r.last_message_id WHERE r.id = ?", e.roomID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(comment) {
		t.Fatalf("stored %d bytes of a %d-byte comment", n, len(comment))
	}
}
