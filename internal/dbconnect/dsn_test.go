package dbconnect

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseDSN(t *testing.T) {
	cases := []struct {
		name, dsn string
		servers   []string
		addr, db  string
	}{
		{"one server", "gw:pw@tcp(db1:3306)/voip", []string{"db1:3306"}, "db1:3306", "voip"},
		{"default port", "gw:pw@tcp(db1)/voip", []string{"db1:3306"}, "db1:3306", "voip"},
		{"three servers", "gw:pw@tcp(db1:3306,db2:3307, db3)/voip?timeout=2s", []string{"db1:3306", "db2:3307", "db3:3306"}, "db1:3306", "voip"},
		{"password with @ and /", "gw:p@ss/w@tcp(a:1,b:2)/voip", []string{"a:1", "b:2"}, "a:1", "voip"},
		{"unix socket", "gw@unix(/run/mysqld.sock)/voip", []string{"/run/mysqld.sock"}, "/run/mysqld.sock", "voip"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseDSN(c.dsn)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.Servers, c.servers) || cfg.Addr != c.addr || cfg.DBName != c.db {
				t.Fatalf("servers %q addr %q db %q", cfg.Servers, cfg.Addr, cfg.DBName)
			}
			if !cfg.ParseTime || cfg.InterpolateParams || cfg.MultiStatements {
				t.Fatalf("settings the module relies on are off: %+v", cfg.Config)
			}
			if strings.Contains(cfg.String(), "pw") || strings.Contains(cfg.String(), "ss") {
				t.Fatalf("String leaks the password: %s", cfg)
			}
		})
	}
	for _, bad := range []string{"not a dsn", "gw@tcp(a:1,,b:2)/voip"} {
		if _, err := ParseDSN(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
