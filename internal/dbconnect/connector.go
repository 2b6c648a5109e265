package dbconnect

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
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
// connects to the first that answers and takes writes, in the listed order.
type Connector struct {
	servers []*server
}

type server struct {
	addr      string
	connector driver.Connector
	skipUntil atomic.Int64 // unix nanoseconds
	// epoch grows each time the server refuses a write (NotWritable), so
	// that every connection to it is dropped, not only the one that saw it:
	// the others would be refused too, and read what a replica reads.
	epoch atomic.Int64
}

// passOver skips s for a while and retires its connections.
func (s *server) passOver() {
	s.skipUntil.Store(time.Now().Add(skipFailedFor).UnixNano())
	s.epoch.Add(1)
}

// NewConnector returns a connector for cfg's servers.
func NewConnector(cfg *Config) (*Connector, error) {
	c := &Connector{}
	for i, addr := range cfg.Servers {
		mc := cfg.Config.Clone()
		mc.Addr = addr
		mc.TLS = cfg.tlsFor(i)
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
// order; then, if all of them failed recently, the others in order. (So a
// replica promoted while every server was passed over is found at once.)
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if len(c.servers) == 1 {
		// No other server to prefer: no readiness check either.
		s := c.servers[0]
		inner, err := s.connector.Connect(ctx)
		if err != nil {
			return nil, err
		}
		return newConn(inner, s, false)
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

// connect opens a connection and checks that the server takes writes.
func (s *server) connect(ctx context.Context, fallback bool) (driver.Conn, error) {
	inner, err := s.connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	c, err := newConn(inner, s, fallback)
	if err == nil {
		err = c.checkWritable(ctx)
	}
	if err != nil {
		inner.Close()
		return nil, err
	}
	return c, nil
}

// checkWritable fails for a server that would refuse writes or serve stale
// reads: read-only (a replica; a Group Replication secondary, or a member
// not ONLINE, which Group Replication makes super_read_only), a Group
// Replication member that is not the primary or is in a minority, or a
// Galera node that is not synced (it answers every query with error 1047).
// One round trip for a plain server; servers without a variable (MariaDB
// has no super_read_only, MySQL no wsrep_on) simply do not list it.
func (c *conn) checkWritable(ctx context.Context) error {
	rows, err := c.rows(ctx, "SHOW GLOBAL VARIABLES WHERE Variable_name IN "+
		"('read_only', 'super_read_only', 'wsrep_on', 'group_replication_group_name')")
	if err != nil {
		return err
	}
	vars := map[string]string{}
	for _, r := range rows {
		vars[r[0]] = r[1]
	}
	for _, name := range []string{"super_read_only", "read_only"} {
		if v, ok := vars[name]; ok && v != "OFF" && v != "0" {
			return fmt.Errorf("read-only (%s is %s)", name, v)
		}
	}
	if vars["wsrep_on"] == "ON" {
		ready, err := c.rows(ctx, "SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
		if err != nil {
			return err
		}
		if len(ready) == 0 || ready[0][1] != "ON" {
			return errors.New("Galera node is not ready (wsrep_ready is not ON)")
		}
	}
	if _, ok := vars["group_replication_group_name"]; ok {
		return c.checkGroupPrimary(ctx)
	}
	return nil
}

// checkGroupPrimary reads the member's own view of its group (with the
// Group Replication plugin loaded). No rows (performance_schema off) or an
// OFFLINE member (replication not started) leave the decision to
// read_only, checked before.
func (c *conn) checkGroupPrimary(ctx context.Context) error {
	members, err := c.rows(ctx, "SELECT MEMBER_ID = @@server_uuid, MEMBER_STATE, MEMBER_ROLE "+
		"FROM performance_schema.replication_group_members")
	if err != nil {
		return err
	}
	reachable := 0 // a majority of the group must be, for it to commit
	var self []string
	for _, m := range members {
		if m[1] != "UNREACHABLE" {
			reachable++
		}
		if m[0] == "1" {
			self = m
		}
	}
	switch {
	case self == nil || self[1] == "OFFLINE":
		return nil
	case self[1] != "ONLINE":
		return fmt.Errorf("Group Replication member is %s", self[1])
	case self[2] != "PRIMARY":
		return fmt.Errorf("Group Replication member is a %s", self[2])
	case 2*reachable <= len(members):
		return fmt.Errorf("Group Replication primary reaches %d of %d members (no quorum)", reachable, len(members))
	}
	return nil
}

// rows runs a statement with no arguments and returns its rows as text.
func (c *conn) rows(ctx context.Context, query string) ([][]string, error) {
	rows, err := c.inner.QueryContext(ctx, query, nil)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]string
	for {
		vals := make([]driver.Value, len(rows.Columns()))
		if err := rows.Next(vals); err == io.EOF {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		row := make([]string, len(vals))
		for i, v := range vals {
			if v != nil {
				row[i] = fmt.Sprintf("%s", v)
			}
		}
		out = append(out, row)
	}
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
// of the context they began with, and which passes its server over when
// the server refuses a write.
type conn struct {
	inner    mysqlConn
	srv      *server
	epoch    int64 // srv.epoch when connected
	fallback bool  // not to the first server
	created  time.Time
}

func newConn(inner driver.Conn, srv *server, fallback bool) (*conn, error) {
	mc, ok := inner.(mysqlConn)
	if !ok {
		return nil, fmt.Errorf("unexpected driver connection %T", inner)
	}
	return &conn{inner: mc, srv: srv, epoch: srv.epoch.Load(), fallback: fallback, created: time.Now()}, nil
}

// note passes the server over when err says it takes no writes.
func (c *conn) note(err error) error {
	if NotWritable(err) {
		c.srv.passOver()
	}
	return err
}

// retired reports a connection to a server that refused a write since it
// was opened.
func (c *conn) retired() bool { return c.srv.epoch.Load() != c.epoch }

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}
func (c *conn) Close() error { return c.inner.Close() }
func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := c.inner.PrepareContext(ctx, query)
	if err != nil {
		return nil, c.note(err)
	}
	ms, ok := st.(mysqlStmt)
	if !ok {
		st.Close()
		return nil, fmt.Errorf("unexpected driver statement %T", st)
	}
	return &stmt{inner: ms, conn: c}, nil
}
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	r, err := c.inner.ExecContext(ctx, query, args)
	return r, c.note(err)
}
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	r, err := c.inner.QueryContext(ctx, query, args)
	return r, c.note(err)
}
func (c *conn) Ping(ctx context.Context) error { return c.inner.Ping(ctx) }

// ResetSession runs before a pooled connection is reused: one to a server
// passed over since is discarded (database/sql then takes another or
// connects anew).
func (c *conn) ResetSession(ctx context.Context) error {
	if c.retired() {
		return driver.ErrBadConn
	}
	return c.inner.ResetSession(ctx)
}
func (c *conn) CheckNamedValue(nv *driver.NamedValue) error { return c.inner.CheckNamedValue(nv) }
func (c *conn) IsValid() bool {
	return c.inner.IsValid() && !c.retired() && !(c.fallback && time.Since(c.created) > fallbackLifetime)
}

// mysqlStmt is what go-sql-driver/mysql's statement implements and
// database/sql uses.
type mysqlStmt interface {
	driver.Stmt
	driver.StmtExecContext
	driver.StmtQueryContext
	driver.NamedValueChecker
}

// stmt is a prepared statement whose refusals pass its server over, as
// its connection's do.
type stmt struct {
	inner mysqlStmt
	conn  *conn
}

func (s *stmt) Close() error                                { return s.inner.Close() }
func (s *stmt) NumInput() int                               { return s.inner.NumInput() }
func (s *stmt) CheckNamedValue(nv *driver.NamedValue) error { return s.inner.CheckNamedValue(nv) }
func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	r, err := s.inner.Exec(args) //nolint:staticcheck // driver.Stmt requires it
	return r, s.conn.note(err)
}
func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	r, err := s.inner.Query(args) //nolint:staticcheck // driver.Stmt requires it
	return r, s.conn.note(err)
}
func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	r, err := s.inner.ExecContext(ctx, args)
	return r, s.conn.note(err)
}
func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	r, err := s.inner.QueryContext(ctx, args)
	return r, s.conn.note(err)
}

// BeginTx starts a transaction (the driver bounds BEGIN by ctx) and keeps
// ctx for its end.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if _, err := c.inner.BeginTx(ctx, opts); err != nil {
		return nil, c.note(err)
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
			return t.conn.note(err) // the server answered: it did not commit
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
	_ mysqlStmt        = (*stmt)(nil)
	_ driver.Tx        = (*tx)(nil)
)
