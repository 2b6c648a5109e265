package testcaddy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var build struct {
	once sync.Once
	path string
	err  error
}

// Binary builds ./cmd/caddy (Caddy with this module) once per test process
// into .tmp/bin of the repository and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			build.err = err
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		build.path = filepath.Join(root, ".tmp", "bin", "caddy-test")
		cmd := exec.Command("go", "build", "-o", build.path, "./cmd/caddy")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// Process is a Caddy running in its own process.
type Process struct {
	BaseURL string
	Addr    string
	cmd     *exec.Cmd
	log     *syncBuffer
}

// syncBuffer collects the process's output, written by exec's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartProcess runs Caddy with a one-site Caddyfile (like Start) in a
// separate process and stops it when the test ends.
func StartProcess(t testing.TB, globals, site string) *Process {
	t.Helper()
	bin := Binary(t)
	port := FreePort(t)
	caddyfile := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n%s\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", globals, port, site)
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Process{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", port), Addr: fmt.Sprintf("127.0.0.1:%d", port), log: new(syncBuffer)}
	p.cmd = exec.Command(bin, "run", "--config", file, "--adapter", "caddyfile")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	deadline := time.Now().Add(20 * time.Second)
	for !listening(p.Addr) {
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			t.Fatalf("caddy did not start:\n%s", p.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// Stop ends the process (gracefully, then by force).
func (p *Process) Stop() {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// Log is what the process printed so far.
func (p *Process) Log() string { return p.log.String() }

// Kill ends the process with SIGKILL: a crash, with no chance to clean up.
func (p *Process) Kill() {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
}
