package dbpool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

const (
	// firstContact bounds Setup's wait for a server, so that a start or a
	// reload with a database that drops packets goes on, degraded, soon.
	firstContact = 5 * time.Second
	// setupTimeout bounds the schema work and preparation once a server
	// answers (a migration may wait up to 60 s for another's lock).
	setupTimeout = 2 * time.Minute
	// retryMin and retryMax bound the background loop's wait between
	// attempts while no server answers: a database that comes back is in
	// use within about retryMax.
	retryMin, retryMax = 100 * time.Millisecond, time.Second
	// retryRefused is the wait after a server refused the configuration
	// (access denied, say): only an operator fixes that, and trying every
	// second would fill the server's log.
	retryRefused = 5 * time.Second
	// warnEvery is how often the loop repeats its warning.
	warnEvery = 5 * time.Second
)

// Setup brings the pool into service: it connects, migrates the schema
// (migrate, or any holder's AddMigrator) or checks that it is current, and
// prepares the request path's statements. A pool already in service (a
// reload reusing it) is left as it is.
//
// What a server says is final and returned: access denied, an unknown
// database, a missing privilege, and a schema older than this build needs
// without migrate (*schema.OutdatedError; the schema gate may still see it
// migrated by another site). When no server takes the work the error is a
// *dbconnect.UnreachableError and the pool keeps trying in the background,
// with backoff, migrating then if any holder wants it and otherwise waiting
// for the schema to be current.
func (p *Pool) Setup(ctx context.Context, migrate bool) error {
	if p.Store() != nil {
		return nil
	}
	p.setupMu.Lock()
	defer p.setupMu.Unlock()
	switch {
	case p.Store() != nil:
		return nil
	case p.retrying:
		return &dbconnect.UnreachableError{Name: p.name, Err: p.lastFailure()}
	}
	err := p.bringUp(ctx, migrate)
	if err == nil || !retryable(err) {
		return err
	}
	p.failed(err)
	p.retrying = true
	go p.retry()
	var away *dbconnect.UnreachableError
	if errors.As(err, &away) {
		return away
	}
	return &dbconnect.UnreachableError{Name: p.name, Err: err} // failed on the way: the network, say
}

// failed records the latest failure of the background loop, for the
// holders that arrive while it runs.
func (p *Pool) failed(err error) {
	err = cause(err)
	p.lastErr.Store(&err)
}

// cause is err without the UnreachableError around it, whose message names
// the database that the log line names already.
func cause(err error) error {
	var away *dbconnect.UnreachableError
	if errors.As(err, &away) {
		return away.Err
	}
	return err
}

func (p *Pool) lastFailure() error {
	if err := p.lastErr.Load(); err != nil {
		return fmt.Errorf("still trying; last: %w", *err)
	}
	return errors.New("still trying")
}

// bringUp is one attempt of Setup.
func (p *Pool) bringUp(ctx context.Context, migrate bool) error {
	pingCtx, cancel := context.WithTimeout(ctx, firstContact)
	err := p.db.PingContext(pingCtx)
	cancel()
	if err != nil && dbconnect.Retryable(err) {
		return &dbconnect.UnreachableError{Name: p.name, Err: err}
	}
	if err != nil {
		return fmt.Errorf("cannot connect to MySQL at %s: %w", p.name, err)
	}
	ctx, cancel = context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if migrate || p.migrators.Load() > 0 {
		applied, err := schema.Migrate(ctx, p.db)
		if err != nil {
			return fmt.Errorf("migrating %s: %w", p.name, err)
		}
		if len(applied) > 0 {
			logger().Info("applied schema migrations", zap.String("database", p.name), zap.Ints("versions", applied))
		}
	} else if err := schema.Check(ctx, p.db); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	s, err := store.New(ctx, p.db)
	if err != nil {
		return fmt.Errorf("preparing statements on %s: %w", p.name, err)
	}
	logWritePath(p.name, s.WritePath())
	p.publish(s)
	return nil
}

// retry brings the pool up in the background, until it is or the pool
// closes. It warns at most every warnEvery.
func (p *Pool) retry() {
	wait := retryMin
	warned := time.Now() // the holder that started the loop has warned
	for {
		select {
		case <-p.stopped.Done():
			return
		case <-time.After(wait/2 + rand.N(wait/2+1)):
		}
		err := p.bringUp(p.stopped, false)
		if p.stopped.Err() != nil {
			return
		}
		if err == nil {
			logger().Info("database reached: room.close is served", zap.String("database", p.name))
			return
		}
		p.failed(err)
		wait = min(2*wait, retryMax)
		msg := "database unreachable: room.close answers 503 until it is; still trying"
		switch {
		case errors.As(err, new(*schema.OutdatedError)):
			msg = "database schema outdated and no site migrates it: room.close answers 503 until it is migrated; checking again"
		case !retryable(err):
			msg = "database refused the configuration: room.close answers 503; trying again in case it is fixed"
			wait = retryRefused
		}
		if time.Since(warned) >= warnEvery {
			logger().Warn(msg, zap.String("database", p.name), zap.Error(cause(err)))
			warned = time.Now()
		}
	}
}

// logWritePath says how closes will be written: at info, and at warn for
// the portable path on an engine that has procedures (the operator can fix
// that).
func logWritePath(name string, path store.WritePath) {
	level := zap.InfoLevel
	if path.Engine.HasProcedures() && !path.Procedure {
		level = zap.WarnLevel
	}
	logger().Log(level, "closes are written by "+path.String(),
		zap.String("database", name), zap.String("engine", string(path.Engine)), zap.String("server_version", path.Version))
}

// logger is Caddy's logger of the moment: a pool outlives the configs, and
// their loggers, that opened it.
func logger() *zap.Logger { return caddy.Log().Named("rocketchat_voip.database") }

// retryable reports whether err leaves the pool to try again in the
// background; an outdated schema, like a server's refusal, is final here,
// and so is anything while the build's own migrations are broken.
func retryable(err error) bool {
	if _, broken := schema.Migrations(); broken != nil {
		return false
	}
	return !errors.As(err, new(*schema.OutdatedError)) && dbconnect.Retryable(err)
}
