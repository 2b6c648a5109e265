package systemtest

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// sitesSharingDSN is a config of three sites on one fresh database, the
// middle one with the given extra lines in its rocketchat_voip block; each
// answers other requests with "site <n>" (in a route, so that respond comes
// after the module).
func sitesSharingDSN(t *testing.T, dsn, middleExtra string) string {
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\toutput discard\n\t}\n}\n")
	for i := range 3 {
		extra := ""
		if i == 1 {
			extra = middleExtra
		}
		fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\troute {\n\t\trocketchat_voip {\n\t\t\tdsn %q\n\t\t\t%s\n\t\t}\n\t\trespond \"site %d\"\n\t}\n}\n", testcaddy.FreePort(t), dsn, extra, i)
	}
	return b.String()
}

// TestOneSiteMigratesForAll: Caddy provisions sites in no fixed order, so a
// handler without migrate may see the database before the handler that
// migrates it; the config must still start. Routes of one site are
// provisioned in the order written, so each order is tested every time. The
// handler without migrate uses a DSN of its own (another pool): only the
// schema gate, at Start, can prepare its statements, and a request through
// it that needs the database shows that it did.
func TestOneSiteMigratesForAll(t *testing.T) {
	for _, c := range []struct {
		name       string
		plainFirst bool
	}{
		{"the handler without migrate first", true},
		{"the migrating handler first", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := testdb.NewEmpty(t, nil)
			cfg := db.Cfg.Clone()
			cfg.Timeout = 7 * time.Second // another DSN, so another pool
			plain := fmt.Sprintf("\t\trocketchat_voip {\n\t\t\tdsn %q\n\t\t\tpath /plain\n\t\t}\n", cfg.FormatDSN())
			migrating := fmt.Sprintf("\t\trocketchat_voip {\n\t\t\tdsn %q\n\t\t\tmigrate\n\t\t\tpath /migrating\n\t\t}\n", db.DSN)
			handlers := migrating + plain
			if c.plainFirst {
				handlers = plain + migrating
			}
			addr := fmt.Sprintf("127.0.0.1:%d", testcaddy.FreePort(t))
			caddyfile := "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\toutput discard\n\t}\n}\n" +
				"http://" + addr + " {\n\troute {\n" + handlers + "\t\trespond \"not a handled path\"\n\t}\n}\n"
			if err := testcaddy.Load(caddyfile); err != nil {
				t.Fatalf("config with one migrating handler failed to load: %v", err)
			}
			t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck
			var n int
			if err := db.QueryRow("SELECT COUNT(*) FROM rocketchat_voip_schema_migrations").Scan(&n); err != nil || n == 0 {
				t.Fatalf("not migrated: %d rows, %v", n, err)
			}
			// An unknown token is a 401 only once the statements are prepared
			// (503 before).
			for _, path := range []string{"/plain", "/migrating"} {
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader("{}"))
				req.Header.Set("X-User-Id", "nobody")
				req.Header.Set("X-Auth-Token", "no-such-token")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 401 || string(b) != body401 {
					t.Errorf("%s: got %d %s, want 401 %s", path, resp.StatusCode, b, body401)
				}
			}
		})
	}
}

// TestNoSiteMigratesOutdatedSchema: without migrate anywhere, an outdated
// schema still fails the load, with the message that says what to do.
func TestNoSiteMigratesOutdatedSchema(t *testing.T) {
	db := testdb.NewEmpty(t, nil)
	err := testcaddy.Load(sitesSharingDSN(t, db.DSN, ""))
	if err == nil {
		caddy.Stop() //nolint:errcheck
		t.Fatal("a config on an unmigrated database loaded")
	}
	if !strings.Contains(err.Error(), "database schema is at version 0, this gateway needs") ||
		!strings.Contains(err.Error(), "add 'migrate' to the rocketchat_voip block") {
		t.Fatalf("unclear error: %v", err)
	}
}
