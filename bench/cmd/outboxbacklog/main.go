// Command outboxbacklog measures the outbox app through a long receiver
// outage (README, "Outbox: delivering closes", issue #24): with -backlog
// events pending in backoff beside -delivered delivered ones, what one poll
// costs (this build's statements against the statement of the build before
// it, timed here), what MariaDB spends while the app polls (its CPU with the
// app running and stopped, alternately), closes/s at 16 connections through
// a Caddy whose app polls that backlog against one without the app, and how
// fast the backlog drains once a fast local receiver answers, with and
// without closes running at once. It prints Markdown.
//
//	go build -o .tmp/bin/caddy ./cmd/caddy && go build -o .tmp/bin/bench-seed ./bench/cmd/seed
//	go run ./bench/cmd/outboxbacklog -dsn 'root@tcp(127.0.0.1:3306)/rocketchat_voip_bench?parseTime=true' -port 18191
//
// The database must be migrated; its tables are reseeded.
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
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

var (
	binDir    = flag.String("bin", ".tmp/bin", "directory with caddy and bench-seed")
	dsn       = flag.String("dsn", "", "DSN of the (migrated) bench database")
	port      = flag.Int("port", 18191, "first of four loopback ports: Caddy with the app, Caddy without, the receiver, a refused port")
	backlog   = flag.Int("backlog", 300000, "pending events (three per room)")
	delivered = flag.Int("delivered", 1000000, "delivered events beside them")
	rounds    = flag.Int("rounds", 3, "alternating rounds per comparison")
	window    = flag.Duration("window", 10*time.Second, "MariaDB CPU window per round")
	duration  = flag.String("d", "8s", "wrk duration per round")
	parts     = flag.String("only", "poll,cpu,closes,drain", "parts to run (drain-with-closes: only the second drain)")
)

func want(part string) bool { return strings.Contains(","+*parts+",", ","+part+",") }

// oldCandidatesSQL is the claim's statement before migration 0004, timed
// against this build's for the same backlog.
const oldCandidatesSQL = `SELECT e.id FROM room_events e
WHERE e.delivery_state = 'pending'
  AND (e.next_attempt_at IS NULL OR e.next_attempt_at <= ?)
  AND (e.claim_until IS NULL OR e.claim_until < ?)
  AND NOT EXISTS (SELECT 1 FROM room_events p
                  WHERE p.rid = e.rid AND p.id < e.id AND p.delivery_state IN ('pending', 'parked'))
ORDER BY e.id LIMIT ?`

func main() {
	flag.Parse()
	log.SetFlags(0)
	db, err := sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	defer func() { os.RemoveAll(configDir()) }()
	wrkDir, _ := filepath.Abs("bench/wrk")
	os.Setenv("BENCH_WRK_DIR", wrkDir)
	appAddr := fmt.Sprintf("127.0.0.1:%d", *port)
	plainAddr := fmt.Sprintf("127.0.0.1:%d", *port+1)
	receiverAddr := fmt.Sprintf("127.0.0.1:%d", *port+2)
	refusedAddr := fmt.Sprintf("127.0.0.1:%d", *port+3)
	dbPid := findDBServer()

	must(exec.Command(filepath.Join(*binDir, "bench-seed"), "-dsn", *dsn, "-rooms", "60000", "-call-rooms", "0").Run())
	seedBacklog(db, "NOW(3) + INTERVAL 1 HOUR")
	fmt.Printf("Backlog: %d pending events in backoff (3 per room, due in an hour), %d delivered; MariaDB %s.\n\n", *backlog, *delivered, version(db))

	// 1. One poll's statements, timed from here (loopback round trip included).
	if want("poll") {
		poll(db)
	}
	appGlobals := func(webhook string) string {
		return fmt.Sprintf("rocketchat_voip_outbox {\n\t\tdsn %q\n\t\twebhook %s {\n\t\t\tunsigned\n\t\t}\n\t\tmax_attempts 1000\n\t}", *dsn, webhook)
	}
	site := func(addr string) string { return site(addr, refusedAddr) }
	if want("cpu") {
		cpu(dbPid, appGlobals("http://"+refusedAddr+"/hook"), site(appAddr), appAddr)
	}
	plain := startCaddy("plain", "", site(plainAddr))
	waitFor(plainAddr)
	defer stopCaddy(plain)
	if want("closes") {
		closes(db, appGlobals("http://"+refusedAddr+"/hook"), site(appAddr), appAddr, plainAddr)
	}
	if want("drain") || want("drain-with-closes") {
		drain(db, appGlobals("http://"+receiverAddr+"/hook"), site(appAddr), appAddr, plainAddr, receiverAddr)
	}
}

func poll(db *sql.DB) {
	fmt.Println("| one poll | rows examined (EXPLAIN) | time per poll |")
	fmt.Println("|---|---|---|")
	now := time.Now().UTC().Truncate(time.Millisecond) // as the app passes it
	fmt.Printf("| before (one statement) | %s | %s |\n", explainRows(db, oldCandidatesSQL, now, now, 64), timeIt(db, 5, oldCandidatesSQL, now, now, 64))
	fmt.Printf("| this build: the claim's scan | %s | %s |\n", explainRows(db, outbox.CandidatesSQL, now, now, 128), timeIt(db, 2000, outbox.CandidatesSQL, now, now, 128))
	fmt.Printf("| this build: the earliest retry | %s | %s |\n", explainRows(db, outbox.NextDueSQL, now), timeIt(db, 2000, outbox.NextDueSQL, now))
	fmt.Printf("| this build: the gauges' counts (every ~100× their time) | | %s |\n\n", timeIt(db, 5, `SELECT
  (SELECT COUNT(*) FROM room_events WHERE delivery_state = 'pending'),
  (SELECT COUNT(*) FROM room_events WHERE delivery_state = 'parked')`))
}

// cpu: MariaDB's CPU while the app polls the backlog, and while it is off.
func cpu(dbPid int, globals, sites, appAddr string) {
	var on, off []float64
	for r := 0; r < *rounds; r++ {
		c := startCaddy("app", globals, sites)
		waitFor(appAddr)
		time.Sleep(2 * time.Second) // past its start
		on = append(on, cores(dbPid, *window))
		stopCaddy(c)
		time.Sleep(time.Second)
		off = append(off, cores(dbPid, *window))
	}
	fmt.Printf("MariaDB CPU over %v windows, app polling the backlog / no app: %s / %s cores (medians %.3f / %.3f; difference %.3f; the server is shared with other work)\n\n",
		*window, list(on), list(off), median(on), median(off), median(on)-median(off))
}

// closes at 16 connections, app polling the backlog vs no app.
func closes(db *sql.DB, globals, sites, appAddr, plainAddr string) {
	app := startCaddy("app", globals, sites)
	waitFor(appAddr)
	var withApp, without []float64
	for r := 0; r < *rounds; r++ {
		reopen(db)
		without = append(without, wrk(plainAddr))
		reopen(db)
		withApp = append(withApp, wrk(appAddr))
	}
	stopCaddy(app)
	fmt.Printf("Closes/s at 16 connections, Caddy whose app polls the backlog / Caddy without the app: %s / %s (best %.0f / %.0f = %.2f×)\n\n",
		list(withApp), list(without), slices.Max(withApp), slices.Max(without), slices.Max(withApp)/slices.Max(without))
}

// drain: the receiver answers, and the backlog drains, alone and beside
// closes.
func drain(db *sql.DB, globals, sites, appAddr, plainAddr, receiverAddr string) {
	rc := startReceiver(receiverAddr)
	modes := []bool{false, true}
	if !want("drain") {
		modes = []bool{true}
	}
	for _, withCloses := range modes {
		reopen(db)
		db.Exec("DELETE FROM room_events WHERE rid LIKE 'BL%'")
		seedBacklog(db, "NOW(3) - INTERVAL 1 SECOND")
		rc.reset()
		start := time.Now()
		app := startCaddy("app", globals, sites)
		var closes, plainCloses float64
		if withCloses {
			waitFor(appAddr)
			closes = wrk(appAddr)
		}
		for pending(db) > 0 && time.Since(start) < 10*time.Minute {
			time.Sleep(100 * time.Millisecond)
		}
		took := time.Since(start)
		stopCaddy(app)
		if withCloses {
			reopen(db)
			plainCloses = wrk(plainAddr)
		}
		n, bad := rc.result()
		line := fmt.Sprintf("Drain of %d events (3 per room) once the receiver answers: %v, %.0f events/s; %d deliveries, %d out of room order", *backlog, took.Round(100*time.Millisecond), float64(*backlog)/took.Seconds(), n, bad)
		if withCloses {
			line += fmt.Sprintf("; closes/s at 16 connections during the drain %.0f, without the app after it %.0f (%.2f×)", closes, plainCloses, closes/plainCloses)
		}
		fmt.Println(line + "\n")
	}
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

// seedBacklog replaces the delivered and pending seeded events: -delivered
// delivered a day ago, and -backlog pending, next attempt at due.
func seedBacklog(db *sql.DB, due string) {
	for _, q := range []string{"DELETE FROM room_events WHERE rid LIKE 'BL%' OR rid LIKE 'DL%'"} {
		if _, err := db.Exec(q); err != nil {
			log.Fatal(err)
		}
	}
	exec := func(q string, args ...any) {
		var err error
		for range 3 { // a busy shared server has lost a temporary table under us
			if _, err = db.Exec(q, args...); err == nil {
				return
			}
			log.Printf("retrying: %v", err)
		}
		log.Fatal(err)
	}
	exec(testdb.SeedEventsSQL("CONCAT('DL', s.n)", "delivery_state, attempts, delivered_at", "'delivered', 1, NOW(3) - INTERVAL 1 DAY", *delivered), *delivered)
	exec(testdb.SeedEventsSQL(fmt.Sprintf("CONCAT('BL', s.n %% %d)", max(1, *backlog/3)), "attempts, next_attempt_at", "3, "+due, *backlog), *backlog)
	db.Exec("ANALYZE TABLE room_events")
}

// reopen reopens the rooms closed by a wrk run and drops their messages and
// events, leaving the seeded backlog.
func reopen(db *sql.DB) {
	for _, q := range []string{
		"DELETE FROM messages",
		"DELETE FROM room_events WHERE rid LIKE 'BENCH%'",
		`UPDATE rooms SET open = TRUE, closed_at = NULL, closer = NULL, closed_by_id = NULL,
  closed_by_username = NULL, call_duration = NULL, call_waiting_time = NULL, call_total_hold_time = NULL,
  visitor_status = NULL, msgs = 0, lm = NULL, last_message_id = NULL WHERE id LIKE 'BENCH%' AND open = FALSE`,
	} {
		if _, err := db.Exec(q); err != nil {
			log.Fatal(err)
		}
	}
}

func pending(db *sql.DB) int {
	var n int
	db.QueryRow("SELECT COUNT(*) FROM room_events WHERE delivery_state = 'pending' AND rid LIKE 'BL%'").Scan(&n)
	return n
}

func explainRows(db *sql.DB, query string, args ...any) string {
	rows, err := db.Query("EXPLAIN "+query, args...)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var parts []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		rows.Scan(ptrs...)
		row := map[string]string{}
		for i, c := range cols {
			row[c] = vals[i].String
		}
		parts = append(parts, fmt.Sprintf("%s %s %s: %s", row["select_type"], row["table"], row["key"], row["rows"]))
	}
	return strings.Join(parts, "; ")
}

// timeIt is the mean time of n runs of a query (its rows read to the end).
func timeIt(db *sql.DB, n int, query string, args ...any) string {
	stmt, err := db.Prepare(query)
	must(err)
	defer stmt.Close()
	start := time.Now()
	for range n {
		rows, err := stmt.Query(args...)
		must(err)
		for rows.Next() {
		}
		rows.Close()
	}
	return (time.Since(start) / time.Duration(n)).Round(time.Microsecond).String()
}

// site is the module in front of an upstream (which closes never reach).
func site(addr, upstream string) string {
	return fmt.Sprintf("http://%s {\n\trocketchat_voip {\n\t\tdsn %q\n\t\trate_limit off\n\t\tmax_open_conns 64\n\t}\n\treverse_proxy %s\n}\n", addr, *dsn, upstream)
}

// configDir holds this run's Caddyfiles, apart from any other run's.
var configDir = sync.OnceValue(func() string {
	dir, err := os.MkdirTemp("", "outboxbacklog-")
	if err != nil {
		log.Fatal(err)
	}
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

// wrk closes rooms at 16 connections and returns closes/s.
func wrk(addr string) float64 {
	out, err := exec.Command("wrk", "-t2", "-c16", "-d"+*duration, "--timeout", "5s", "-s", "bench/wrk/close.lua", "http://"+addr, "--", "0", "2").Output()
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

// cores is the database server's CPU over a window, in cores.
func cores(pid int, d time.Duration) float64 {
	before := cpuTime(pid)
	time.Sleep(d)
	return (cpuTime(pid) - before).Seconds() / d.Seconds()
}

func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func findDBServer() int {
	for _, name := range []string{"mariadbd", "mysqld"} {
		if out, err := exec.Command("pgrep", "-o", "-x", name).Output(); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
				return pid
			}
		}
	}
	log.Fatal("no MariaDB or MySQL server on this machine to measure")
	return 0
}

func list(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(x, 'f', 3, 64)
		if x > 10 {
			s[i] = strconv.FormatFloat(x, 'f', 0, 64)
		}
	}
	return strings.Join(s, ", ")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// receiver is a fast webhook that counts deliveries and checks each room's
// order.
type receiver struct {
	mu    sync.Mutex
	last  map[string]int64
	n     atomic.Int64
	wrong int
}

func startReceiver(addr string) *receiver {
	rc := &receiver{last: map[string]int64{}}
	ln, err := net.Listen("tcp", addr)
	must(err)
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			ID  int64  `json:"id"`
			Rid string `json:"rid"`
		}
		body, _ := io.ReadAll(r.Body)
		json.Unmarshal(body, &b)
		rc.mu.Lock()
		if b.ID < rc.last[b.Rid] {
			rc.wrong++
		}
		rc.last[b.Rid] = max(rc.last[b.Rid], b.ID)
		rc.mu.Unlock()
		rc.n.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	return rc
}

func (rc *receiver) reset() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.last = map[string]int64{}
	rc.wrong = 0
	rc.n.Store(0)
}

func (rc *receiver) result() (int64, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.n.Load(), rc.wrong
}
