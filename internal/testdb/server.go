package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Server is a MariaDB server of the test's own, in a temporary directory,
// that the test can stop and start again (for restart tests).
type Server struct {
	Addr string
	dir  string
	bin  string
	user string
	cmd  *exec.Cmd
}

// StartServer initialises and starts a throwaway MariaDB on a free port.
// It needs mariadbd and mariadb-install-db on the machine.
func StartServer(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("mariadbd")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/mariadbd"); err != nil {
			t.Fatal("mariadbd is not installed (apt-get install mariadb-server)")
		}
	}
	installDB, err := exec.LookPath("mariadb-install-db")
	if err != nil {
		t.Fatal("mariadb-install-db is not installed")
	}
	u, _ := user.Current()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), dir: t.TempDir(), bin: bin, user: u.Username}
	out, err := exec.Command(installDB, "--no-defaults", "--datadir="+filepath.Join(s.dir, "data"),
		"--auth-root-authentication-method=normal", "--skip-test-db", "--user="+s.user).CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	t.Cleanup(s.Stop)
	s.Start(t)
	return s
}

// DSN names database db on this server.
func (s *Server) DSN(db string) string {
	cfg := s.Config()
	cfg.DBName = db
	return cfg.FormatDSN()
}

// Config is root on this server, with no database.
func (s *Server) Config() *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr = "root", "tcp", s.Addr
	cfg.ParseTime, cfg.Loc = true, time.UTC
	return cfg
}

// Start starts the server and waits until it answers.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	_, port, _ := net.SplitHostPort(s.Addr)
	s.cmd = exec.Command(s.bin, "--no-defaults", "--datadir="+filepath.Join(s.dir, "data"), "--port="+port,
		"--bind-address=127.0.0.1", "--socket="+filepath.Join(s.dir, "sock"), "--user="+s.user,
		"--pid-file="+filepath.Join(s.dir, "pid"), "--log-error="+filepath.Join(s.dir, "error.log"),
		"--innodb-buffer-pool-size=64M", "--max-connections=300")
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	db, _ := sql.Open("mysql", s.DSN(""))
	defer db.Close()
	deadline := time.Now().Add(60 * time.Second)
	for db.PingContext(context.Background()) != nil {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "error.log"))
			t.Fatalf("mariadbd did not start:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop shuts the server down cleanly and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	s.cmd.Wait()
	s.cmd = nil
}
