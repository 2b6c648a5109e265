package systemtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
)

// TestEmptyDSNFailsTheLoad: a DSN written as a placeholder that expands to
// nothing (the variable unset, or blank) fails the config load and `caddy
// validate`, with a message that names the placeholder, rather than reach
// for the empty user at 127.0.0.1:3306 or start degraded. Adapting the
// Caddyfile does not depend on the environment.
func TestEmptyDSNFailsTheLoad(t *testing.T) {
	const variable = "RCVOIP_TEST_EMPTY_DSN"
	handler := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\nhttp://127.0.0.1:%d {\n\trocketchat_voip {\n\t\tdsn {env.%s}\n\t}\n\trespond 404\n}\n",
		testcaddy.FreePort(t), variable)
	outboxApp := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\trocketchat_voip_outbox {\n\t\tdsn {env.%s}\n\t\twebhook http://127.0.0.1:1/hook {\n\t\t\tsecret s\n\t\t}\n\t}\n}\nhttp://127.0.0.1:%d {\n\trespond 404\n}\n",
		variable, testcaddy.FreePort(t))
	for name, config := range map[string]string{"handler": handler, "outbox": outboxApp} {
		t.Run(name, func(t *testing.T) { emptyDSNFailsTheLoad(t, variable, config) })
	}
}

func emptyDSNFailsTheLoad(t *testing.T, variable, config string) {
	want := "dsn: {env." + variable + "} is empty"
	if _, err := testcaddy.Adapt(config); err != nil {
		t.Fatalf("adapting with the variable unset: %v", err)
	}
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := testcaddy.Binary(t)
	for _, value := range []*string{nil, ptr(""), ptr("  ")} {
		name := "unset"
		if value != nil {
			name = fmt.Sprintf("%q", *value)
		}
		t.Run(name, func(t *testing.T) {
			t.Setenv(variable, "")
			if value == nil {
				os.Unsetenv(variable)
			} else {
				os.Setenv(variable, *value)
			}
			err := testcaddy.Load(config)
			if err == nil {
				caddy.Stop() //nolint:errcheck
				t.Fatal("the config loaded")
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("the load failed with %q, want it to say %q", err, want)
			}
			cmd := exec.Command(bin, "validate", "--config", file, "--adapter", "caddyfile")
			cmd.Env = os.Environ() // as this test set it
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), want) {
				t.Fatalf("caddy validate: %v, want a failure that says %q:\n%s", err, want, out)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
