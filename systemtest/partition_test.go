package systemtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// silentAddr is a loopback address that drops connection attempts
// silently, as a database behind a partition does: no RST, no ICMP. It is
// a socket listening with a backlog of 0 whose only slot one connection
// of the test's own fills, so that the kernel drops every further SYN and
// a dial waits out its timeout. close lets the address go (a database may
// then appear there).
func silentAddr(t *testing.T) (addr string, close func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	name, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := name.(*syscall.SockaddrInet4).Port
	filler, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Connect(filler, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	closed := false
	close = func() {
		if !closed {
			closed = true
			syscall.Close(fd)
			syscall.Close(filler)
		}
	}
	t.Cleanup(close)
	return fmt.Sprintf("127.0.0.1:%d", port), close
}

// dialsPending lists the local ports of this host's TCP connections to
// port still in SYN_SENT: dials that no answer has ended yet.
func dialsPending(t *testing.T, port int) []string {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Error(err)
		return nil
	}
	defer f.Close()
	var local []string
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		_, remotePort, _ := strings.Cut(fields[2], ":")
		p, err := strconv.ParseInt(remotePort, 16, 32)
		if err == nil && int(p) == port && fields[3] == "02" { // TCP_SYN_SENT
			_, localPort, _ := strings.Cut(fields[1], ":")
			local = append(local, localPort)
		}
	}
	return local
}

// firstDial watches for the first dial to port and returns a function
// that reports whether that dial is still pending.
func firstDial(t *testing.T, port int) (stillPending func() bool) {
	t.Helper()
	seen := make(chan string, 1)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		for {
			if ports := dialsPending(t, port); len(ports) > 0 {
				seen <- ports[0]
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() bool {
		var first string
		select {
		case first = <-seen:
		default:
			t.Fatal("no dial to the silent database was seen")
		}
		return slices.Contains(dialsPending(t, port), first)
	}
}

// TestStartDuringAPartition: Caddy starts while its database's address
// drops packets (a partition) and the dial timeout is long. Pass-through
// traffic is served while the gateway's first dial (which the first
// contact bounds to 5 s) is still pending, and
// room.close answers 503. When the database answers at last and refuses
// the gateway's password, that is logged at error and db_up stays 0.
func TestStartDuringAPartition(t *testing.T) {
	e := seededEnv(t)
	addr, free := silentAddr(t)
	_, portText, _ := strings.Cut(addr, ":")
	port, _ := strconv.Atoi(portText)
	cfg := e.db.Cfg.Clone()
	cfg.Addr = addr
	cfg.Passwd = "not-the-password-42"
	cfg.Timeout = 60 * time.Second // the dial waits for the context, not this
	moduleLog := filepath.Join(t.TempDir(), "caddy.log")
	globals := fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel INFO\n\t}\n", moduleLog)
	handlers := fmt.Sprintf("\trocketchat_voip {\n\t\tdsn %q\n\t\tdb_timeout 500ms\n\t\trate_limit off\n\t}\n\treverse_proxy %s", cfg.FormatDSN(), e.up.Addr)
	pending := firstDial(t, port)
	loading := time.Now()
	e.caddy = testcaddy.Start(t, globals, withMetricsRoute(handlers))

	e.expectPassThrough(t)
	t.Logf("pass-through answered %v after the load began", time.Since(loading).Round(time.Millisecond))
	if !pending() {
		t.Fatal("pass-through answered only after the gateway's first dial to the database ended: the start waited it out")
	}
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 503, body503)
	dbUp := fmt.Sprintf(`caddy_rocketchat_voip_db_up{database="tcp(%s)/%s"}`, addr, e.db.Name)
	if v, ok := scrape(t, e)[dbUp]; !ok || v != 0 {
		t.Fatalf("%s = %v (present %v), want 0 during the partition", dbUp, v, ok)
	}

	// The partition heals; the server answers, and refuses the password.
	free()
	testdb.StartProxyOn(t, addr, e.db.Cfg.Addr)
	line := waitForLogLine(t, moduleLog, "database refused the configuration", 30*time.Second)
	if line["level"] != "error" || !strings.Contains(fmt.Sprint(line["error"]), "Access denied") {
		t.Fatalf("the late refusal is logged as %v", line)
	}
	if strings.Contains(readFile(t, moduleLog), cfg.Passwd) {
		t.Fatal("the log shows the password")
	}
	if v := scrape(t, e)[dbUp]; v != 0 {
		t.Fatalf("%s = %v with the password refused, want 0", dbUp, v)
	}
	expect(t, e.post(t, closeBody(e.roomID, e.visitor.Token)), 503, body503)
	e.expectPassThrough(t)
	e.expectNothingUpstream(t)
}

// TestRequireDatabaseDuringAPartition: require_database still waits for the
// database at start, within its bound, and fails the load without it.
func TestRequireDatabaseDuringAPartition(t *testing.T) {
	db := testdb.New(t)
	addr, _ := silentAddr(t)
	cfg := db.Cfg.Clone()
	cfg.Addr = addr
	cfg.Timeout = 60 * time.Second
	err := testcaddy.Load(sitesSharingDSN(t, cfg.FormatDSN(), "require_database"))
	if err == nil {
		caddy.Stop() //nolint:errcheck
		t.Fatal("require_database: a config whose database is partitioned away loaded")
	}
	if !strings.Contains(err.Error(), "cannot connect to MySQL at tcp("+addr+")/"+db.Name) {
		t.Fatalf("require_database: %v", err)
	}
}

// waitForLogLine waits for the first JSON log line whose msg contains msg.
func waitForLogLine(t *testing.T, file, msg string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, l := range strings.Split(readFile(t, file), "\n") {
			var line map[string]any
			if json.Unmarshal([]byte(l), &line) == nil && strings.Contains(fmt.Sprint(line["msg"]), msg) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q within %v", msg, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readFile(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}
