package outboxapp_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
)

// retain takes a duration or off, and nothing else.
func TestRetainOption(t *testing.T) {
	adapt := func(retain string) (string, error) {
		out, err := testcaddy.Adapt("{\n\trocketchat_voip_outbox {\n\t\tdsn x@/y\n\t\twebhook http://h/\n\t\t" + retain + "\n\t}\n}\n:8080 {\n\trespond ok\n}\n")
		if err != nil {
			return "", err
		}
		var cfg struct {
			Apps map[string]json.RawMessage `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatal(err)
		}
		return string(cfg.Apps["rocketchat_voip_outbox"]), nil
	}
	for retain, want := range map[string]string{
		"retain 3d":  `"retain":259200000000000`,
		"retain off": `"keep_delivered":true`,
	} {
		got, err := adapt(retain)
		if err != nil || !strings.Contains(got, want) {
			t.Errorf("%s: got %s (%v), want %s in it", retain, got, err, want)
		}
	}
	for retain, want := range map[string]string{
		"retain soon":  `retain: not a duration nor off: "soon"`,
		"retain":       "wrong argument count",
		"retain 1d 2d": "wrong argument count",
		"retain -1h":   "retain: must not be negative",
	} {
		if _, err := adapt(retain); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error containing %q", retain, err, want)
		}
	}
}
