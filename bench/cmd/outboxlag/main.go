// Command outboxlag measures how far the outbox's webhook trails steady
// closes (issue #31): first the closes/s the gateway sustains alone (wrk, 16
// connections, no outbox app), then, at each of -rates (shares of that),
// closes paced at that rate through a Caddy without the app and through one
// with the app delivering to a fast recording receiver on loopback. For each
// rate it prints closes/s and close latency with and without the app, and
// the delivery lag (the receiver's clock minus the event's created_at, the
// close's time) at p50, p99 and max, with what was left pending when the
// closes stopped. It prints Markdown.
//
//	go build -o .tmp/bin/caddy ./cmd/caddy && go build -o .tmp/bin/bench-seed ./bench/cmd/seed
//	go run ./bench/cmd/outboxlag -dsn 'root@tcp(127.0.0.1:3306)/rocketchat_voip_bench?parseTime=true'
//
// The database must be migrated; its rooms and events are reseeded.
package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
)

var (
	binDir   = flag.String("bin", ".tmp/bin", "directory with caddy and bench-seed")
	dsn      = flag.String("dsn", "", "DSN of the (migrated) bench database")
	port     = flag.Int("port", 18291, "first of four loopback ports: Caddy with the app, Caddy without, the receiver, a refused upstream")
	duration = flag.Duration("d", 12*time.Second, "closes per run")
	rates    = flag.String("rates", "0.1,0.25,0.5", "paced rates, as shares of the closes/s the gateway sustains alone")
	rooms    = flag.Int("rooms", 60000, "rooms seeded (each run reopens them)")
	clients  = flag.Int("clients", 64, "most closes in flight at once in a paced run")
	batch    = flag.Int("batch", 0, "the outbox's batch (0: its default, 64); a smaller one makes batches full, as a faster machine's rates do with 64")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	db, err := sql.Open("mysql", *dsn)
	must(err)
	defer db.Close()
	defer func() { os.RemoveAll(configDir()) }()
	wrkDir, _ := filepath.Abs("bench/wrk")
	os.Setenv("BENCH_WRK_DIR", wrkDir)
	appAddr := fmt.Sprintf("127.0.0.1:%d", *port)
	plainAddr := fmt.Sprintf("127.0.0.1:%d", *port+1)
	receiverAddr := fmt.Sprintf("127.0.0.1:%d", *port+2)
	refusedAddr := fmt.Sprintf("127.0.0.1:%d", *port+3)

	must(exec.Command(filepath.Join(*binDir, "bench-seed"), "-dsn", *dsn, "-rooms", strconv.Itoa(*rooms), "-call-rooms", "0").Run())
	rc := startReceiver(receiverAddr)
	batchLine := ""
	if *batch > 0 {
		batchLine = fmt.Sprintf("\n\t\tbatch %d", *batch)
	}
	// Signed, as a deployment's deliveries are (the receiver does not check).
	globals := fmt.Sprintf("rocketchat_voip_outbox {\n\t\tdsn %q\n\t\twebhook http://%s/hook {\n\t\t\tsecret bench-webhook-secret\n\t\t}%s\n\t}", *dsn, receiverAddr, batchLine)

	// The app's Caddy runs only during its own runs: it would otherwise
	// deliver the events of the closes made without it.
	plain := startCaddy("plain", "", site(plainAddr, refusedAddr))
	waitFor(plainAddr)
	defer stopCaddy(plain)
	reopen()
	alone := wrkCloses(plainAddr)
	batchNote := "default batch"
	if *batch > 0 {
		batchNote = fmt.Sprintf("batch %d", *batch)
	}
	fmt.Printf("Outbox lag at paced closes (%s, %v per run); %s. The gateway alone (no outbox app, wrk, 16 connections): %.0f closes/s.\n\n",
		batchNote, *duration, version(db), alone)
	fmt.Println("| paced at | closes/s without the app / with it | close p99 without / with | delivery lag p50 / p99 / max | pending when closes stopped | delivered (once each, in room order) |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, share := range strings.Split(*rates, ",") {
		f, err := strconv.ParseFloat(share, 64)
		must(err)
		rate := f * alone
		reopen()
		without := paced(plainAddr, rate)

		reopen()
		rc.reset()
		app := startCaddy("app", globals, site(appAddr, refusedAddr))
		waitFor(appAddr)
		with := paced(appAddr, rate)
		left := pending(db)
		for deadline := time.Now().Add(30 * time.Second); pending(db) > 0 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		stopCaddy(app)
		lags, dup, disorder := rc.result()
		fmt.Printf("| %.0f/s (%.0f%%) | %.0f / %.0f (%.2f×) | %s / %s | %s / %s / %s | %d | %d of %d (%d twice, %d out of order) |\n",
			rate, 100*f, without.rate, with.rate, with.rate/without.rate,
			ms(without.p99), ms(with.p99),
			ms(pct(lags, 50)), ms(pct(lags, 99)), ms(pct(lags, 100)), left,
			len(lags), with.ok, dup, disorder)
	}
	fmt.Println()
}

// run is one paced run's outcome.
type run struct {
	rate float64       // closes answered 200 per second
	ok   int           // closes answered 200
	p99  time.Duration // close latency, from its scheduled start
}

// paced closes fresh rooms at rate for -d, open loop: the i-th close is due
// at start + i/rate whatever the earlier ones take (up to -clients in
// flight), and its latency counts from when it was due.
func paced(addr string, rate float64) run {
	n := int(rate * duration.Seconds())
	due := make(chan int, *clients)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *clients}, Timeout: 10 * time.Second}
	var (
		mu    sync.Mutex
		lat   []time.Duration
		ok    atomic.Int64
		wg    sync.WaitGroup
		start = time.Now()
	)
	for range *clients {
		wg.Go(func() {
			for i := range due {
				at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
				if d := time.Until(at); d > 0 {
					time.Sleep(d)
				}
				body := fmt.Sprintf(`{"rid":"BENCH%07d","token":"bench-visitor-token"}`, i)
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/api/v1/voip/room.close", strings.NewReader(body))
				req.Header.Set("X-User-Id", "bench-agent")
				req.Header.Set("X-Auth-Token", "bench-agent-token")
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				took := time.Since(at)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						ok.Add(1)
					}
				}
				mu.Lock()
				lat = append(lat, took)
				mu.Unlock()
			}
		})
	}
	for i := range n {
		due <- i
	}
	close(due)
	wg.Wait()
	took := time.Since(start)
	if int(ok.Load()) != n {
		log.Printf("warning: %d of %d closes answered 200", ok.Load(), n)
	}
	return run{rate: float64(ok.Load()) / took.Seconds(), ok: int(ok.Load()), p99: pct(lat, 99)}
}

// receiver is a fast webhook that records each event's lag and checks
// each room's order and that no event comes twice.
type receiver struct {
	mu       sync.Mutex
	lags     []time.Duration
	last     map[string]int64
	seen     map[int64]bool
	dup, bad int
}

func startReceiver(addr string) *receiver {
	rc := &receiver{}
	rc.reset()
	ln, err := net.Listen("tcp", addr)
	must(err)
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		body, _ := io.ReadAll(r.Body)
		var b outbox.Body
		if err := json.Unmarshal(body, &b); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		created, err := time.Parse(time.RFC3339Nano, b.CreatedAt)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		if rc.seen[b.ID] {
			rc.dup++
		}
		rc.seen[b.ID] = true
		if b.ID < rc.last[b.Rid] {
			rc.bad++
		}
		rc.last[b.Rid] = max(rc.last[b.Rid], b.ID)
		rc.lags = append(rc.lags, now.Sub(created))
		rc.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	return rc
}

func (rc *receiver) reset() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.lags, rc.last, rc.seen, rc.dup, rc.bad = nil, map[string]int64{}, map[int64]bool{}, 0, 0
}

func (rc *receiver) result() (lags []time.Duration, dup, disorder int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.lags), rc.dup, rc.bad
}

// pct is the nearest-rank p-th percentile of v (100: the maximum).
func pct(v []time.Duration, p int) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[max(0, (len(s)*p+99)/100-1)]
}

func ms(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func version(db *sql.DB) string {
	var v string
	db.QueryRow("SELECT VERSION()").Scan(&v)
	return v
}

// reopen reopens the rooms closed by a run and drops their messages and
// events.
func reopen() {
	must(exec.Command(filepath.Join(*binDir, "bench-seed"), "-dsn", *dsn, "-reopen").Run())
}

func pending(db *sql.DB) int {
	var n int
	db.QueryRow("SELECT COUNT(*) FROM room_events WHERE delivery_state = 'pending'").Scan(&n)
	return n
}

// site is the module in front of an upstream (which closes never reach).
func site(addr, upstream string) string {
	return fmt.Sprintf("http://%s {\n\trocketchat_voip {\n\t\tdsn %q\n\t\trate_limit off\n\t}\n\treverse_proxy %s\n}\n", addr, *dsn, upstream)
}

// configDir holds this run's Caddyfiles, apart from any other run's.
var configDir = sync.OnceValue(func() string {
	dir, err := os.MkdirTemp("", "outboxlag-")
	must(err)
	return dir
})

func startCaddy(name, globals, sites string) *exec.Cmd {
	file := filepath.Join(configDir(), name+".Caddyfile")
	must(os.WriteFile(file, []byte(fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\toutput discard\n\t}\n\t%s\n}\n%s", globals, sites)), 0o600))
	cmd := exec.Command(filepath.Join(*binDir, "caddy"), "run", "--config", file, "--adapter", "caddyfile")
	cmd.Stderr = os.Stderr
	must(cmd.Start())
	return cmd
}

func stopCaddy(c *exec.Cmd) {
	c.Process.Signal(os.Interrupt)
	c.Wait()
}

func waitFor(addr string) {
	for range 400 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("%s did not come up", addr)
}

// wrkCloses closes rooms at 16 connections for -d and returns closes/s.
func wrkCloses(addr string) float64 {
	out, err := exec.Command("wrk", "-t2", "-c16", "-d"+duration.String(), "--timeout", "5s", "-s", "bench/wrk/close.lua", "http://"+addr, "--", "0", "2").Output()
	must(err)
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	var r struct {
		RPS    float64 `json:"rps"`
		Non2xx int     `json:"non2xx"`
	}
	must(json.Unmarshal(lines[len(lines)-1], &r))
	if r.Non2xx > 0 {
		log.Printf("warning: %d closes were not 200", r.Non2xx)
	}
	return r.RPS
}
