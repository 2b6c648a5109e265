package syncapp

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func adapt(t *testing.T, block string) (*Sync, error) {
	t.Helper()
	src := "{\n\trocketchat_voip_sync {\n" + block + "\n\t}\n}\n:8080 {\n\trespond ok\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	s := new(Sync)
	if err := json.Unmarshal(cfg.Apps["rocketchat_voip_sync"], s); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return s, nil
}

func TestCaddyfile(t *testing.T) {
	s, err := adapt(t, `dsn root@tcp(127.0.0.1:3306)/voip
		mongodb_uri {env.MONGO_URL}
		database rc
		poll_interval 500ms
		reconcile_interval 30s
		overlap 10s
		batch 200
		lease 20s
		timeout 5s
		writeback {
			max_attempts 5
			backoff 2s 1m
		}`)
	if err != nil {
		t.Fatal(err)
	}
	want := Sync{DSN: "root@tcp(127.0.0.1:3306)/voip", MongoDBURI: "{env.MONGO_URL}", Database: "rc",
		PollInterval: caddy.Duration(500 * time.Millisecond), ReconcileInterval: caddy.Duration(30 * time.Second),
		Overlap: caddy.Duration(10 * time.Second), Batch: 200, Lease: caddy.Duration(20 * time.Second), Timeout: caddy.Duration(5 * time.Second),
		Writeback: &Writeback{MaxAttempts: 5, BackoffBase: caddy.Duration(2 * time.Second), BackoffMax: caddy.Duration(time.Minute)}}
	if s.DSN != want.DSN || s.MongoDBURI != want.MongoDBURI || s.Database != want.Database || s.PollInterval != want.PollInterval ||
		s.ReconcileInterval != want.ReconcileInterval || s.Overlap != want.Overlap || s.Batch != want.Batch || s.Lease != want.Lease ||
		s.Timeout != want.Timeout || *s.Writeback != *want.Writeback {
		t.Fatalf("got %+v %+v", s, s.Writeback)
	}
	s, err = adapt(t, "dsn x\nmongodb_uri mongodb://h/rc\nwriteback off")
	if err != nil || !s.Writeback.Disabled {
		t.Fatalf("writeback off: %+v %v", s, err)
	}
}

func TestCaddyfileRefusals(t *testing.T) {
	for block, want := range map[string]string{
		"mongodb_uri mongodb://h/": "dsn is required",
		"dsn x":                    "mongodb_uri is required",
		"dsn x\nmongodb_uri m\nbatch 0\nbatch -1":        "batch: must be positive",
		"dsn x\nmongodb_uri m\nreconcile_interval 100ms": "reconcile_interval: must not be shorter than poll_interval",
		"dsn x\nmongodb_uri m\nlease 5s":                 "lease: 5s must be longer than timeout (10s)",
		"dsn x\nmongodb_uri m\nwriteback on":             "writeback takes 'off' or a block",
		"dsn x\nmongodb_uri m\nfollow stream":            `unrecognized subdirective "follow"`,
		"dsn x\nmongodb_uri m\nwriteback {\nretry 3\n}":  `unrecognized writeback subdirective "retry"`,
	} {
		if _, err := adapt(t, block); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", block, err, want)
		}
	}
}

func TestDefaults(t *testing.T) {
	s := (&Sync{DSN: "x", MongoDBURI: "m"}).withDefaults()
	if s.Source != "rocketchat" || time.Duration(s.PollInterval) != time.Second || time.Duration(s.ReconcileInterval) != time.Minute ||
		time.Duration(s.Overlap) != 5*time.Second || s.Batch != 500 || time.Duration(s.Lease) != 15*time.Second ||
		time.Duration(s.Timeout) != 10*time.Second || s.Writeback.MaxAttempts != 10 {
		t.Fatalf("defaults %+v", s)
	}
}
