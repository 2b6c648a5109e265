package systemtest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// sitesSharingDSN is a config of three sites on one fresh database, the
// middle one with the given extra lines in its rocketchat_voip block.
func sitesSharingDSN(t *testing.T, dsn, middleExtra string) string {
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\toutput discard\n\t}\n}\n")
	for i := range 3 {
		extra := ""
		if i == 1 {
			extra = middleExtra
		}
		fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\trocketchat_voip {\n\t\tdsn %q\n\t\t%s\n\t}\n\trespond \"site %d\"\n}\n", testcaddy.FreePort(t), dsn, extra, i)
	}
	return b.String()
}

// TestOneSiteMigratesForAll: Caddy provisions sites in no fixed order, so a
// site without migrate may see the database before the site that migrates
// it; the config must still start, every time.
func TestOneSiteMigratesForAll(t *testing.T) {
	for i := range 6 {
		t.Run(fmt.Sprint("try ", i), func(t *testing.T) {
			db := testdb.NewEmpty(t, nil)
			if err := testcaddy.Load(sitesSharingDSN(t, db.DSN, "migrate")); err != nil {
				t.Fatalf("config with one migrating site failed to load: %v", err)
			}
			t.Cleanup(func() { caddy.Stop() }) //nolint:errcheck
			var n int
			if err := db.QueryRow("SELECT COUNT(*) FROM rocketchat_voip_schema_migrations").Scan(&n); err != nil || n == 0 {
				t.Fatalf("not migrated: %d rows, %v", n, err)
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
