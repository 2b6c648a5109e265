package rocketchatvoip_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
)

// Every Caddyfile under examples/ adapts, and each caddy.json beside one is
// exactly what its Caddyfile adapts to.
func TestExamplesAdapt(t *testing.T) {
	files, _ := filepath.Glob("examples/*/Caddyfile")
	if len(files) < 2 {
		t.Fatalf("examples: %v", files)
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		adapted, err := testcaddy.Adapt(string(src))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		jsonFile := filepath.Join(filepath.Dir(f), "caddy.json")
		committed, err := os.ReadFile(jsonFile)
		if os.IsNotExist(err) {
			continue
		}
		var a, c any
		if err := json.Unmarshal(adapted, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(committed, &c); err != nil {
			t.Fatalf("%s: %v", jsonFile, err)
		}
		if !reflect.DeepEqual(a, c) {
			t.Errorf("%s is not what %s adapts to; regenerate it with: caddy adapt --config %s --pretty", jsonFile, f, f)
		}
	}
}

// The alert rules in examples/monitoring pass their own unit tests
// (promtool test rules: each alert fires when it should and stays quiet
// otherwise). Without promtool the test skips, except under CI, where it
// fails: scripts/test.sh installs it.
func TestMonitoringAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is needed under CI (Debian's prometheus package; scripts/test.sh installs it)")
		}
		t.Skip("promtool not found (Debian's prometheus package has it)")
	}
	cmd := exec.Command(promtool, "test", "rules", "alerts_test.yml")
	cmd.Dir = filepath.Join("examples", "monitoring")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// Every metric the alert rules name is one the module exports, so that a
// renamed metric cannot leave an alert that never fires.
func TestMonitoringAlertRulesNameRealMetrics(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join("examples", "monitoring", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// The packages that define metrics, whichever of their files does it.
	var sources strings.Builder
	for _, dir := range []string{".", "outboxapp", filepath.Join("internal", "dbpool")} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			sources.Write(b)
		}
	}
	names := regexp.MustCompile(`caddy_rocketchat_voip_(\w+)`).FindAllStringSubmatch(string(rules), -1)
	if len(names) < 8 {
		t.Fatalf("only %d metric names in alerts.yml", len(names))
	}
	for _, m := range names {
		name := strings.TrimSuffix(m[1], "_bucket")
		if !strings.Contains(sources.String(), `"`+name+`"`) {
			t.Errorf("alerts.yml names caddy_rocketchat_voip_%s, which the module does not export", m[1])
		}
	}
}
