// Command bench runs the load benchmarks (bench/run.sh sets it up): Caddy
// with the module and a plain Caddy in front of a small upstream, driven by
// wrk on loopback, against baselines measured in the same run, alternating
// A/B rounds. It prints a Markdown table of throughput, p50 and p99, and
// the ratios the performance issue asks for.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	NextRoom     int     `json:"next_room"`
}

var (
	binDir   = flag.String("bin", ".tmp/bin", "directory with caddy, bench-upstream, bench-seed, bench-directsql")
	dsn      = flag.String("dsn", "", "DSN of the (migrated) bench database")
	duration = flag.String("d", "10s", "duration of each wrk / baseline run")
	rounds   = flag.Int("rounds", 2, "A/B rounds per scenario")
	memory   = flag.Int("memory-requests", 1000000, "requests of mixed outcomes for the RSS check (0: skip)")
	rooms    = flag.Int("rooms", 150000, "rooms to seed for the close scenario")
	only     = flag.String("only", "", "comma-separated scenarios to run (a,b,c,d,e,mem); empty: all")
)

const (
	upstreamAddr = "127.0.0.1:18189"
	moduleAddr   = "127.0.0.1:18180"
	plainAddr    = "127.0.0.1:18181"
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	defer stop()
	wrkDir, _ := filepath.Abs("bench/wrk")
	os.Setenv("BENCH_WRK_DIR", wrkDir)
	run(bin("bench-seed"), "-dsn", *dsn, "-rooms", strconv.Itoa(*rooms))

	start(bin("bench-upstream"), "-listen", upstreamAddr)
	caddyfile := filepath.Join(os.TempDir(), "rocketchat-voip-bench.Caddyfile")
	os.WriteFile(caddyfile, []byte(fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	log {
		output discard
	}
}
http://%s {
	rocketchat_voip {
		dsn %q
		rate_limit off
		max_open_conns 64
	}
	reverse_proxy %s
}
http://%s {
	reverse_proxy %s
}
`, moduleAddr, *dsn, upstreamAddr, plainAddr, upstreamAddr)), 0o600)
	caddy := start(bin("caddy"), "run", "--config", caddyfile, "--adapter", "caddyfile")
	waitFor(moduleAddr)
	waitFor(plainAddr)
	waitFor(upstreamAddr)

	var rows []string
	want := func(s string) bool { return *only == "" || strings.Contains(","+*only+",", ","+s+",") }
	if want("a") {
		var plain, module []result
		for r := 0; r < *rounds; r++ {
			plain = append(plain, wrk(plainAddr, 64, "get.lua"))
			module = append(module, wrk(moduleAddr, 64, "get.lua"))
		}
		rows = append(rows, compare("(a) pass-through GET, 64 conns", "plain reverse_proxy", best(plain), best(module), 0.98))
	}
	if want("b") {
		next := 0
		for _, conns := range []int{16, 64} {
			var direct, module []result
			for r := 0; r < *rounds; r++ {
				d := directsql("-mode", "close", "-c", strconv.Itoa(conns), "-first", strconv.Itoa(next))
				next = d.NextRoom + 100
				direct = append(direct, d)
				m := wrk(moduleAddr, conns, "close.lua", strconv.Itoa(next), "2")
				next += m.Requests + 1000
				if d.Failures > 0 || m.Non2xx > 0 || m.SocketErrors > 0 {
					log.Printf("warning: close scenario: %d baseline failures, %d non-2xx and %d socket errors from the module", d.Failures, m.Non2xx, m.SocketErrors)
				}
				module = append(module, m)
			}
			rows = append(rows, compare(fmt.Sprintf("(b) room.close successes, %d conns", conns), "direct SQL", best(direct), best(module), 0.85))
		}
	}
	for _, s := range []struct{ key, name, script string; args []string }{
		{"c", "(c) 401 random tokens, 64 conns", "unauthorized.lua", []string{"-random-token"}},
		{"d", "(d) 403, 64 conns", "forbidden.lua", []string{"-user", "bench-viewer", "-token", "bench-viewer-token"}},
		{"e", "(e) 400 validation failures, 64 conns", "invalid.lua", nil},
	} {
		if !want(s.key) {
			continue
		}
		var direct, module []result
		for r := 0; r < *rounds; r++ {
			direct = append(direct, directsql(append([]string{"-mode", "auth", "-c", "64"}, s.args...)...))
			module = append(module, wrk(moduleAddr, 64, s.script))
		}
		rows = append(rows, compare(s.name, "direct SQL lookup", best(direct), best(module), 0.9))
	}

	fmt.Println("| scenario | baseline | baseline req/s | module req/s | ratio (target) | baseline p50 / p99 ms | module p50 / p99 ms | p99 ratio |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}

	if *memory > 0 && want("mem") {
		warm := wrkFor(moduleAddr, 64, "mixed.lua", "10s")
		before := rss(caddy.Process.Pid)
		total := warm.Requests
		for done := 0; done < *memory; {
			r := wrkFor(moduleAddr, 64, "mixed.lua", "30s")
			done += r.Requests
			total += r.Requests
		}
		after := rss(caddy.Process.Pid)
		fmt.Printf("\nMemory: Caddy RSS %.1f MiB after warm-up, %.1f MiB after %d more requests of mixed outcomes (%+.1f%%)\n",
			float64(before)/1024, float64(after)/1024, total-warm.Requests, 100*(float64(after)/float64(before)-1))
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
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		stop()
		log.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

func stop() {
	for _, c := range children {
		c.Process.Kill()
	}
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

func wrk(addr string, conns int, script string, args ...string) result {
	return wrkFor(addr, conns, script, *duration, args...)
}

func wrkFor(addr string, conns int, script, d string, args ...string) result {
	cmdArgs := []string{"-t2", "-c" + strconv.Itoa(conns), "-d" + d, "--timeout", "5s", "-s", filepath.Join("bench/wrk", script), "http://" + addr}
	if len(args) > 0 {
		cmdArgs = append(cmdArgs, append([]string{"--"}, args...)...)
	}
	return lastJSON(run("wrk", cmdArgs...))
}

func directsql(args ...string) result {
	return lastJSON(run(bin("bench-directsql"), append([]string{"-dsn", *dsn, "-d", *duration}, args...)...))
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
func best(rs []result) result {
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
