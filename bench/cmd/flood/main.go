// Command flood is the hostile-load test (scripts/flood.sh sets it up):
// -clients connections with made-up X-User-Id/X-Auth-Token, each trickling a
// body of -body bytes over -over, while an agent closes -closes rooms at
// -rate a second. It samples the gateway's resident memory (-pid) and, at
// the end, reports its peak, the answers of both groups and the error lines
// in the gateway's log (-log).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	addr       = flag.String("addr", "127.0.0.1:18600", "the gateway")
	path       = flag.String("path", "/api/v1/voip/room.close", "room.close's path")
	clients    = flag.Int("clients", 1000, "connections with made-up credentials")
	bodySize   = flag.Int("body", 1048000, "bytes of each made-up body (near max_body)")
	over       = flag.Duration("over", 15*time.Second, "how long each made-up body takes to send")
	dialOver   = flag.Duration("dial-over", 2*time.Second, "spread the connections over this long")
	chunked    = flag.Float64("chunked", 0, "fraction of the made-up bodies sent chunked, without Content-Length")
	agentID    = flag.String("agent", "bench-agent", "the agent's user id")
	agentToken = flag.String("agent-token", "bench-agent-token", "the agent's login token")
	visitor    = flag.String("visitor-token", "bench-visitor-token", "the rooms' visitor token")
	roomFmt    = flag.String("room", "BENCH%07d", "room ids, from index -first")
	first      = flag.Int("first", 0, "first room index")
	closes     = flag.Int("closes", 40, "rooms the agent closes during the flood")
	rate       = flag.Float64("rate", 4, "agent closes a second")
	pid        = flag.Int("pid", 0, "the gateway's process id, for its memory")
	logFile    = flag.String("log", "", "the gateway's JSON log, for its error lines")
	dbTimeout  = flag.Duration("db-timeout", 3*time.Second, "the gateway's db_timeout: every agent close must be answered within it")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	logStart := logSize()
	rssBefore := rss("VmRSS")
	var peak atomic.Int64
	stopSampling := make(chan struct{})
	go func() {
		for {
			peak.Store(max(peak.Load(), rss("VmRSS")))
			select {
			case <-stopSampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	start := time.Now()
	junk := newTally()
	var wg sync.WaitGroup
	for i := range *clients {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * *dialOver / time.Duration(max(*clients, 1)))
			junk.add(trickle(i, float64(i%100)/100 < *chunked))
		})
	}
	agent := newTally()
	// The first close is apart: until it, the agent's credentials are not
	// known here, and it waits for a slot in the same line as the flood.
	var firstClose, slowest time.Duration
	var agentWG sync.WaitGroup
	agentWG.Go(func() {
		time.Sleep(*dialOver) // once every made-up client is connected
		client := &http.Client{Timeout: 30 * time.Second}
		for i := range *closes {
			from := time.Now()
			outcome := closeRoom(client, fmt.Sprintf(*roomFmt, *first+i))
			took := time.Since(from)
			if i == 0 {
				firstClose = took
			} else {
				slowest = max(slowest, took)
			}
			if took > *dbTimeout {
				outcome += " (after db_timeout)"
			}
			agent.add(outcome)
			time.Sleep(time.Duration(float64(time.Second) / *rate) - took)
		}
	})
	agentWG.Wait()
	wg.Wait()
	close(stopSampling)
	elapsed := time.Since(start)

	fmt.Printf("flood: %d clients with made-up credentials, %d-byte bodies over %s (%.0f%% chunked); %d agent closes at %g/s; %s in all\n",
		*clients, *bodySize, *over, *chunked*100, *closes, *rate, elapsed.Round(time.Millisecond))
	if *pid > 0 {
		fmt.Printf("gateway RSS: %s before, %s peak sampled, %s peak of the process (VmHWM)\n", mib(rssBefore), mib(peak.Load()), mib(rss("VmHWM")))
	}
	fmt.Printf("made-up clients: %s\n", junk)
	fmt.Printf("agent closes:    %s; the first in %s, the slowest of the others %s\n", agent, firstClose.Round(time.Millisecond), slowest.Round(time.Millisecond))
	if *logFile != "" {
		levels, errorLines := readLog(logStart)
		fmt.Printf("gateway log: %d error, %d warn lines\n", levels["error"], levels["warn"])
		for _, l := range errorLines {
			fmt.Printf("  %s\n", l)
		}
	}
}

// trickle sends one made-up request and reports how it ended.
func trickle(i int, chunk bool) string {
	conn, err := net.DialTimeout("tcp", *addr, 10*time.Second)
	if err != nil {
		return "dial error: " + shortErr(err)
	}
	defer conn.Close()
	var head strings.Builder
	fmt.Fprintf(&head, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nX-User-Id: flood%d\r\nX-Auth-Token: made-up-%d\r\n", *path, *addr, i, i)
	if chunk {
		head.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	} else {
		fmt.Fprintf(&head, "Content-Length: %d\r\n\r\n", *bodySize)
	}
	answered := make(chan string, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			answered <- "no answer: " + shortErr(err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answered <- strconv.Itoa(resp.StatusCode)
	}()
	if _, err := io.WriteString(conn, head.String()); err != nil {
		return "write error: " + shortErr(err)
	}
	const step = 250 * time.Millisecond
	steps := max(int(*over/step), 1)
	piece := bytes.Repeat([]byte(" "), *bodySize/steps+1)
	sent := 0
	for s := 0; s < steps && sent < *bodySize; s++ {
		select {
		case outcome := <-answered:
			return outcome + " before the body was sent"
		case <-time.After(step):
		}
		p := piece[:min(len(piece), *bodySize-sent)]
		var err error
		if chunk {
			_, err = fmt.Fprintf(conn, "%x\r\n%s\r\n", len(p), p)
		} else {
			_, err = conn.Write(p)
		}
		if err != nil {
			break // the gateway answered and closed; the answer says how
		}
		sent += len(p)
	}
	if chunk {
		io.WriteString(conn, "0\r\n\r\n")
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	return <-answered
}

func closeRoom(client *http.Client, rid string) string {
	body := fmt.Sprintf(`{"rid":%q,"token":%q}`, rid, *visitor)
	req, _ := http.NewRequest(http.MethodPost, "http://"+*addr+*path, strings.NewReader(body))
	req.Header.Set("X-User-Id", *agentID)
	req.Header.Set("X-Auth-Token", *agentToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "error: " + shortErr(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return strconv.Itoa(resp.StatusCode)
}

func shortErr(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Op + ": " + op.Err.Error()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed"
	}
	return err.Error()
}

// tally counts outcomes.
type tally struct {
	mu sync.Mutex
	n  map[string]int
}

func newTally() *tally { return &tally{n: map[string]int{}} }

func (t *tally) add(outcome string) {
	t.mu.Lock()
	t.n[outcome]++
	t.mu.Unlock()
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(t.n)) {
		parts = append(parts, fmt.Sprintf("%d × %s", t.n[k], k))
	}
	return strings.Join(parts, ", ")
}

// rss reads a field (in kB) of the gateway's /proc status, in bytes.
func rss(field string) int64 {
	if *pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", *pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func logSize() int64 {
	if fi, err := os.Stat(*logFile); err == nil {
		return fi.Size()
	}
	return 0
}

// readLog counts the log's lines by level, from offset on, and returns the
// error lines (the first 10, with how many times each message came).
func readLog(offset int64) (map[string]int, []string) {
	levels := map[string]int{}
	f, err := os.Open(*logFile)
	if err != nil {
		return levels, []string{err.Error()}
	}
	defer f.Close()
	f.Seek(offset, io.SeekStart)
	msgs := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e struct{ Level, Logger, Msg, Error string }
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		levels[e.Level]++
		if e.Level == "error" {
			msgs[e.Logger+": "+e.Msg+" "+e.Error]++
		}
	}
	var lines []string
	for _, m := range slices.Sorted(maps.Keys(msgs)) {
		if len(lines) == 10 {
			break
		}
		lines = append(lines, fmt.Sprintf("%d × %s", msgs[m], m))
	}
	return levels, lines
}
