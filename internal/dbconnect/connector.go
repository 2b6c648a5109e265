package dbconnect

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
)

// ErrCommitOutcomeUnknown wraps the error of a COMMIT that was sent but not
// answered in time (or whose connection broke): the server may have applied
// it. The connection is discarded.
var ErrCommitOutcomeUnknown = errors.New("commit outcome unknown")

const (
	// skipFailedFor is how long a server that refused, timed out or was not
	// ready is passed over before it is tried again.
	skipFailedFor = 3 * time.Second
	// fallbackLifetime is how long a connection to a server other than the
	// first is kept, so the pool returns to the first once it is back.
	fallbackLifetime = 10 * time.Second
)

// Connector is a driver.Connector for database/sql. With several servers it
// connects to the first that answers and is ready, in the listed order.
type Connector struct {
	servers []*server
}

type server struct {
	addr      string
	connector driver.Connector
	skipUntil atomic.Int64 // unix nanoseconds
}

// NewConnector returns a connector for cfg's servers.
func NewConnector(cfg *Config) (*Connector, error) {
	c := &Connector{}
	for _, addr := range cfg.Servers {
		mc := cfg.Config.Clone()
		mc.Addr = addr
		inner, err := mysql.NewConnector(mc)
		if err != nil {
			return nil, err
		}
		c.servers = append(c.servers, &server{addr: addr, connector: inner})
	}
	return c, nil
}

// Driver implements driver.Connector.
func (c *Connector) Driver() driver.Driver { return mysql.MySQLDriver{} }

// Connect implements driver.Connector: servers not recently failed first, in
// order; then, if all of them failed recently, the others in order.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if len(c.servers) == 1 {
		inner, err := c.servers[0].connector.Connect(ctx)
		if err != nil {
			return nil, err
		}
		return newConn(inner, false)
	}
	var errs []error
	now := time.Now().UnixNano()
	for _, skipped := range []bool{false, true} {
		for i, s := range c.servers {
			if (now < s.skipUntil.Load()) != skipped {
				continue
			}
			conn, err := s.connect(ctx, i > 0)
			if err == nil {
				s.skipUntil.Store(0)
				return conn, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", s.addr, err))
			if ctx.Err() != nil {
				return nil, errors.Join(errs...)
			}
			s.skipUntil.Store(time.Now().Add(skipFailedFor).UnixNano())
		}
	}
	return nil, errors.Join(errs...)
}

// connect opens a connection and checks that the server takes work: a
// Galera node that is not synced answers every query with error 1047 (and
// reports wsrep_ready OFF); other servers have no such variable.
func (s *server) connect(ctx context.Context, fallback bool) (driver.Conn, error) {
	inner, err := s.connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	c, err := newConn(inner, fallback)
	if err != nil {
		inner.Close()
		return nil, err
	}
	galera, err := c.showValue(ctx, "SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
	if err == nil && galera == "ON" {
		var ready string
		if ready, err = c.showValue(ctx, "SHOW GLOBAL STATUS LIKE 'wsrep_ready'"); err == nil && ready != "ON" {
			err = errors.New("Galera node is not ready (wsrep_ready is not ON)")
		}
	}
	if err != nil {
		inner.Close()
		return nil, err
	}
	return c, nil
}

// showValue returns the value of the one row of a SHOW … LIKE statement, or
// "" when there is none (MySQL has no wsrep variables).
func (c *conn) showValue(ctx context.Context, show string) (string, error) {
	rows, err := c.inner.QueryContext(ctx, show, nil)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	vals := make([]driver.Value, len(rows.Columns()))
	if err := rows.Next(vals); err != nil || len(vals) < 2 {
		return "", nil
	}
	return fmt.Sprintf("%s", vals[1]), nil
}

// mysqlConn is what go-sql-driver/mysql's connection implements and
// database/sql uses; conn passes all of it through.
type mysqlConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
	driver.NamedValueChecker
}

// conn is a driver connection whose transactions end within the deadline
// of the context they began with.
type conn struct {
	inner    mysqlConn
	fallback bool // not to the first server
	created  time.Time
}

func newConn(inner driver.Conn, fallback bool) (*conn, error) {
	mc, ok := inner.(mysqlConn)
	if !ok {
		return nil, fmt.Errorf("unexpected driver connection %T", inner)
	}
	return &conn{inner: mc, fallback: fallback, created: time.Now()}, nil
}

func (c *conn) Prepare(query string) (driver.Stmt, error) { return c.inner.Prepare(query) }
func (c *conn) Close() error                              { return c.inner.Close() }
func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.inner.PrepareContext(ctx, query)
}
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.inner.ExecContext(ctx, query, args)
}
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.inner.QueryContext(ctx, query, args)
}
func (c *conn) Ping(ctx context.Context) error              { return c.inner.Ping(ctx) }
func (c *conn) ResetSession(ctx context.Context) error      { return c.inner.ResetSession(ctx) }
func (c *conn) CheckNamedValue(nv *driver.NamedValue) error { return c.inner.CheckNamedValue(nv) }
func (c *conn) IsValid() bool {
	return c.inner.IsValid() && !(c.fallback && time.Since(c.created) > fallbackLifetime)
}

// BeginTx starts a transaction (the driver bounds BEGIN by ctx) and keeps
// ctx for its end.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if _, err := c.inner.BeginTx(ctx, opts); err != nil {
		return nil, err
	}
	return &tx{conn: c, ctx: ctx}, nil
}

// tx ends a transaction with COMMIT or ROLLBACK sent as statements under the
// transaction's context, which the driver enforces by closing the
// connection at the deadline. (The driver's own Tx.Commit takes no context,
// so a server that stalls at COMMIT, as Galera does while it evicts a dead
// node, would hold the request past any timeout.)
type tx struct {
	conn *conn
	ctx  context.Context
}

func (t *tx) Commit() error {
	if err := t.ctx.Err(); err != nil {
		// Nothing was sent; closing the connection rolls the work back.
		return fmt.Errorf("%w: %v", driver.ErrBadConn, err)
	}
	if _, err := t.conn.inner.ExecContext(t.ctx, "COMMIT", nil); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) {
			return err // the server answered: it did not commit
		}
		t.conn.inner.Close()
		return fmt.Errorf("%w: %w: %v", ErrCommitOutcomeUnknown, driver.ErrBadConn, err)
	}
	return nil
}

func (t *tx) Rollback() error {
	if t.ctx.Err() == nil {
		_, err := t.conn.inner.ExecContext(t.ctx, "ROLLBACK", nil)
		if err == nil {
			return nil
		}
	}
	// Past the deadline, or ROLLBACK failed: drop the connection, which makes
	// the server roll back, rather than wait or reuse a connection whose
	// transaction state is unknown.
	t.conn.inner.Close()
	return driver.ErrBadConn
}

var (
	_ driver.Connector = (*Connector)(nil)
	_ mysqlConn        = (*conn)(nil)
	_ driver.Tx        = (*tx)(nil)
)
