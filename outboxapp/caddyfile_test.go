package outboxapp_test

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
)

// adaptOutbox adapts a Caddyfile whose global options are block and
// returns the outbox app's JSON.
func adaptOutbox(t *testing.T, block string) (string, error) {
	t.Helper()
	out, err := testcaddy.Adapt("{\n" + block + "}\n:8080 {\n\trespond ok\n}\n")
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

// The global option adapts to its JSON.
func TestOutboxOption(t *testing.T) {
	got, err := adaptOutbox(t, `	rocketchat_voip_outbox {
		dsn x@/y
		webhook https://crm.example.com/hooks/voip {
			secret {env.SECRET}
			timeout 5s
		}
		max_attempts 4
		backoff 2s 1m
		batch 32
		lease 20s
		poll_interval 100ms
	}
`)
	want := `{"dsn":"x@/y","webhook":{"url":"https://crm.example.com/hooks/voip","secret":"{env.SECRET}","timeout":5000000000},"max_attempts":4,"backoff_base":2000000000,"backoff_max":60000000000,"batch":32,"lease":20000000000,"poll_interval":100000000}`
	if err != nil || got != want {
		t.Fatalf("got  %s (%v)\nwant %s", got, err, want)
	}
	got, err = adaptOutbox(t, "\trocketchat_voip_outbox {\n\t\tdsn x@/y\n\t\twebhook http://h/ {\n\t\t\tunsigned\n\t\t}\n\t}\n")
	if want := `{"dsn":"x@/y","webhook":{"url":"http://h/","unsigned":true}}`; err != nil || got != want {
		t.Fatalf("unsigned: got %s (%v), want %s", got, err, want)
	}
}

// Each error is reported at the line of the subdirective it is about; a
// rule tying two at the later of them; a missing subdirective at the
// option's line (2 here: line 1 opens the global options).
func TestOutboxOptionErrorLines(t *testing.T) {
	for _, c := range []struct {
		name, block string
		line        string
		want        string
	}{
		{"a negative batch", `	rocketchat_voip_outbox {
		dsn x@/y
		webhook http://h/ {
			secret s
		}
		batch -1
		lease 40s
		poll_interval 1s
	}
`, "7", "batch: must not be negative"},
		{"a negative first backoff", `	rocketchat_voip_outbox {
		backoff -1s 1m
		dsn x@/y
		webhook http://h/ {
			secret s
		}
	}
`, "3", "backoff (first wait): must not be negative"},
		{"a negative webhook timeout, inside the webhook block", `	rocketchat_voip_outbox {
		dsn x@/y
		webhook http://h/ {
			timeout -1s
			secret s
		}
		max_attempts 3
	}
`, "5", "webhook timeout: must not be negative"},
		{"the lease, written after the timeout", `	rocketchat_voip_outbox {
		dsn x@/y
		webhook http://h/ {
			secret s
			timeout 30s
		}
		max_attempts 3
		lease 10s
		batch 2
	}
`, "9", "lease: 10s must be longer than the webhook timeout (30s)"},
		{"the timeout, written after the lease", `	rocketchat_voip_outbox {
		dsn x@/y
		lease 10s
		webhook http://h/ {
			secret s
			timeout 30s
		}
	}
`, "7", "lease: 10s must be longer than the webhook timeout (30s)"},
		// Checked against the default lease (30s), not only when both are written.
		{"a timeout past the default lease", `	rocketchat_voip_outbox {
		dsn x@/y
		webhook http://h/ {
			secret s
			timeout 60s
		}
		batch 2
	}
`, "6", "lease: 30s must be longer than the webhook timeout (1m0s)"},
		{"a negative retention", `	rocketchat_voip_outbox {
		dsn x@/y
		webhook http://h/ {
			secret s
		}
		retain -1h
	}
`, "7", "retain: must not be negative"},
		{"no secret", `	rocketchat_voip_outbox {
		dsn x@/y
		batch 2
		webhook http://h/
		lease 40s
	}
`, "5", "webhook: a secret is required to sign the deliveries (or 'unsigned', to send them unsigned deliberately)"},
		{"a secret and unsigned", `	rocketchat_voip_outbox {
		dsn x@/y
		webhook http://h/ {
			unsigned
			secret s
		}
	}
`, "6", "webhook: a secret and unsigned exclude each other"},
		{"no webhook", `	rocketchat_voip_outbox {
		dsn x@/y
		batch 2
	}
`, "2", "webhook is required"},
		{"no dsn", `	rocketchat_voip_outbox {
		webhook http://h/ {
			secret s
		}
	}
`, "2", "dsn is required"},
		// Parse errors, at their own line already.
		{"not a duration", `	rocketchat_voip_outbox {
		dsn x@/y
		webhook http://h/ {
			secret s
		}
		lease soon
	}
`, "7", `lease: not a duration: "soon"`},
		{"extra arguments", `	rocketchat_voip_outbox {
		dsn x@/y
		max_attempts 4 5
	}
`, "4", "wrong argument count"},
		{"unsigned takes no argument", `	rocketchat_voip_outbox {
		dsn x@/y
		webhook http://h/ {
			unsigned yes
		}
	}
`, "5", "wrong argument count"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := adaptOutbox(t, c.block)
			if err == nil {
				t.Fatal("adapted")
			}
			m := regexp.MustCompile(`, at Caddyfile:(\d+)`).FindStringSubmatch(err.Error())
			if !strings.Contains(err.Error(), c.want) || m == nil || m[1] != c.line {
				t.Fatalf("got %v, want %q at Caddyfile:%s", err, c.want, c.line)
			}
		})
	}
}

// retain takes a duration or off, and nothing else.
func TestRetainOption(t *testing.T) {
	adapt := func(retain string) (string, error) {
		return adaptOutbox(t, "\trocketchat_voip_outbox {\n\t\tdsn x@/y\n\t\twebhook http://h/ {\n\t\t\tsecret s\n\t\t}\n\t\t"+retain+"\n\t}\n")
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
