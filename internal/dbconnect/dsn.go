// Package dbconnect opens the module's MySQL pools: from a DSN that may name
// several servers (tried in order, one that fails or does not take writes
// skipped for a while), with transactions whose COMMIT and ROLLBACK obey the
// deadline of the context the transaction began with, which database/sql
// alone does not give.
package dbconnect

import (
	"context"
	"crypto/tls"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Config is a parsed DSN: the driver settings, and the servers to try in
// order of preference.
type Config struct {
	*mysql.Config
	// Servers are the host:port addresses of a tcp DSN, in the order given;
	// one entry for a single server or a unix socket.
	Servers []string
	// serverTLS is each server's TLS settings when there are several (nil
	// otherwise): the driver checks a certificate against the name of the
	// address it parsed, so mysql.Config.TLS names the first server only.
	serverTLS []*tls.Config
}

// SessionSQLMode is the sql_mode of every session the module opens, whatever
// the server's: strict, so that a value that does not fit its column is an
// error and never silently cut short, and free of modes that change how a
// statement reads (ANSI_QUOTES, PIPES_AS_CONCAT, NO_BACKSLASH_ESCAPES).
const SessionSQLMode = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"

// ParseDSN parses a go-sql-driver/mysql DSN whose tcp address may list
// several servers, "user:pw@tcp(db1:3306,db2:3306)/rocketchat", and sets
// what the module relies on: times parsed as UTC, server-side prepared
// statements (no client interpolation, no multi-statements), the session's
// sql_mode (SessionSQLMode, in place of any the DSN sets), and a dial
// timeout.
func ParseDSN(dsn string) (*Config, error) {
	servers, dsnFor, err := splitServers(dsn)
	if err != nil {
		return nil, err
	}
	single := dsn
	if len(servers) > 0 {
		single = dsnFor(servers[0])
	}
	cfg, err := mysql.ParseDSN(single)
	if err != nil {
		// The parser's messages do not echo the DSN, so no password leaks.
		return nil, fmt.Errorf("invalid dsn: %v", err)
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	cfg.InterpolateParams = false
	cfg.MultiStatements = false
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	cfg.Params["sql_mode"] = "'" + SessionSQLMode + "'"
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second // dialing; request work is bounded by its context
	}
	c := &Config{Config: cfg, Servers: servers}
	if len(servers) == 0 {
		c.Servers = []string{cfg.Addr}
		return c, nil
	}
	for i, s := range servers {
		// Each server's settings are what the driver makes of a DSN naming
		// it alone: its address with the default port added, and with TLS
		// its own name to check the certificate against (unless the DSN's
		// TLS config names one, or skips the check).
		one, err := mysql.ParseDSN(dsnFor(s))
		if err != nil {
			return nil, fmt.Errorf("invalid dsn: %v", err)
		}
		c.Servers[i] = one.Addr
		if cfg.TLS != nil {
			c.serverTLS = append(c.serverTLS, one.TLS)
		}
	}
	return c, nil
}

// tlsFor is the TLS settings for the i'th server.
func (c *Config) tlsFor(i int) *tls.Config {
	if i < len(c.serverTLS) {
		return c.serverTLS[i].Clone()
	}
	return c.TLS.Clone()
}

// splitServers cuts the server list out of a tcp DSN with several, and
// returns it with a function that rewrites the DSN to name one server only
// (none for any other DSN). It finds the address the way the driver does:
// the last '/' ends it, the last '@' before that starts it.
func splitServers(dsn string) ([]string, func(server string) string, error) {
	slash := strings.LastIndexByte(dsn, '/')
	if slash < 0 {
		return nil, nil, nil
	}
	head := dsn[:slash]
	at := strings.LastIndexByte(head, '@')
	netAddr := head[at+1:]
	addrs, ok := strings.CutPrefix(netAddr, "tcp(")
	if !ok || !strings.HasSuffix(addrs, ")") || !strings.Contains(addrs, ",") {
		return nil, nil, nil
	}
	var servers []string
	for _, s := range strings.Split(strings.TrimSuffix(addrs, ")"), ",") {
		if s = strings.TrimSpace(s); s == "" {
			return nil, nil, errors.New("invalid dsn: empty server in the address list")
		}
		servers = append(servers, s)
	}
	return servers, func(server string) string { return dsn[:at+1] + "tcp(" + server + ")" + dsn[slash:] }, nil
}

// String names the servers and database without the credentials.
func (c *Config) String() string {
	return fmt.Sprintf("%s(%s)/%s", c.Net, strings.Join(c.Servers, ","), c.DBName)
}

// Key identifies the pool for this config: the same DSN, the same pool.
func (c *Config) Key() string {
	dsn := c.FormatDSN()
	if len(c.Servers) > 1 {
		dsn += "#" + strings.Join(c.Servers, ",")
	}
	return dsn
}

// Open opens a pool for cfg and checks that a server answers.
func Open(ctx context.Context, cfg *Config) (*sql.DB, error) {
	connector, err := NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := NewDB(connector)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		if Retryable(err) {
			return nil, &UnreachableError{Name: cfg.String(), Err: err}
		}
		return nil, fmt.Errorf("cannot connect to MySQL at %s: %w", cfg, err)
	}
	return db, nil
}

// UnreachableError says that no server took the work, for a reason that
// may pass (see Retryable): it names the servers and database, never the
// credentials.
type UnreachableError struct {
	Name string
	Err  error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot connect to MySQL at %s: %v", e.Name, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// NewDB is a pool on connector (NewConnector's, or one wrapping it) that
// connects only when it is used.
func NewDB(connector driver.Connector) *sql.DB {
	db := sql.OpenDB(connector)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db
}
