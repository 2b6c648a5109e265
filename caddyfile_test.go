package rocketchatvoip_test

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	rocketchatvoip "github.com/edgevoip/caddy-rocketchat-voip"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
)

// handlerJSON adapts a site containing block and returns the JSON of the
// rocketchat_voip handler in it.
func handlerJSON(t *testing.T, block string) (string, error) {
	t.Helper()
	out, err := testcaddy.Adapt(":8080 {\n" + block + "\nreverse_proxy 127.0.0.1:3000\n}\n")
	if err != nil {
		return "", err
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	var handlers []json.RawMessage
	for _, srv := range cfg.Apps.HTTP.Servers {
		for _, r := range srv.Routes {
			handlers = append(handlers, r.Handle...)
		}
	}
	// The directive order puts the module before reverse_proxy without an 'order' line.
	if len(handlers) != 2 || !strings.Contains(string(handlers[0]), `"handler":"rocketchat_voip"`) ||
		!strings.Contains(string(handlers[1]), `"handler":"reverse_proxy"`) {
		t.Fatalf("handlers out of order: %s", out)
	}
	return string(handlers[0]), nil
}

func TestCaddyfileValid(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"placeholder dsn only", "rocketchat_voip {\n dsn {env.ROCKETCHAT_VOIP_DSN}\n}", `{"dsn":"{env.ROCKETCHAT_VOIP_DSN}","handler":"rocketchat_voip"}`},
		{"every subdirective", `rocketchat_voip {
	dsn "gw:pw@tcp(db:3306)/rc"
	migrate
	path /api/v1/voip/room.close
	login_expiration 90d
	rate_limit 10 60s
	max_body 1MiB
	body_budget 64MiB
	db_timeout 3s
	compat 6
	max_open_conns 32
	db_concurrency 8
}`, `{"body_budget":67108864,"compat":6,"db_concurrency":8,"db_timeout":3000000000,"dsn":"gw:pw@tcp(db:3306)/rc","handler":"rocketchat_voip","login_expiration":7776000000000000,"max_body":1048576,"max_open_conns":32,"migrate":true,"path":"/api/v1/voip/room.close","rate_limit":{"requests":10,"window":60000000000}}`},
		{"limiter off, compat 7, decimal size", "rocketchat_voip {\n dsn x@/y\n rate_limit off\n compat 7\n max_body 512KB\n}", `{"compat":7,"dsn":"x@/y","handler":"rocketchat_voip","max_body":512000,"rate_limit":{"off":true}}`},
		{"several servers", "rocketchat_voip {\n dsn \"gw@tcp(db1:3306,db2:3306)/rc\"\n}", `{"dsn":"gw@tcp(db1:3306,db2:3306)/rc","handler":"rocketchat_voip"}`},
		{"require_database", "rocketchat_voip {\n dsn x@/y\n require_database\n}", `{"dsn":"x@/y","handler":"rocketchat_voip","require_database":true}`},
		{"freshness", "rocketchat_voip {\n dsn x@/y\n max_staleness 90s\n when_stale upstream\n sync_source rc2\n}",
			`{"dsn":"x@/y","handler":"rocketchat_voip","max_staleness":90000000000,"sync_source":"rc2","when_stale":"upstream"}`},
		{"max_staleness off", "rocketchat_voip {\n dsn x@/y\n max_staleness off\n}", `{"dsn":"x@/y","handler":"rocketchat_voip","ignore_staleness":true}`},
		{"unknown_credentials upstream", "rocketchat_voip {\n dsn x@/y\n unknown_credentials upstream\n}", `{"dsn":"x@/y","handler":"rocketchat_voip","unknown_credentials":"upstream"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := handlerJSON(t, c.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Fatalf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

// Syntax errors, which only the Caddyfile can make.
func TestCaddyfileErrors(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"no block", "rocketchat_voip", "dsn is required"},
		{"empty block", "rocketchat_voip {\n}", "dsn is required"},
		{"argument on the directive", "rocketchat_voip arg {\n dsn x@/y\n}", "Caddyfile:2"},
		{"dsn without value", "rocketchat_voip {\n dsn\n}", "Caddyfile:3"},
		{"dsn with two values", "rocketchat_voip {\n dsn a b\n}", "Caddyfile:3"},
		{"unknown subdirective", "rocketchat_voip {\n dsn x@/y\n bogus 1\n}", `unrecognized subdirective "bogus"`},
		{"migrate with a value", "rocketchat_voip {\n dsn x@/y\n migrate yes\n}", "Caddyfile:4"},
		{"require_database with a value", "rocketchat_voip {\n dsn x@/y\n require_database yes\n}", "Caddyfile:4"},
		{"duration that is not one", "rocketchat_voip {\n dsn x@/y\n login_expiration soon\n}", "login_expiration: not a duration"},
		{"rate_limit with one number", "rocketchat_voip {\n dsn x@/y\n rate_limit 10\n}", "rate_limit takes"},
		{"rate_limit on", "rocketchat_voip {\n dsn x@/y\n rate_limit on\n}", "rate_limit takes"},
		{"size that is not one", "rocketchat_voip {\n dsn x@/y\n max_body lots\n}", "max_body: not a size"},
		{"db_timeout without value", "rocketchat_voip {\n dsn x@/y\n db_timeout\n}", "Caddyfile:4"},
		{"compat that is not a number", "rocketchat_voip {\n dsn x@/y\n compat seven\n}", "compat: not a whole number"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := handlerJSON(t, c.in)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got error %v, want one containing %q", err, c.want)
			}
			// Every error names the line that caused it.
			if !regexp.MustCompile(`at Caddyfile:\d+`).MatchString(err.Error()) {
				t.Fatalf("error does not name the line: %v", err)
			}
		})
	}
}

// TestConfigRules feeds one table to the Caddyfile and to JSON: both accept
// and refuse the same values, with the same message (Validate decides).
func TestConfigRules(t *testing.T) {
	cases := []struct {
		name, caddyfile, json, want string // want "" means accepted
	}{
		{"max_body 0 is the default", "max_body 0", `"max_body":0`, ""},
		{"negative max_staleness", "max_staleness -1s", `"max_staleness":-1000000000`, "max_staleness: must not be negative"},
		{"max_staleness off and a duration", "max_staleness 1m\n max_staleness off", `"max_staleness":60000000000,"ignore_staleness":true`, "max_staleness: off takes no duration"},
		{"when_stale other", "when_stale forward", `"when_stale":"forward"`, `when_stale: must be unavailable or upstream, not "forward"`},
		{"unknown_credentials other", "unknown_credentials pass", `"unknown_credentials":"pass"`, `unknown_credentials: must be unauthorized or upstream, not "pass"`},
		{"unknown_credentials unauthorized", "unknown_credentials unauthorized", `"unknown_credentials":"unauthorized"`, ""},
		{"max_body 8 MiB", "max_body 8MiB", `"max_body":8388608`, ""},
		{"max_body over 8 MiB", "max_body 8388609", `"max_body":8388609`, "max_body: must be between 1 byte and 8 MiB"},
		{"body_budget 0 is the default", "body_budget 0", `"body_budget":0`, ""},
		{"body_budget below max_body's default", "body_budget 512KiB", `"body_budget":524288`, "body_budget: must be at least max_body (1048576 bytes), not 524288"},
		{"body_budget below max_body", "body_budget 2MiB\n max_body 4MiB", `"body_budget":2097152,"max_body":4194304`, "body_budget: must be at least max_body (4194304 bytes)"},
		{"body_budget equal to max_body, set first", "body_budget 256KiB\n max_body 256KiB", `"body_budget":262144,"max_body":262144`, ""},
		{"negative body_budget", "body_budget -1", `"body_budget":-1`, "body_budget: "},
		{"rate_limit with no requests", "rate_limit 0 60s", `"rate_limit":{"requests":0,"window":60000000000}`, "rate_limit: the request count must be positive"},
		{"rate_limit with negative requests", "rate_limit -1 60s", `"rate_limit":{"requests":-1,"window":60000000000}`, "rate_limit: the request count must be positive"},
		{"rate_limit with no window", "rate_limit 10 0s", `"rate_limit":{"requests":10,"window":0}`, "rate_limit: the window must be positive"},
		{"rate_limit off", "rate_limit off", `"rate_limit":{"off":true}`, ""},
		{"compat 8", "compat 8", `"compat":8`, "compat: must be 6 or 7, not 8"},
		{"compat 0 is the default", "compat 0", `"compat":0`, ""},
		{"negative db_timeout", "db_timeout -1s", `"db_timeout":-1000000000`, "db_timeout: must not be negative"},
		{"db_timeout 0 is the default", "db_timeout 0s", `"db_timeout":0`, ""},
		{"negative login_expiration", "login_expiration -1h", `"login_expiration":-3600000000000`, "login_expiration: must not be negative"},
		{"relative path", "path api", `"path":"api"`, "path: must start with /"},
		{"negative max_open_conns", "max_open_conns -1", `"max_open_conns":-1`, "max_open_conns: must not be negative"},
		{"negative db_concurrency", "db_concurrency -2", `"db_concurrency":-2`, "db_concurrency: must not be negative"},
		{"db_concurrency above max_open_conns", "max_open_conns 4\n db_concurrency 5", `"max_open_conns":4,"db_concurrency":5`, "db_concurrency: 5 is more than max_open_conns (4)"},
		{"db_concurrency above the default max_open_conns", "db_concurrency 65", `"db_concurrency":65`, "db_concurrency: 65 is more than max_open_conns (64, the default)"},
		{"db_concurrency at max_open_conns", "db_concurrency 64", `"db_concurrency":64`, ""},
		{"max_open_conns below the default db_concurrency", "max_open_conns 2", `"max_open_conns":2`, ""},
		{"an empty path is the default", `path ""`, `"path":""`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, cfErr := handlerJSON(t, "rocketchat_voip {\n dsn x@/y\n "+c.caddyfile+"\n}")
			var h rocketchatvoip.Handler
			if err := json.Unmarshal([]byte(`{"dsn":"x@/y",`+c.json+`}`), &h); err != nil {
				t.Fatal(err)
			}
			jsonErr := h.Validate()
			for form, err := range map[string]error{"Caddyfile": cfErr, "JSON": jsonErr} {
				switch {
				case c.want == "" && err != nil:
					t.Errorf("%s refused it: %v", form, err)
				case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
					t.Errorf("%s: got %v, want an error containing %q", form, err, c.want)
				}
			}
		})
	}
}

// rocketchat_voip_health takes a matcher and a dsn, ahead of reverse_proxy
// with no order line; without a dsn it is refused at its line.
func TestHealthCaddyfile(t *testing.T) {
	out, err := testcaddy.Adapt(":8080 {\nreverse_proxy 127.0.0.1:3000\nrocketchat_voip_health /healthz {\n\tdsn \"gw:pw@tcp(db:3306)/rc\"\n}\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"match":[{"path":["/healthz"]}],"handle":[{"dsn":"gw:pw@tcp(db:3306)/rc","handler":"rocketchat_voip_health"}]}`
	if !strings.Contains(string(out), want) {
		t.Fatalf("adapted to %s, want it to contain %s", out, want)
	}
	if first, proxy := strings.Index(string(out), "rocketchat_voip_health"), strings.Index(string(out), "reverse_proxy"); first < 0 || proxy < first {
		t.Fatalf("health check not ahead of reverse_proxy: %s", out)
	}
	_, err = testcaddy.Adapt(":8080 {\nrocketchat_voip_health /healthz {\n}\n}\n")
	if err == nil || !strings.Contains(err.Error(), "dsn is required, at Caddyfile:3") {
		t.Fatalf("no dsn: %v", err)
	}
}
