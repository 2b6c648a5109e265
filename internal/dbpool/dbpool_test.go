package dbpool

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
)

// fakeConnector stands in for the server: each Connect answers with what
// answer returns (nil: a connection that pings), or blocks until its
// context ends when answer is nil. This tests the pool's logic (which
// attempt waits for what, which error is final), not database behaviour.
type fakeConnector struct {
	mu      sync.Mutex
	answer  func(ctx context.Context) error
	pending atomic.Int32 // Connects in progress
	calls   atomic.Int32
}

func (c *fakeConnector) set(answer func(ctx context.Context) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.answer = answer
}

func (c *fakeConnector) Connect(ctx context.Context) (driver.Conn, error) {
	c.calls.Add(1)
	c.pending.Add(1)
	defer c.pending.Add(-1)
	c.mu.Lock()
	answer := c.answer
	c.mu.Unlock()
	if err := answer(ctx); err != nil {
		return nil, err
	}
	return fakeConn{}, nil
}

func (c *fakeConnector) Driver() driver.Driver { return nil }

type fakeConn struct{}

func (fakeConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("not a database") }
func (fakeConn) Close() error                        { return nil }
func (fakeConn) Begin() (driver.Tx, error)           { return nil, errors.New("not a database") }
func (fakeConn) Ping(context.Context) error          { return nil }

var (
	refused = func(context.Context) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	accessDenied = func(context.Context) error {
		return &mysql.MySQLError{Number: 1045, Message: "Access denied for user 'gw'"}
	}
	answers = func(context.Context) error { return nil }
	silent  = func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
)

// fakePool is a pool on a fake server, closed when the test ends; its
// schema step succeeds (and counts whether it migrated) unless told
// otherwise.
func fakePool(t *testing.T, answer func(context.Context) error) (*Pool, *fakeConnector) {
	t.Helper()
	c := &fakeConnector{answer: answer}
	p := open("fake", "tcp(fake:3306)/db", c)
	p.up.schemaStep = func(context.Context, *sql.DB, bool) ([]int, error) { return nil, nil }
	t.Cleanup(func() { p.Destruct() }) //nolint:errcheck
	return p, c
}

func settingsOf(p *Pool) (Settings, int, int) {
	return p.Settings(), p.DB().Stats().MaxOpenConnections, p.Limiter().Limit()
}

func expectSettings(t *testing.T, p *Pool, maxOpen, conc int) {
	t.Helper()
	s, dbMax, limit := settingsOf(p)
	if s != (Settings{maxOpen, conc}) || dbMax != maxOpen || limit != conc {
		t.Fatalf("settings %+v, database/sql cap %d, limit %d; want %d/%d", s, dbMax, limit, maxOpen, conc)
	}
}

func need(holder string, maxOpen, conc int) Need {
	return Need{Holder: holder, Settings: Settings{MaxOpenConns: maxOpen, DBConcurrency: conc}}
}

// Holders of one load that state a setting must state the same value, in
// either order; a holder that states none agrees with any.
func TestSettingsAgreeInEitherOrder(t *testing.T) {
	p, _ := fakePool(t, refused)
	for _, order := range [][2]Need{{need("A", 8, 0), need("B", 16, 0)}, {need("B", 16, 0), need("A", 8, 0)}} {
		var l Load
		if err := l.Want(p, order[0]); err != nil {
			t.Fatal(err)
		}
		err := l.Want(p, order[1])
		if err == nil || !strings.Contains(err.Error(), "max_open_conns 8") || !strings.Contains(err.Error(), "max_open_conns 16") ||
			!strings.Contains(err.Error(), "share the pool of tcp(fake:3306)/db") {
			t.Fatalf("%s then %s: %v", order[0].Holder, order[1].Holder, err)
		}

	}
	for _, order := range [][2]Need{{need("A", 8, 0), need("B", 0, 0)}, {need("B", 0, 0), need("A", 8, 0)}} {
		var l Load
		for _, n := range order {
			if err := l.Want(p, n); err != nil {
				t.Fatal(err)
			}
		}
		if got := l.wants[p].settings.effective(); got != (Settings{8, 8}) {
			t.Fatalf("%s then %s: %+v, want 8/8", order[0].Holder, order[1].Holder, got)
		}

	}
	// The rule across fields holds on the merged values: 16 slots cannot
	// fit in another holder's 8 connections.
	var l Load
	if err := l.Want(p, need("A", 8, 0)); err != nil {
		t.Fatal(err)
	}
	if err := l.Want(p, need("B", 0, 16)); err == nil || !strings.Contains(err.Error(), "db_concurrency 16, more than max_open_conns 8 (A)") {
		t.Fatalf("16 slots on 8 connections: %v", err)
	}

	if len(p.loads) != 0 || p.DB().Stats().MaxOpenConnections != DefaultMaxOpenConns {
		t.Fatalf("loads never started changed the pool: %d loads, cap %d", len(p.loads), p.DB().Stats().MaxOpenConnections)
	}
}

// A load Caddy refuses, or whose start fails, leaves the running load's
// settings in effect; a load that starts takes over, and keeps them when
// its predecessor stops.
func TestSettingsOfTheRunningLoad(t *testing.T) {
	p, _ := fakePool(t, refused) // no server: the starts go on without it
	var a Load
	if err := a.Want(p, need("A", 8, 8)); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	expectSettings(t, p, 8, 8)

	var refusedLoad Load
	if err := refusedLoad.Want(p, need("B1", 2, 2)); err != nil {
		t.Fatal(err)
	}
	if err := refusedLoad.Want(p, need("B2", 64, 8)); err == nil {
		t.Fatal("B1's 2/2 and B2's 64/8 agreed")
	}

	expectSettings(t, p, 8, 8)

	// Another app of the load fails to start after this one started: Caddy
	// stops the apps already started.
	var failed Load
	if err := failed.Want(p, need("C", 2, 2)); err != nil {
		t.Fatal(err)
	}
	if err := failed.Start(zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	expectSettings(t, p, 2, 2)
	failed.Stop()
	expectSettings(t, p, 8, 8)

	var next Load
	if err := next.Want(p, need("D", 4, 4)); err != nil {
		t.Fatal(err)
	}
	if err := next.Start(zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	a.Stop()
	expectSettings(t, p, 4, 4)
}

// The pool closes what its preparations made, and its handle, only once
// the last request in flight is done.
func TestDestructWhileARequestIsInFlight(t *testing.T) {
	p, _ := fakePool(t, answers)
	var closed atomic.Bool
	r := p.Register(func(context.Context, *sql.DB) (io.Closer, error) {
		return closerFunc(func() error { closed.Store(true); return nil }), nil
	})
	if err := p.BringUp(time.Second); err != nil {
		t.Fatal(err)
	}
	<-r.Ready()
	if !p.Up() {
		t.Fatal("pool not in service after its bring-up")
	}
	if !p.Acquire() {
		t.Fatal("Acquire refused on an open pool")
	}
	p.Destruct() //nolint:errcheck
	if p.Acquire() {
		t.Fatal("Acquire let a request in after Destruct")
	}
	if closed.Load() {
		t.Fatal("the preparation was closed under a request in flight")
	}
	if err := p.DB().Ping(); err != nil {
		t.Fatalf("handle closed under a request in flight: %v", err)
	}
	p.Done()
	if !closed.Load() {
		t.Fatal("the preparation was not closed once the request was done")
	}
	if err := p.DB().Ping(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("handle still open after the last request: %v", err)
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// A server that does not answer is retried in the background, and the
// pool comes into service when it does, preparations run; what a server
// says at first contact is final and returned.
func TestBringUpRetryableThenServed(t *testing.T) {
	p, c := fakePool(t, refused)
	var prepared atomic.Int32
	r := p.Register(func(context.Context, *sql.DB) (io.Closer, error) {
		prepared.Add(1)
		return io.NopCloser(nil), nil
	})
	err := p.BringUp(time.Second)
	var away *dbconnect.UnreachableError
	if !errors.As(err, &away) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("a server that refuses connections: %v", err)
	}
	// A second holder (a reload) is not held up: the loop owns the pool.
	waitFor(t, "a second attempt", func() bool { return c.calls.Load() >= 2 })
	if err := p.BringUp(time.Minute); !errors.As(err, &away) || !strings.Contains(err.Error(), "still trying; last:") {
		t.Fatalf("BringUp while the loop retries: %v", err)
	}
	c.set(answers)
	waitFor(t, "the preparation", func() bool { return r.done() })
	if !p.Up() || prepared.Load() != 1 {
		t.Fatalf("in service %v, prepared %d times, once the server answers", p.Up(), prepared.Load())
	}
	if err := p.BringUp(time.Second); err != nil {
		t.Fatalf("BringUp of a pool in service: %v", err)
	}
}

func TestBringUpFinal(t *testing.T) {
	p, _ := fakePool(t, accessDenied)
	err := p.BringUp(time.Second)
	if err == nil || errors.As(err, new(*dbconnect.UnreachableError)) || !strings.Contains(err.Error(), "cannot connect to MySQL at tcp(fake:3306)/db: Error 1045") {
		t.Fatalf("access denied at first contact: %v", err)
	}
	// An outdated schema is final too.
	q, _ := fakePool(t, answers)
	q.up.schemaStep = func(context.Context, *sql.DB, bool) ([]int, error) {
		return nil, &schema.OutdatedError{Have: 1, Want: 2}
	}
	if err := q.BringUp(time.Second); !errors.As(err, new(*schema.OutdatedError)) {
		t.Fatalf("outdated schema: %v", err)
	}
}

// A start does not wait out the dial of a server that drops packets: it
// goes on while the first contact is still pending, and a refusal that
// comes later is recorded for the next holders and keeps the pool out of
// service.
func TestBringUpDoesNotWaitForASilentServer(t *testing.T) {
	p, c := fakePool(t, silent)
	release := make(chan struct{})
	c.set(func(ctx context.Context) error {
		select {
		case <-release:
			return accessDenied(ctx)
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	err := p.BringUp(20 * time.Millisecond)
	if !errors.As(err, new(*dbconnect.UnreachableError)) || !strings.Contains(err.Error(), "no answer within 20ms") {
		t.Fatalf("a silent server: %v", err)
	}
	if c.pending.Load() != 1 {
		t.Fatalf("%d contacts pending when BringUp returned, want the first still pending", c.pending.Load())
	}
	close(release)
	waitFor(t, "the late answer", func() bool { return p.up.lastErr.Load() != nil })
	if err := p.lastFailure(); !strings.Contains(err.Error(), "Error 1045") {
		t.Fatalf("the late refusal is not recorded: %v", err)
	}
	if p.Up() {
		t.Fatal("a pool whose server refused it is in service")
	}
}

// waitFor waits for cond, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
