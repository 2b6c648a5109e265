// Command bench runs the load benchmarks (bench/run.sh sets it up): Caddy
// with the module and a plain Caddy in front of a small upstream, driven by
// wrk on loopback, against baselines measured in the same run, alternating
// A/B rounds. It prints a Markdown table of throughput, p50 and p99, and
// the ratios the performance issue asks for.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

type result struct {
	Requests     int     `json:"requests"`
	RPS          float64 `json:"rps"`
	P50          float64 `json:"p50_ms"`
	P99          float64 `json:"p99_ms"`
	SocketErrors int     `json:"socket_errors"`
	Non2xx       int     `json:"non2xx"`
	Failures     int     `json:"failures"`

	// CPU time per request, in µs, of each process taking part: the load
	// generator, the server answering (Caddy, or the net/http baseline), and
	// MariaDB when it runs on this machine.
	LoadCPU, ServerCPU, DBCPU float64
}

var (
	binDir   = flag.String("bin", ".tmp/bin", "directory with caddy, bench-upstream, bench-seed, bench-directsql")
	dsn      = flag.String("dsn", "", "DSN of the (migrated) bench database")
	duration = flag.String("d", "10s", "duration of each wrk / baseline run")
	rounds   = flag.Int("rounds", 2, "A/B rounds per scenario")
	memory   = flag.Int("memory-requests", 1000000, "requests of mixed outcomes for the RSS check (0: skip)")
	rooms    = flag.Int("rooms", 150000, "rooms to seed (each close run reopens them and starts again from the first)")
	only     = flag.String("only", "", "comma-separated scenarios to run (a,b,c,d,e,o,r,x,mem); empty: all")
	admin    = flag.Bool("admin", false, "enable Caddy's admin API on the last of the -ports, for /debug/pprof while a scenario runs")
	oldBin   = flag.String("old", "", "a Caddy built from an older commit, for scenarios o and r (old vs new); bench/run.sh sets it from BENCH_OLD")
	dbDelay  = flag.Duration("db-delay", time.Millisecond, "scenario r: delay bench-delayproxy adds each way between Caddy and MariaDB (Go's timers make 1ms about 2.3 ms of round trip); 0: no proxy, the database local")
	remoteDC = flag.String("remote-db-concurrency", "0,32", "scenario r: db_concurrency settings of this build to run (0: the default)")
	remoteCn = flag.String("remote-conns", "1,16,64", "scenario r: connection counts to run")
	pick     = flag.String("pick", "best", "which round of each side to report: best (highest req/s) or median (by req/s)")
	portBase = flag.Int("ports", 18180, "first of the 20 loopback ports the benchmark listens on")
)

// The loopback addresses, set from -ports by setPorts.
var (
	moduleAddr   string // +0
	plainAddr    string // +1
	lookupAddr   string // +2: directsql -http, the lookup behind bare net/http
	oldAddr      string // +3: the module built from -old
	remoteOld    string // +4: scenario r, the module built from -old, through the delay
	outboxAddr   string // +4: scenario x
	upstreamAddr string // +9
	delayAddr    string // +10: bench-delayproxy in front of MariaDB, scenario r
	adminAddr    string // +19
)

// remoteNewPort is the offset of scenario r's first Caddy of this build,
// through the delay (one port per setting, upwards).
const remoteNewPort = 5

func setPorts() {
	for p, off := range map[*string]int{&moduleAddr: 0, &plainAddr: 1, &lookupAddr: 2, &oldAddr: 3, &remoteOld: 4,
		&outboxAddr: 4, &upstreamAddr: 9, &delayAddr: 10, &adminAddr: 19} {
		*p = port(off)
	}
}

func port(offset int) string { return fmt.Sprintf("127.0.0.1:%d", *portBase+offset) }

// The processes whose CPU time is counted per run.
var caddyPid, lookupPid, dbPid, oldPid int

func main() {
	flag.Parse()
	setPorts()
	log.SetFlags(0)
	defer stop()
	wrkDir, _ := filepath.Abs("bench/wrk")
	os.Setenv("BENCH_WRK_DIR", wrkDir)
	run(bin("bench-seed"), "-dsn", *dsn, "-rooms", strconv.Itoa(*rooms))
	dbPid = findDBServer()

	start(bin("bench-upstream"), "-listen", upstreamAddr)
	adminLine := "admin off"
	if *admin {
		adminLine = "admin " + adminAddr
	}
	caddy := startCaddy(bin("caddy"), "rocketchat-voip-bench", adminLine, moduleSite(moduleAddr)+fmt.Sprintf(`http://%s {
	reverse_proxy %s
}
`, plainAddr, upstreamAddr))
	if *oldBin != "" {
		old := startCaddy(*oldBin, "rocketchat-voip-bench-old", "admin off", moduleSite(oldAddr))
		oldPid = old.Process.Pid
		waitFor(oldAddr)
	}
	caddyPid = caddy.Process.Pid
	lookup := start(bin("bench-directsql"), "-dsn", *dsn, "-http", lookupAddr, "-c", "64")
	lookupPid = lookup.Process.Pid
	waitFor(moduleAddr)
	waitFor(plainAddr)
	waitFor(upstreamAddr)
	waitFor(lookupAddr)

	var rows, cpuRows []string
	add := func(name, baselineName string, base, mod result, target float64) {
		rows = append(rows, compare(name, baselineName, base, mod, target))
		cpuRows = append(cpuRows, cpuRow(name, baselineName, base, mod))
	}
	want := func(s string) bool { return *only == "" || strings.Contains(","+*only+",", ","+s+",") }
	if want("a") {
		var plain, module []result
		for r := 0; r < *rounds; r++ {
			plain = append(plain, wrk(caddyPid, plainAddr, 64, "get.lua"))
			module = append(module, wrk(caddyPid, moduleAddr, 64, "get.lua"))
		}
		add("(a) pass-through GET, 64 conns", "plain reverse_proxy", best(plain), best(module), 0.98)
	}
	if want("b") {
		for _, conns := range []int{16, 64} {
			var direct, module []result
			for r := 0; r < *rounds; r++ {
				run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
				d := directsql("-mode", "close", "-c", strconv.Itoa(conns), "-first", "0")
				direct = append(direct, d)
				run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
				m := wrk(caddyPid, moduleAddr, conns, "close.lua", "0", "2")
				if d.Failures > 0 || m.Non2xx > 0 || m.SocketErrors > 0 {
					log.Printf("warning: close scenario: %d baseline failures, %d non-2xx and %d socket errors from the module (seed more rooms with -rooms?)", d.Failures, m.Non2xx, m.SocketErrors)
				}
				module = append(module, m)
			}
			add(fmt.Sprintf("(b) room.close successes, %d conns", conns), "direct SQL", best(direct), best(module), 0.85)
		}
	}
	for _, s := range []struct {
		key, name, script string
		args              []string
	}{
		{"c", "(c) 401 random tokens, 64 conns", "unauthorized.lua", []string{"-random-token"}},
		{"d", "(d) 403, 64 conns", "forbidden.lua", []string{"-user", "bench-viewer", "-token", "bench-viewer-token"}},
		{"e", "(e) 400 validation failures, 64 conns", "invalid.lua", nil},
	} {
		if !want(s.key) {
			continue
		}
		var direct, overHTTP, module []result
		for r := 0; r < *rounds; r++ {
			direct = append(direct, directsql(append([]string{"-mode", "auth", "-c", "64"}, s.args...)...))
			overHTTP = append(overHTTP, wrk(lookupPid, lookupAddr, 64, s.script))
			module = append(module, wrk(caddyPid, moduleAddr, 64, s.script))
		}
		add(s.name, "direct SQL lookup", best(direct), best(module), 0.9)
		add(s.name, "lookup behind net/http", best(overHTTP), best(module), 0.9)
	}

	// (o) this build against an older one (-old), alternating rounds on the
	// same database: closes as clients pile up, pass-through and rejections.
	var oldRows []string
	if want("o") && *oldBin != "" {
		closeOld, closeNew := map[int]result{}, map[int]result{}
		for _, conns := range []int{16, 64, 256} {
			var o, n []result
			for r := 0; r < *rounds; r++ {
				run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
				o = append(o, wrk(oldPid, oldAddr, conns, "close.lua", "0", "2"))
				run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
				n = append(n, wrk(caddyPid, moduleAddr, conns, "close.lua", "0", "2"))
			}
			closeOld[conns], closeNew[conns] = best(o), best(n)
			oldRows = append(oldRows, oldVsNew(fmt.Sprintf("room.close successes, %d conns", conns), closeOld[conns], closeNew[conns]))
		}
		// Rooms whose call has PBX events, as a real voip room's has (old
		// read them in a query of their own).
		{
			var o, n []result
			for r := 0; r < *rounds; r++ {
				run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
				o = append(o, wrk(oldPid, oldAddr, 16, "close.lua", "0", "2", "CALL"))
				run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
				n = append(n, wrk(caddyPid, moduleAddr, 16, "close.lua", "0", "2", "CALL"))
			}
			oldRows = append(oldRows, oldVsNew("room.close successes, rooms with PBX events, 16 conns", best(o), best(n)))
		}
		for _, s := range []struct{ name, script string }{
			{"pass-through GET, 64 conns", "get.lua"},
			{"401 random tokens, 64 conns", "unauthorized.lua"},
			{"403, 64 conns", "forbidden.lua"},
			{"400 validation failures, 64 conns", "invalid.lua"},
		} {
			var o, n []result
			for r := 0; r < *rounds; r++ {
				o = append(o, wrk(oldPid, oldAddr, 64, s.script))
				n = append(n, wrk(caddyPid, moduleAddr, 64, s.script))
			}
			oldRows = append(oldRows, oldVsNew(s.name, best(o), best(n)))
		}
		oldRows = append(oldRows, fmt.Sprintf("| new: closes/s at 64 and 256 conns over its own at 16 (≥ 0.95) | | %.2f and %.2f | | | | | |",
			closeNew[64].RPS/closeNew[16].RPS, closeNew[256].RPS/closeNew[16].RPS))
	}

	// (r) the database a network hop away, as from an edge node: both builds
	// reach MariaDB through bench-delayproxy, so a close pays its round
	// trips in latency and not only in CPU.
	var remoteRows []string
	if want("r") && *oldBin != "" {
		remoteRows = remoteScenario()
	}

	outboxRow := ""
	if want("x") {
		outboxRow = outboxScenario()
	}

	fmt.Println("| scenario | baseline | baseline req/s | module req/s | ratio (target) | baseline p50 / p99 ms | module p50 / p99 ms | p99 ratio |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
	fmt.Println()
	fmt.Println("CPU time per request, µs (load generator + server + MariaDB):")
	fmt.Println()
	fmt.Println("| scenario | baseline | baseline load / server / db | module load / Caddy / db |")
	fmt.Println("|---|---|---|---|")
	for _, r := range cpuRows {
		fmt.Println(r)
	}

	if *memory > 0 && want("mem") {
		warm := wrkFor(caddyPid, moduleAddr, 64, "mixed.lua", "10s")
		before := rss(caddyPid)
		total := warm.Requests
		for done := 0; done < *memory; {
			r := wrkFor(caddyPid, moduleAddr, 64, "mixed.lua", "30s")
			done += r.Requests
			total += r.Requests
		}
		after := rss(caddyPid)
		fmt.Printf("\nMemory: Caddy RSS %.1f MiB after warm-up, %.1f MiB after %d more requests of mixed outcomes (%+.1f%%)\n",
			float64(before)/1024, float64(after)/1024, total-warm.Requests, 100*(float64(after)/float64(before)-1))
	}
	if outboxRow != "" {
		fmt.Println()
		fmt.Println("| scenario | closes | outbox | pending |")
		fmt.Println("|---|---|---|---|")
		fmt.Println(outboxRow)
	}
	if len(remoteRows) > 0 {
		fmt.Println()
		fmt.Printf("| scenario (r): database %v each way away, this build vs -old | old req/s | new req/s | new / old | old p50 / p99 ms | new p50 / p99 ms | old / new CPU µs/req (Caddy + db) | unexpected answers old / new |\n", *dbDelay)
		fmt.Println("|---|---|---|---|---|---|---|---|")
		for _, r := range remoteRows {
			fmt.Println(r)
		}
	}
	if len(oldRows) > 0 {
		fmt.Println()
		fmt.Println("| scenario (o): this build vs -old | old req/s | new req/s | new / old | old p50 / p99 ms | new p50 / p99 ms | old / new CPU µs/req (Caddy + db) | unexpected answers old / new |")
		fmt.Println("|---|---|---|---|---|---|---|---|")
		for _, r := range oldRows {
			fmt.Println(r)
		}
	}
}

func bin(name string) string { return filepath.Join(*binDir, name) }

var children []*exec.Cmd

func start(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	children = append(children, cmd)
	return cmd
}

func run(name string, args ...string) []byte {
	out, _ := runCPU(name, args...)
	return out
}

// runCPU runs a command to its end and returns its output and CPU time.
func runCPU(name string, args ...string) ([]byte, time.Duration) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		stop()
		log.Fatalf("%s %v: %v", name, args, err)
	}
	return out, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

func stop() {
	for _, c := range children {
		c.Process.Kill()
	}
	os.RemoveAll(configDir())
}

func waitFor(addr string) {
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	log.Fatalf("%s did not come up", addr)
}

func wrk(serverPid int, addr string, conns int, script string, args ...string) result {
	return wrkFor(serverPid, addr, conns, script, *duration, args...)
}

func wrkFor(serverPid int, addr string, conns int, script, d string, args ...string) result {
	cmdArgs := []string{"-t" + strconv.Itoa(min(2, conns)), "-c" + strconv.Itoa(conns), "-d" + d, "--timeout", "5s", "-s", filepath.Join("bench/wrk", script), "http://" + addr}
	if len(args) > 0 {
		cmdArgs = append(cmdArgs, append([]string{"--"}, args...)...)
	}
	server, db := cpuTime(serverPid), cpuTime(dbPid)
	out, load := runCPU("wrk", cmdArgs...)
	r := lastJSON(out)
	r.setCPU(load, cpuTime(serverPid)-server, cpuTime(dbPid)-db)
	return r
}

// directsql runs the SQL baseline, which is its own load generator.
func directsql(args ...string) result {
	db := cpuTime(dbPid)
	out, load := runCPU(bin("bench-directsql"), append([]string{"-dsn", *dsn, "-d", *duration}, args...)...)
	r := lastJSON(out)
	r.setCPU(load, 0, cpuTime(dbPid)-db)
	return r
}

func (r *result) setCPU(load, server, db time.Duration) {
	if r.Requests == 0 {
		return
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(r.Requests) }
	r.LoadCPU, r.ServerCPU, r.DBCPU = per(load), per(server), per(db)
}

// cpuTime is the user+system CPU time of a running process (0 if unknown).
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the line, in clock ticks (100 per second).
	rest := data[bytes.LastIndexByte(data, ')')+2:]
	f := strings.Fields(string(rest))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// findDBServer is the pid of a MariaDB or MySQL server on this machine, or 0.
func findDBServer() int {
	for _, name := range []string{"mariadbd", "mysqld"} {
		out, err := exec.Command("pgrep", "-o", "-x", name).Output()
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
				return pid
			}
		}
	}
	return 0
}

func lastJSON(out []byte) result {
	var r result
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if err := json.Unmarshal(lines[len(lines)-1], &r); err != nil {
		stop()
		log.Fatalf("no result in %s", out)
	}
	return r
}

// best is the round with the highest throughput (the least disturbed by the
// rest of the machine).
// best is the round of a side that -pick reports.
func best(rs []result) result {
	if *pick == "median" {
		sorted := slices.Clone(rs)
		slices.SortFunc(sorted, func(a, b result) int { return cmp.Compare(a.RPS, b.RPS) })
		return sorted[len(sorted)/2]
	}
	b := rs[0]
	for _, r := range rs[1:] {
		if r.RPS > b.RPS {
			b = r
		}
	}
	return b
}

func compare(name, baselineName string, base, mod result, target float64) string {
	ratio := mod.RPS / base.RPS
	mark := "✓"
	if ratio < target {
		mark = "✗"
	}
	return fmt.Sprintf("| %s | %s | %.0f | %.0f | %.2f (≥ %.2f) %s | %.2f / %.2f | %.2f / %.2f | %.2f |",
		name, baselineName, base.RPS, mod.RPS, ratio, target, mark, base.P50, base.P99, mod.P50, mod.P99, mod.P99/base.P99)
}

func cpuRow(name, baselineName string, base, mod result) string {
	return fmt.Sprintf("| %s | %s | %.0f / %.0f / %.0f | %.0f / %.0f / %.0f |",
		name, baselineName, base.LoadCPU, base.ServerCPU, base.DBCPU, mod.LoadCPU, mod.ServerCPU, mod.DBCPU)
}

// rss is the resident set of pid in KiB.
func rss(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}

func oldVsNew(name string, o, n result) string {
	return fmt.Sprintf("| %s | %.0f | %.0f | %.2f | %.2f / %.2f | %.2f / %.2f | %.0f / %.0f (Caddy %.0f / %.0f, db %.0f / %.0f) | %d / %d |",
		name, o.RPS, n.RPS, n.RPS/o.RPS, o.P50, o.P99, n.P50, n.P99, o.ServerCPU+o.DBCPU, n.ServerCPU+n.DBCPU,
		o.ServerCPU, n.ServerCPU, o.DBCPU, n.DBCPU, o.Non2xx+o.SocketErrors, n.Non2xx+n.SocketErrors)
}

// moduleSite is a site with the module in front of the bench upstream, as
// every scenario configures it.
func moduleSite(addr string) string { return moduleSiteWith(addr, *dsn, "") }

// moduleSiteWith is moduleSite with another DSN and extra lines in the
// rocketchat_voip block.
func moduleSiteWith(addr, dsn, extra string) string {
	return fmt.Sprintf(`http://%s {
	rocketchat_voip {
		dsn %q
		rate_limit off
		max_open_conns 64
		%s
	}
	reverse_proxy %s
}
`, addr, dsn, extra, upstreamAddr)
}

// configDir holds this run's Caddyfiles, apart from any other run's.
var configDir = sync.OnceValue(func() string {
	dir, err := os.MkdirTemp("", "rocketchat-voip-bench-")
	if err != nil {
		log.Fatal(err)
	}
	return dir
})

// startCaddy writes a Caddyfile (quiet, no HTTPS, with extra global
// options) in this run's directory and runs bin on it.
func startCaddy(bin, name, globals, sites string) *exec.Cmd {
	file := filepath.Join(configDir(), name+".Caddyfile")
	os.WriteFile(file, []byte(fmt.Sprintf(`{
	auto_https off
	persist_config off
	log {
		output discard
	}
	%s
}
%s`, globals, sites)), 0o600)
	return start(bin, "run", "--config", file, "--adapter", "caddyfile")
}
