package rocketchatvoip_test

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

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
	cases := map[string]string{
		"rocketchat_voip {\n dsn {env.ROCKETCHAT_VOIP_DSN}\n}": `{"dsn":"{env.ROCKETCHAT_VOIP_DSN}","handler":"rocketchat_voip"}`,
		`rocketchat_voip {
	dsn "gw:pw@tcp(db:3306)/rc"
	migrate
	path /api/v1/voip/room.close
	login_expiration 90d
	rate_limit 10 60s
	max_body 1MiB
	db_timeout 3s
	compat 6
	max_open_conns 32
}`: `{"compat":6,"db_timeout":3000000000,"dsn":"gw:pw@tcp(db:3306)/rc","handler":"rocketchat_voip","login_expiration":7776000000000000,"max_body":1048576,"max_open_conns":32,"migrate":true,"path":"/api/v1/voip/room.close","rate_limit":{"requests":10,"window":60000000000}}`,
		"rocketchat_voip {\n dsn x@/y\n rate_limit off\n compat 7\n max_body 512KB\n}": `{"compat":7,"dsn":"x@/y","handler":"rocketchat_voip","max_body":512000,"rate_limit":{"off":true}}`,
	}
	for in, want := range cases {
		got, err := handlerJSON(t, in)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("%s:\ngot  %s\nwant %s", in, got, want)
		}
	}
}

func TestCaddyfileErrors(t *testing.T) {
	cases := map[string]string{
		"rocketchat_voip":                                         "dsn is required",
		"rocketchat_voip {\n}":                                    "dsn is required",
		"rocketchat_voip arg {\n dsn x@/y\n}":                     "Caddyfile:2",
		"rocketchat_voip {\n dsn\n}":                              "Caddyfile:3",
		"rocketchat_voip {\n dsn a b\n}":                          "Caddyfile:3",
		"rocketchat_voip {\n dsn x@/y\n bogus 1\n}":               `unrecognized subdirective "bogus"`,
		"rocketchat_voip {\n dsn x@/y\n migrate yes\n}":           "Caddyfile:4",
		"rocketchat_voip {\n dsn x@/y\n path api\n}":              "path must start with /",
		"rocketchat_voip {\n dsn x@/y\n login_expiration soon\n}": "login_expiration: not a positive duration",
		"rocketchat_voip {\n dsn x@/y\n login_expiration -1h\n}":  "not a positive duration",
		"rocketchat_voip {\n dsn x@/y\n rate_limit 10\n}":         "rate_limit takes",
		"rocketchat_voip {\n dsn x@/y\n rate_limit 0 60s\n}":      "request count must be a positive integer",
		"rocketchat_voip {\n dsn x@/y\n rate_limit 10 0s\n}":      "window must be a positive duration",
		"rocketchat_voip {\n dsn x@/y\n rate_limit on\n}":         "rate_limit takes",
		"rocketchat_voip {\n dsn x@/y\n max_body lots\n}":         "max_body: not a positive size",
		"rocketchat_voip {\n dsn x@/y\n max_body 0\n}":            "max_body: not a positive size",
		"rocketchat_voip {\n dsn x@/y\n db_timeout 0s\n}":         "db_timeout: not a positive duration",
		"rocketchat_voip {\n dsn x@/y\n db_timeout\n}":            "Caddyfile:4",
		"rocketchat_voip {\n dsn x@/y\n compat 8\n}":              "compat must be 6 or 7",
		"rocketchat_voip {\n dsn x@/y\n max_open_conns -1\n}":     "max_open_conns must be a positive integer",
	}
	for in, want := range cases {
		_, err := handlerJSON(t, in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got error %v, want one containing %q", in, err, want)
			continue
		}
		// Every error names the line that caused it.
		if !regexp.MustCompile(`at Caddyfile:\d+`).MatchString(err.Error()) {
			t.Errorf("%q: error does not name the line: %v", in, err)
		}
	}
}
