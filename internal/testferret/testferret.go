// Package testferret starts a FerretDB (a MongoDB wire-protocol server, on
// its SQLite backend) for a test: a binary of its own process, in a temp
// dir, on a free loopback port, stopped when the test ends. The binary is
// $ROCKETCHAT_VOIP_FERRETDB, or else the one scripts/ferretdb-server.sh
// builds (and caches) from FerretDB's Go module, so FerretDB never enters
// this module's go.mod.
//
// When FerretDB cannot be built or started the test fails under $CI or
// $ROCKETCHAT_VOIP_REQUIRE_DB, and is skipped otherwise.
package testferret

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// BinaryEnv names a FerretDB binary to use instead of building one.
const BinaryEnv = "ROCKETCHAT_VOIP_FERRETDB"

// Server is one test's FerretDB.
type Server struct {
	URI  string // mongodb://127.0.0.1:port/
	Addr string
	dir  string
	bin  string
	cmd  *exec.Cmd
	done chan struct{}
	log  *bytes.Buffer
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if testdb.Required() {
		t.Fatalf("FerretDB is required (CI or ROCKETCHAT_VOIP_REQUIRE_DB set): %s", msg)
	}
	t.Skipf("no FerretDB (%s); set %s to a FerretDB binary or let scripts/ferretdb-server.sh build one", msg, BinaryEnv)
}

// binary finds or builds FerretDB once per test binary.
func binary() (string, error) {
	binOnce.Do(func() {
		if p := os.Getenv(BinaryEnv); p != "" {
			binPath = p
			return
		}
		script, err := findScript()
		if err != nil {
			binErr = err
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command("bash", script)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			binErr = fmt.Errorf("%s: %v: %s", script, err, strings.TrimSpace(stderr.String()))
			return
		}
		binPath = strings.TrimSpace(string(out))
	})
	return binPath, binErr
}

func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "scripts", "ferretdb-server.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("scripts/ferretdb-server.sh not found above the test's directory")
		}
		dir = parent
	}
}

// Start starts a FerretDB for t, with its data in a temp dir, and waits
// until it answers.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := binary()
	if err != nil {
		unavailable(t, "%v", err)
	}
	s := &Server{bin: bin, dir: t.TempDir()}
	s.Addr = freeAddr(t)
	s.URI = "mongodb://" + s.Addr + "/"
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	s.log = new(bytes.Buffer)
	s.cmd = exec.Command(s.bin, "--handler=sqlite", "--sqlite-url=file:"+s.dir+"/", "--state-dir="+s.dir,
		"--listen-addr="+s.Addr, "--debug-addr=-", "--telemetry=disable", "--log-level=warn")
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		unavailable(t, "starting %s: %v", s.bin, err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-s.done:
			unavailable(t, "FerretDB exited at start: %s", s.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			unavailable(t, "FerretDB did not listen on %s within 30s", s.Addr)
		}
	}
}

// Stop kills the server (its data stays for Restart).
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Restart starts the server again on the same address and data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}

// Client connects to the server; disconnected when the test ends.
func (s *Server) Client(t testing.TB) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(s.URI).SetTimeout(30 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	if err := c.Database("admin").RunCommand(context.Background(), bson.D{{Key: "ping", Value: 1}}).Err(); err != nil {
		t.Fatalf("ferretdb ping: %v", err)
	}
	return c
}
