package systemtest

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// groupDrill is a three-member single-primary Group Replication group that
// scripts/group-drill.sh built (member 1 the primary), with a gateway, and
// its outbox app, whose DSN lists a secondary first: members 2, 1, 3.
type groupDrill struct {
	members []*mysql.Config // the test database on each member
	ctl     string          // the script, for kill N / rejoin N
	agent   testdb.Agent
	gw      *testcaddy.Process
	rc      *receiver // the outbox's webhook
	primary *sql.DB   // the primary of the moment, for checks
}

// groupDBTimeout is the drill gateway's db_timeout; every answer comes
// within it and groupSlack.
const groupDBTimeout, groupSlack = time.Second, 100 * time.Millisecond

// TestGroupReplicationDrill runs only under scripts/group-drill.sh, which
// sets ROCKETCHAT_VOIP_GROUP to the three members' server DSNs.
func TestGroupReplicationDrill(t *testing.T) {
	dsns := strings.Split(os.Getenv("ROCKETCHAT_VOIP_GROUP"), ",")
	if len(dsns) != 3 {
		t.Skip("run by scripts/group-drill.sh, which builds a Group Replication group on loopback")
	}
	d := &groupDrill{ctl: os.Getenv("ROCKETCHAT_VOIP_GROUP_CTL")}
	first, err := mysql.ParseDSN(dsns[0])
	if err != nil {
		t.Fatal(err)
	}
	db := testdb.NewOn(t, first) // on the primary; the group replicates it
	db.SetMaxIdleConns(0)
	d.primary = db.DB
	t.Cleanup(func() { d.primary.Close() })
	var addrs []string
	for _, s := range dsns {
		cfg, err := mysql.ParseDSN(s)
		if err != nil {
			t.Fatal(err)
		}
		cfg.DBName, cfg.ParseTime, cfg.Loc = db.Name, true, time.UTC
		d.members = append(d.members, cfg)
		addrs = append(addrs, cfg.Addr)
	}
	d.agent = db.AddUser(t, "agent1", "livechat-agent")
	cfg := d.members[0].Clone()
	cfg.Addr = addrs[1] + "," + addrs[0] + "," + addrs[2]
	up := testcaddy.StartUpstream(t)
	d.rc = startReceiver(t)
	d.gw = testcaddy.StartProcess(t, outboxGlobals(cfg.FormatDSN(), d.rc.URL, "lease 3s"), fmt.Sprintf(
		"\trocketchat_voip {\n\t\tdsn %q\n\t\tdb_timeout %s\n\t\trate_limit off\n\t}\n\treverse_proxy %s", cfg.FormatDSN(), groupDBTimeout, up.Addr))
	t.Run("a secondary-first DSN closes on the primary", func(t *testing.T) { d.secondaryFirst(t, db) })
	t.Run("the primary dies under load", func(t *testing.T) { d.primaryDies(t, db) })
	t.Run("a switchover under load", d.switchover)
	t.Run("the outbox delivered every close", d.outboxDelivered)
	t.Run("rows identical on every member", d.identicalRows)
}

func (d *groupDrill) close(rid, token string) clusterResult {
	return drillClose(d.gw.BaseURL, d.agent, rid, token)
}

// secondaryFirst: 200 rooms closed one after another through the DSN that
// names a secondary first: every one a 200, each with its message.
func (d *groupDrill) secondaryFirst(t *testing.T, db *testdb.DB) {
	rids, tokens := seedRooms(t, db, 200)
	statuses := map[int]int{}
	for i := range rids {
		statuses[d.close(rids[i], tokens[i]).status]++
	}
	t.Logf("answers by status: %v", statuses)
	if statuses[200] != len(rids) {
		t.Fatalf("want %d × 200; gateway's last database failures:\n%s", len(rids), lastLines(d.gw.Log(), "database failure", 5))
	}
	if n := db.Count(t, "messages"); n != len(rids) {
		t.Errorf("%d messages, want %d", n, len(rids))
	}
}

// primaryDies: closes at about 40/s (load); the primary (member 1) is
// SIGKILLed; the group expels it and elects another member. Every answer
// comes within db_timeout; no close started
// more than 1 s after the election fails; then member 1 rejoins as a
// secondary by distributed recovery, under the same load. Every room is
// closed at most once, and every 200 left its room closed with one message
// and one outbox row.
func (d *groupDrill) primaryDies(t *testing.T, db *testdb.DB) {
	stop := d.load(t, db, 4000)
	time.Sleep(3 * time.Second)
	killed := time.Now()
	d.ctlRun(t, "kill 1")
	elected, newPrimary := d.awaitElection(t, killed)
	t.Logf("member %d elected %v after the kill", newPrimary+1, elected.Sub(killed).Round(time.Millisecond))
	primary, err := sql.Open("mysql", d.members[newPrimary].FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	d.primary = primary // closed by the whole drill's cleanup: later steps use it
	time.Sleep(3 * time.Second)
	rejoinStart := time.Now()
	out := d.ctlRun(t, "rejoin 1")
	rejoined := time.Now()
	t.Logf("member 1 back after %v: %s", rejoined.Sub(rejoinStart).Round(100*time.Millisecond), out)
	time.Sleep(2 * time.Second)
	results := stop()

	// The outage began with the first failure after the kill; the first
	// close that started after it and succeeded ended it.
	var outage, recovered time.Time
	for _, r := range results {
		if failed := r.status != 200 && r.status != 400; failed && r.start.After(killed) && (outage.IsZero() || r.start.Before(outage)) {
			outage = r.start
		}
	}
	for _, r := range results {
		if end := r.start.Add(r.took); r.status == 200 && !outage.IsZero() && r.start.After(outage) && (recovered.IsZero() || end.Before(recovered)) {
			recovered = end
		}
	}
	statuses := map[int]int{}
	wins := map[string]int{}
	var slowest, lastFailure time.Duration
	lateFailures, rejoinFailures := 0, 0
	for _, r := range results {
		statuses[r.status]++
		slowest = max(slowest, r.took)
		if r.took > groupDBTimeout+groupSlack {
			t.Errorf("answered %d after %v (db_timeout %v)", r.status, r.took, groupDBTimeout)
		}
		switch {
		case r.status == 200:
			wins[r.rid]++
		case r.status == 400:
		case r.start.After(killed):
			lastFailure = max(lastFailure, r.start.Sub(killed))
			if r.start.After(elected.Add(time.Second)) {
				lateFailures++
				if r.start.After(rejoinStart) && r.start.Before(rejoined.Add(time.Second)) {
					rejoinFailures++
				}
			}
		}
	}
	t.Logf("%d requests (%.0f/s) by status %v; slowest answer %v; last failure started %v after the kill, the election was seen %v after it; the first close after the outage answered %v after the election was seen; failures more than 1 s after the election: %d (%d while member 1 rejoined)",
		len(results), float64(len(results))/time.Since(killed.Add(-3*time.Second)).Seconds(), statuses, slowest.Round(time.Millisecond),
		lastFailure.Round(time.Millisecond), elected.Sub(killed).Round(time.Millisecond), recovered.Sub(elected).Round(time.Millisecond), lateFailures, rejoinFailures)
	if lateFailures > 0 {
		t.Errorf("%d closes started more than 1 s after the election failed; the gateway's last database failures:\n%s",
			lateFailures, lastLines(d.gw.Log(), "database failure", 10))
	}
	for rid, n := range wins {
		if n > 1 {
			t.Errorf("room %s closed %d times", rid, n)
		}
	}
	open := map[string]bool{}
	rows, err := d.primary.Query("SELECT id FROM rooms WHERE open")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		rows.Scan(&id) //nolint:errcheck
		open[id] = true
	}
	rows.Close()
	for rid := range wins {
		if open[rid] {
			t.Errorf("room %s answered 200 but is open", rid)
		}
	}
	var n int
	if err := d.primary.QueryRow("SELECT COUNT(*) FROM rooms r WHERE r.open = FALSE AND ((SELECT COUNT(*) FROM messages m WHERE m.rid = r.id) != 1 OR (SELECT COUNT(*) FROM room_events e WHERE e.rid = r.id) != 1)").Scan(&n); err != nil || n != 0 {
		t.Errorf("%d closed rooms without exactly one message and one outbox row (%v)", n, err)
	}
	if state := d.memberState(t, 0); state != "ONLINE SECONDARY" {
		t.Errorf("member 1 after rejoining: %q, want ONLINE SECONDARY", state)
	}
}

// load closes rooms of its own at about 40/s (five clients, each pausing
// 75 ms; a failed close is tried again later) until the returned function
// is called (or the step ends), which returns every answer.
func (d *groupDrill) load(t *testing.T, db *testdb.DB, rooms int) func() []clusterResult {
	rids, tokens := seedRooms(t, db, rooms)
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
	for range 5 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(75 * time.Millisecond):
				}
				var i int
				select {
				case i = <-next:
				default:
					return
				}
				r := d.close(rids[i], tokens[i])
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
				if r.status != 200 && r.status != 400 {
					next <- i
				}
			}
		})
	}
	// Stopped with the step at the latest, so that a failed step leaves no
	// writes behind for the next.
	done := sync.OnceValue(func() []clusterResult {
		close(stop)
		wg.Wait()
		return results
	})
	t.Cleanup(func() { done() })
	return done
}

// switchover: the primary hands over to member 1 (group_replication_set_as_primary)
// under load, every connection of the gateway and its outbox still on the
// old primary, which stays in the group as a secondary. Their first refused
// write (1290) moves them; every answer comes within db_timeout, and no
// close started more than 1 s after the switchover returned fails.
func (d *groupDrill) switchover(t *testing.T) {
	var uuid string
	m1, err := sql.Open("mysql", d.members[0].FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if d.primary != m1 {
			m1.Close()
		}
	}()
	if err := m1.QueryRow("SELECT @@server_uuid").Scan(&uuid); err != nil {
		t.Fatal(err)
	}
	db := &testdb.DB{DB: d.primary}
	stop := d.load(t, db, 2000)
	time.Sleep(2 * time.Second)
	started := time.Now()
	// The function wants a literal; the uuid is the server's own.
	if !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(uuid) {
		t.Fatalf("server_uuid %q", uuid)
	}
	if _, err := d.primary.Exec("SELECT group_replication_set_as_primary('" + uuid + "')"); err != nil {
		t.Fatal(err)
	}
	done := time.Now()
	old := d.primary
	d.primary = m1
	old.Close()
	time.Sleep(3 * time.Second)
	results := stop()
	statuses, late := map[int]int{}, 0
	var slowest time.Duration
	for _, r := range results {
		statuses[r.status]++
		slowest = max(slowest, r.took)
		if r.took > groupDBTimeout+groupSlack {
			t.Errorf("answered %d after %v (db_timeout %v)", r.status, r.took, groupDBTimeout)
		}
		if r.status != 200 && r.status != 400 && r.start.After(done.Add(time.Second)) {
			late++
		}
	}
	t.Logf("switchover took %v; %d requests by status %v; slowest answer %v; failures more than 1 s after it: %d",
		done.Sub(started).Round(time.Millisecond), len(results), statuses, slowest.Round(time.Millisecond), late)
	if late > 0 {
		t.Errorf("%d closes started more than 1 s after the switchover failed; the gateway's last database failures:\n%s",
			late, lastLines(d.gw.Log(), "database failure", 10))
	}
	if state := d.memberState(t, 0); state != "ONLINE PRIMARY" {
		t.Errorf("member 1 after the switchover: %q, want ONLINE PRIMARY", state)
	}
}

func (d *groupDrill) ctlRun(t *testing.T, args string) string {
	t.Helper()
	out, err := exec.Command("bash", "-c", d.ctl+" "+args).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// awaitElection polls the two survivors until one reports itself the
// ONLINE PRIMARY, and returns when that was first seen, and which.
func (d *groupDrill) awaitElection(t *testing.T, killed time.Time) (time.Time, int) {
	t.Helper()
	var dbs []*sql.DB
	for _, m := range d.members[1:] {
		cfg := m.Clone()
		cfg.Timeout, cfg.ReadTimeout = 200*time.Millisecond, 200*time.Millisecond
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		dbs = append(dbs, db)
	}
	for time.Since(killed) < 60*time.Second {
		for i, db := range dbs {
			var role string
			err := db.QueryRow("SELECT MEMBER_ROLE FROM performance_schema.replication_group_members WHERE MEMBER_ID = @@server_uuid AND MEMBER_STATE = 'ONLINE'").Scan(&role)
			if err == nil && role == "PRIMARY" {
				return time.Now(), i + 1
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no member became the primary within 60 s of the kill")
	return time.Time{}, 0
}

func (d *groupDrill) memberState(t *testing.T, i int) string {
	t.Helper()
	db, err := sql.Open("mysql", d.members[i].FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var state, role string
	if err := db.QueryRow("SELECT MEMBER_STATE, MEMBER_ROLE FROM performance_schema.replication_group_members WHERE MEMBER_ID = @@server_uuid").Scan(&state, &role); err != nil {
		return err.Error()
	}
	return state + " " + role
}

// outboxDelivered: the outbox app, whose claims are writes, followed the
// primary too: every outbox row reached the webhook and is marked
// delivered on the new primary. (An event whose delivery was not recorded
// when the primary died goes out again after its lease; that is the
// documented at-least-once.)
func (d *groupDrill) outboxDelivered(t *testing.T) {
	var ids []int64
	rows, err := d.primary.Query("SELECT id FROM room_events")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		rows.Scan(&id) //nolint:errcheck
		ids = append(ids, id)
	}
	rows.Close()
	d.rc.waitFor(t, ids, 30*time.Second)
	var pending int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := d.primary.QueryRow("SELECT COUNT(*) FROM room_events WHERE delivery_state <> 'delivered'").Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending == 0 || time.Now().After(deadline) {
			break
		}
	}
	again := 0
	for _, n := range d.rc.counts() {
		again += n - 1
	}
	t.Logf("%d events delivered, %d of them again (after their lease)", len(ids), again)
	if pending > 0 {
		t.Errorf("%d events not marked delivered on the primary", pending)
	}
	d.rc.checkOrderAndSignatures(t)
}

// identicalRows: every member holds the same rooms, messages and outbox
// rows, read with group_replication_consistency BEFORE (so each member has
// applied everything the group committed before the read).
func (d *groupDrill) identicalRows(t *testing.T) {
	dsns := make([]string, len(d.members))
	for i, m := range d.members {
		dsns[i] = m.FormatDSN()
	}
	sameRowsEverywhere(t, dsns, "SET SESSION group_replication_consistency = 'BEFORE'", "member")
}
