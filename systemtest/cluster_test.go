package systemtest

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// clusterDrill is a three-node Galera cluster that scripts/cluster-drill.sh
// built, with one gateway per node and one naming all three.
type clusterDrill struct {
	db       *testdb.DB // on node 1; the cluster replicates it
	nodeDSNs []string   // the test database on each node
	ctl      string     // the script, for kill N / restart N
	agent    testdb.Agent
	gateways []*testcaddy.Process // per node, then the failover one
}

const (
	clusterDBTimeout = time.Second
	// clusterEviction is evs.suspect_timeout in scripts/cluster-drill.sh:
	// how long the cluster holds every commit after a node dies.
	clusterEviction = time.Second
)

// TestClusterDrill runs only under scripts/cluster-drill.sh, which sets
// ROCKETCHAT_VOIP_CLUSTER to the three nodes' server DSNs.
func TestClusterDrill(t *testing.T) {
	nodes := strings.Split(os.Getenv("ROCKETCHAT_VOIP_CLUSTER"), ",")
	if len(nodes) != 3 {
		t.Skip("run by scripts/cluster-drill.sh, which builds a Galera cluster on loopback")
	}
	d := &clusterDrill{ctl: os.Getenv("ROCKETCHAT_VOIP_CLUSTER_CTL")}
	first, err := mysql.ParseDSN(nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	d.db = testdb.NewOn(t, first)
	d.db.SetMaxIdleConns(0) // so that only gateways hold connections
	var addrs []string
	for _, n := range nodes {
		cfg, err := mysql.ParseDSN(n)
		if err != nil {
			t.Fatal(err)
		}
		cfg.DBName = d.db.Name
		d.nodeDSNs = append(d.nodeDSNs, cfg.FormatDSN())
		addrs = append(addrs, cfg.Addr)
	}
	d.agent = d.db.AddUser(t, "agent1", "livechat-agent")
	failover := strings.Replace(d.nodeDSNs[0], "tcp("+addrs[0]+")", "tcp("+strings.Join(addrs, ",")+")", 1)
	up := testcaddy.StartUpstream(t)
	for _, dsn := range append(append([]string{}, d.nodeDSNs...), failover) {
		d.gateways = append(d.gateways, testcaddy.StartProcess(t, "", fmt.Sprintf(
			"\trocketchat_voip {\n\t\tdsn %q\n\t\tdb_timeout %s\n\t\trate_limit off\n\t}\n\treverse_proxy %s", dsn, clusterDBTimeout, up.Addr)))
	}
	t.Run("exactly once across nodes", d.exactlyOnce)
	t.Run("a node dies under load", d.nodeDies)
	t.Run("rows identical on every node", d.identicalRows)
}

type clusterResult struct {
	gateway    int
	rid        string
	start      time.Time
	took       time.Duration
	status     int
	transportE error
}

func (d *clusterDrill) close(gw int, rid, token string) clusterResult {
	r := drillClose(d.gateways[gw].BaseURL, d.agent, rid, token)
	r.gateway = gw
	return r
}

// drillClose closes rid through the gateway at baseURL as agent, timing it;
// a drill's clients call it from many goroutines.
func drillClose(baseURL string, agent testdb.Agent, rid, token string) clusterResult {
	r := clusterResult{rid: rid, start: time.Now()}
	req, _ := http.NewRequest(http.MethodPost, baseURL+closePath, strings.NewReader(closeBody(rid, token)))
	req.Header.Set("X-User-Id", agent.ID)
	req.Header.Set("X-Auth-Token", agent.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	r.took = time.Since(r.start)
	if err != nil {
		r.transportE = err
		return r
	}
	resp.Body.Close()
	r.status = resp.StatusCode
	return r
}

// exactlyOnce: 1,000 rooms, each asked to close three times, once through
// each node's gateway, by 64 clients: one 200 per room, the others
// room-closed, one message and one outbox row per room.
func (d *clusterDrill) exactlyOnce(t *testing.T) {
	rids, tokens := seedRooms(t, d.db, 1000)
	type job struct{ gw, i int }
	var jobs []job
	for i := range rids {
		for gw := range 3 {
			jobs = append(jobs, job{gw, i})
		}
	}
	rand.Shuffle(len(jobs), func(a, b int) { jobs[a], jobs[b] = jobs[b], jobs[a] })
	queue := make(chan job, len(jobs))
	for _, j := range jobs {
		queue <- j
	}
	close(queue)
	var mu sync.Mutex
	statuses := map[int]int{}
	wins := map[string]int{}
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for j := range queue {
				r := d.close(j.gw, rids[j.i], tokens[j.i])
				for tries := 0; r.status == 503 && tries < 5; tries++ {
					r = d.close(j.gw, rids[j.i], tokens[j.i])
				}
				mu.Lock()
				statuses[r.status]++
				if r.status == 200 {
					wins[r.rid]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("answers by status: %v", statuses)
	if statuses[200] != len(rids) || len(wins) != len(rids) || statuses[400] != 2*len(rids) {
		t.Errorf("want %d × 200 (one per room) and %d × room-closed", len(rids), 2*len(rids))
	}
	if n := d.db.Count(t, "messages"); n != len(rids) {
		t.Errorf("%d messages, want %d", n, len(rids))
	}
	if n := d.db.Count(t, "room_events"); n != len(rids) {
		t.Errorf("%d outbox rows, want %d", n, len(rids))
	}
}

// nodeDies: closes at about 150/s through the failover gateway, and a
// trickle through each node's own gateway; node 1 is SIGKILLed, then
// rejoins by IST. Every answer comes within db_timeout; the failover
// gateway fails only requests in flight at the kill, none started a second
// later; every room is closed at most once; and the failover gateway's pool
// returns to node 1 after it rejoins.
func (d *clusterDrill) nodeDies(t *testing.T) {
	rids, tokens := seedRooms(t, d.db, 3000)
	next := make(chan int, len(rids))
	for i := range rids {
		next <- i
	}
	var (
		mu      sync.Mutex
		results []clusterResult
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	worker := func(gw int, every time.Duration) {
		for {
			select {
			case <-stop:
				return
			case <-time.After(every):
			}
			var i int
			select {
			case i = <-next:
			default:
				return
			}
			r := d.close(gw, rids[i], tokens[i])
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
			if r.status != 200 && r.status != 400 {
				next <- i // try again later, through whichever gateway takes it
			}
		}
	}
	for range 8 {
		wg.Go(func() { worker(3, 50*time.Millisecond) }) // ~150/s with the request time
	}
	for gw := range 3 {
		wg.Go(func() { worker(gw, 50*time.Millisecond) })
	}
	time.Sleep(3 * time.Second)
	killed := time.Now()
	if out, err := exec.Command("bash", "-c", d.ctl+" kill 1").CombinedOutput(); err != nil {
		t.Fatalf("kill node 1: %v\n%s", err, out)
	}
	time.Sleep(4 * time.Second)
	restartStart := time.Now()
	if out, err := exec.Command("bash", "-c", d.ctl+" restart 1").CombinedOutput(); err != nil {
		t.Fatalf("restart node 1: %v\n%s", err, out)
	} else {
		t.Logf("node 1 back after %v: %s", time.Since(restartStart).Round(100*time.Millisecond), strings.TrimSpace(string(out)))
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	var slowest time.Duration
	byGateway := map[int]map[int]int{}
	lateFailures, wins, rejoinFailures := 0, map[string]int{}, map[int]int{}
	var lastFailure time.Duration
	for _, r := range results {
		if byGateway[r.gateway] == nil {
			byGateway[r.gateway] = map[int]int{}
		}
		byGateway[r.gateway][r.status]++
		slowest = max(slowest, r.took)
		if r.took > clusterDBTimeout+250*time.Millisecond {
			t.Errorf("gateway %d answered %d after %v (db_timeout %v)", r.gateway, r.status, r.took, clusterDBTimeout)
		}
		if r.status == 200 {
			wins[r.rid]++
		}
		failed := r.status != 200 && r.status != 400
		if failed && r.start.After(restartStart) {
			// A node rejoining makes the cluster hold commits while it
			// catches up (Galera's flow control), for every client alike;
			// such answers are only held to db_timeout, as all are above.
			rejoinFailures[r.gateway]++
		} else if failed && r.gateway == 3 {
			lastFailure = max(lastFailure, r.start.Sub(killed))
			// Until the cluster evicts the dead node (evs.suspect_timeout,
			// 1 s in the drill's config) no node commits anything; past
			// that, the failover gateway must not fail.
			if r.start.After(killed.Add(clusterEviction + time.Second)) {
				lateFailures++
			}
		}
	}
	t.Logf("%d requests; by gateway (0-2 per node, 3 failover) and status: %v; slowest answer %v; last failover failure started %v after the kill; failures by gateway while node 1 rejoined: %v",
		len(results), byGateway, slowest, lastFailure.Round(time.Millisecond), rejoinFailures)
	if lateFailures > 0 {
		t.Errorf("the failover gateway failed %d requests started more than 1 s after the cluster evicted the dead node; its last database failures:\n%s",
			lateFailures, lastLines(d.gateways[3].Log(), "database failure", 10))
	}
	for rid, n := range wins {
		if n > 1 {
			t.Errorf("room %s closed %d times", rid, n)
		}
	}
	if n := d.db.Count(t, "rooms r WHERE r.open = FALSE AND ((SELECT COUNT(*) FROM messages m WHERE m.rid = r.id) != 1 OR (SELECT COUNT(*) FROM room_events e WHERE e.rid = r.id) != 1)"); n != 0 {
		t.Errorf("%d closed rooms without exactly one message and one outbox row", n)
	}

	// The per-node gateways go; the failover gateway keeps some traffic
	// (refused tokens still query the database) until it is back on node 1.
	for gw := range 3 {
		d.gateways[gw].Stop()
	}
	back := false
	for deadline := time.Now().Add(40 * time.Second); time.Now().Before(deadline) && !back; {
		for range 20 {
			req, _ := http.NewRequest(http.MethodPost, d.gateways[3].BaseURL+closePath, strings.NewReader(`{}`))
			req.Header.Set("X-User-Id", d.agent.ID)
			req.Header.Set("X-Auth-Token", "refused")
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		back = d.db.Count(t, "information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()", d.db.Name) > 0
		time.Sleep(200 * time.Millisecond)
	}
	if !back {
		t.Error("the failover gateway's pool did not return to node 1 after it rejoined")
	}
}

// identicalRows: every node holds the same rooms, messages and outbox rows
// (read with wsrep_sync_wait=1, so each node has applied all it received).
func (d *clusterDrill) identicalRows(t *testing.T) {
	sameRowsEverywhere(t, d.nodeDSNs, "SET SESSION wsrep_sync_wait = 1", "node")
}

// sameRowsEverywhere fails unless every server of dsns holds the same rooms,
// messages and outbox rows. Each read runs after sync on its connection, a
// statement that makes the server apply what its cluster committed first.
func sameRowsEverywhere(t *testing.T, dsns []string, sync, server string) {
	t.Helper()
	var sums []string
	for i, dsn := range dsns {
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		conn, err := db.Conn(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.ExecContext(t.Context(), sync); err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, q := range []string{
			"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|', id, open, COALESCE(closed_at,''), msgs, COALESCE(last_message_id,''), COALESCE(call_duration,0)))),0) FROM rooms",
			"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|', id, rid, t, ts))),0) FROM messages",
			"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|', id, rid, type, created_at))),0) FROM room_events",
		} {
			var n, sum int64
			if err := conn.QueryRowContext(t.Context(), q).Scan(&n, &sum); err != nil {
				t.Fatalf("%s %d: %v", server, i+1, err)
			}
			parts = append(parts, fmt.Sprintf("%d/%d", n, sum))
		}
		sums = append(sums, strings.Join(parts, " "))
	}
	t.Logf("per %s (rooms, messages, outbox: count/checksum): %q", server, sums)
	sorted := append([]string{}, sums...)
	sort.Strings(sorted)
	if sorted[0] != sorted[len(sorted)-1] {
		t.Fatalf("%ss differ: %q", server, sums)
	}
}

// lastLines returns the last n lines of log that contain substr.
func lastLines(log, substr string, n int) string {
	var found []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, substr) {
			found = append(found, line)
		}
	}
	return strings.Join(found[max(0, len(found)-n):], "\n")
}
