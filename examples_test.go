package rocketchatvoip_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
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
