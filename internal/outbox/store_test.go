package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

const (
	batch = 64
	scan  = 2 * batch // the deliverer's scanFactor
)

func seed(t testing.TB, db *testdb.DB, n int, rid, cols, values string) {
	db.SeedEvents(t, n, rid, cols, values)
}

// shapes of backlog, each seeded beside as many delivered events.
var shapes = []struct {
	name string
	seed func(t testing.TB, db *testdb.DB, n int)
	// settle claims until the scan is no longer full (the one-off
	// deferral of events waiting behind an earlier one), before measuring.
	settle bool
}{
	{"in backoff", func(t testing.TB, db *testdb.DB, n int) {
		seed(t, db, n, "CONCAT('B', s.n)", "attempts, next_attempt_at", "3, NOW(3) + INTERVAL 1 HOUR")
	}, false},
	{"parked", func(t testing.TB, db *testdb.DB, n int) {
		seed(t, db, n, "CONCAT('K', s.n)", "delivery_state, attempts, parked_at", "'parked', 10, NOW(3)")
	}, false},
	{"behind a parked event of their room", func(t testing.TB, db *testdb.DB, n int) {
		seed(t, db, 1, "'H'", "delivery_state, attempts, parked_at", "'parked', 10, NOW(3)")
		seed(t, db, n, "'H'", "", "")
	}, true},
	{"behind an event of their room in backoff", func(t testing.TB, db *testdb.DB, n int) {
		seed(t, db, n/2, "CONCAT('W', s.n)", "attempts, next_attempt_at", "3, NOW(3) + INTERVAL 1 HOUR")
		seed(t, db, n-n/2, "CONCAT('W', s.n)", "", "")
	}, true},
	{"all due", func(t testing.TB, db *testdb.DB, n int) {
		seed(t, db, n, "CONCAT('U', s.n)", "", "")
	}, false},
}

// handlerReads is the session's count of index and row reads so far,
// counting the entries that index condition pushdown looked at and passed
// over (MariaDB's Handler_icp_attempts), which Handler_read_* leave out.
func handlerReads(t testing.TB, db *sql.DB) int64 {
	t.Helper()
	rows, err := db.Query("SHOW SESSION STATUS WHERE Variable_name LIKE 'Handler_read%' OR Variable_name = 'Handler_icp_attempts'")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var sum int64
	for rows.Next() {
		var name string
		var v int64
		if err := rows.Scan(&name, &v); err != nil {
			t.Fatal(err)
		}
		sum += v
	}
	return sum
}

// pollReads is what one poll reads: a claim, and the earliest retry.
func pollReads(t testing.TB, one *sql.DB, st *outbox.Store, settle bool) (reads int64, claimed int) {
	t.Helper()
	ctx := context.Background()
	owner := testdb.RandomID()
	claim := func() ([]outbox.Event, bool) {
		now := time.Now().UTC() // finer than the columns: the store copes
		events, full, err := st.Claim(ctx, owner, now, 30*time.Second, batch, scan, now.Add(5*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return events, full
	}
	for full := settle; full; {
		_, full = claim()
	}
	poll := func() (int64, int) {
		before := handlerReads(t, one)
		events, _ := claim()
		if _, _, err := st.NextDue(ctx, time.Now().UTC()); err != nil {
			t.Fatal(err)
		}
		return handlerReads(t, one) - before, len(events)
	}
	if !settle {
		return poll()
	}
	// Deferring moved every waiting event's entry in room_events_due; the
	// old entries stay (delete-marked) until InnoDB's purge removes them a
	// moment later, and a scan steps over them meanwhile. The steady state
	// is the least a poll reads over a few seconds.
	reads, claimed = poll()
	for deadline := time.Now().Add(10 * time.Second); reads > 100 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		reads, claimed = poll()
	}
	return reads, claimed
}

// TestPollCostBoundedByTheBatch: a poll (the claim and the earliest retry)
// reads about as many rows with 50,000 events waiting, beside 50,000
// delivered ones, as with 10, whatever the backlog's shape.
func TestPollCostBoundedByTheBatch(t *testing.T) {
	big := 50_000
	if testing.Short() || engineOf(t, testdb.NewEmpty(t, nil)) == dbconnect.TiDB {
		// TiDB has no Handler_read_* counters, so the bound is not measured
		// there: 10,000 events show the claims' outcomes in a fifth of the
		// time (50,000 behind one parked event took minutes to settle).
		big = 10_000
	}
	for _, shape := range shapes {
		t.Run(shape.name, func(t *testing.T) {
			var reads [2]int64
			for i, n := range []int{10, big} {
				db := testdb.New(t)
				seed(t, db, n, "CONCAT('D', s.n)", "delivery_state, delivered_at", "'delivered', NOW(3)")
				shape.seed(t, db, n)
				db.Exec(t, "ANALYZE TABLE room_events")
				one, err := sql.Open("mysql", db.DSN)
				if err != nil {
					t.Fatal(err)
				}
				defer one.Close()
				one.SetMaxOpenConns(1) // one session, whose counters are the poll's
				st, err := outbox.NewStore(context.Background(), one)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				var claimed int
				reads[i], claimed = pollReads(t, one, st, shape.settle)
				t.Logf("%d events %s: a poll claims %d and reads %d rows", n, shape.name, claimed, reads[i])
				if shape.name == "all due" && claimed != min(n, batch) {
					t.Errorf("claimed %d of %d due events, want %d", claimed, n, min(n, batch))
				}
			}
			// Bounded by the batch: a few reads per scanned candidate, never
			// one per waiting event.
			if limit := int64(12 * scan); reads[1] > limit {
				t.Errorf("a poll over %d waiting events read %d rows, more than %d (with 10: %d)", big, reads[1], limit, reads[0])
			}
		})
	}
}

// TestPollPlan shows the plan of the claim's scan: a range of room_events_due
// read in its order (no sort), at most a scan's worth of entries.
func TestPollPlan(t *testing.T) {
	db := testdb.New(t)
	seed(t, db, 1000, "CONCAT('B', s.n)", "attempts, next_attempt_at", "3, NOW(3) + INTERVAL 1 HOUR")
	db.Exec(t, "ANALYZE TABLE room_events")
	now := time.Now().UTC().Truncate(time.Millisecond) // as the store passes it
	explain := "EXPLAIN "
	engine := engineOf(t, db)
	if engine != dbconnect.MariaDB && engine != dbconnect.TiDB {
		explain = "EXPLAIN FORMAT=TRADITIONAL " // MySQL 9 explains as a tree by default
	}
	rows, err := db.Query(explain+outbox.CandidatesSQL, now, now, scan)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var plan []map[string]string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := map[string]string{}
		var line []string
		for i, c := range cols {
			row[c] = vals[i].String
			line = append(line, c+"="+vals[i].String)
		}
		plan = append(plan, row)
		t.Log(strings.Join(line, " "))
	}
	if engine == dbconnect.TiDB {
		expectTiDBPlan(t, plan)
		return
	}
	var scanRow map[string]string
	for _, r := range plan {
		if r["table"] == "room_events" {
			scanRow = r
		}
		if strings.Contains(r["Extra"], "filesort") {
			t.Errorf("the claim sorts: %v", r)
		}
	}
	// 1,000 events in backoff: the range (both key parts) holds none.
	if n, _ := strconv.Atoi(scanRow["rows"]); scanRow == nil || scanRow["key"] != "room_events_due" || scanRow["type"] != "range" || n > 100 {
		t.Errorf("the claim's scan is %v, want a range of room_events_due of a few rows", scanRow)
	}
}

// expectTiDBPlan checks the same as TestPollPlan in TiDB's EXPLAIN, whose
// columns are its own: the scan is an index range of room_events_due of a
// few rows, and no operator sorts (Sort, or TopN for a sort with a limit).
func expectTiDBPlan(t *testing.T, plan []map[string]string) {
	t.Helper()
	var scanRow map[string]string
	for _, r := range plan {
		op := strings.TrimLeft(r["id"], "├└─│ ")
		if strings.HasPrefix(op, "IndexRangeScan") && strings.Contains(r["access object"], "index:room_events_due") {
			scanRow = r
		}
		if strings.HasPrefix(op, "Sort") || strings.HasPrefix(op, "TopN") {
			t.Errorf("the claim sorts: %v", r)
		}
	}
	if n, _ := strconv.ParseFloat(scanRow["estRows"], 64); scanRow == nil || n > 100 {
		t.Errorf("the claim's scan is %v, want a range of room_events_due of a few rows", scanRow)
	}
}

// TestPurgeHoldsNoLockACloseWaitsOn: while a purge's DELETE is uncommitted,
// a close's INSERT into room_events goes through at once, even when every
// row is a delivered one (where a range's gap lock would reach the end of
// the table).
func TestPurgeHoldsNoLockACloseWaitsOn(t *testing.T) {
	db := testdb.New(t)
	seed(t, db, 1000, "CONCAT('D', s.n)", "delivery_state, delivered_at", "'delivered', NOW(3) - INTERVAL 8 DAY")
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	ids := []any{}
	rows, err := tx.Query("SELECT id FROM room_events ORDER BY id LIMIT 500")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	ids = append(ids, int64(1000)) // the last row too
	if _, err := tx.Exec(fmt.Sprintf(outbox.PurgeSQL, strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",")), ids...); err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.ExecContext(ctx, "SET SESSION innodb_lock_wait_timeout = 1") //nolint:errcheck // not on every server; then the default bounds it
	if _, err := conn.ExecContext(ctx, "INSERT INTO room_events (rid, type, payload, created_at) VALUES ('NEW', 'room.closed', '{}', ?)", time.Now().UTC()); err != nil {
		t.Fatalf("a close's insert during a purge: %v", err)
	}
}

// TestPurgeKeepsParkedPendingAndRecent: rounds of Purge delete exactly the
// delivered events older than the cutoff, and record the highest id purged.
func TestPurgeKeepsParkedPendingAndRecent(t *testing.T) {
	db := testdb.New(t)
	seed(t, db, 1200, "CONCAT('D', s.n)", "delivery_state, delivered_at", "'delivered', NOW(3) - INTERVAL 8 DAY")
	seed(t, db, 30, "CONCAT('K', s.n)", "delivery_state, attempts, parked_at", "'parked', 10, NOW(3) - INTERVAL 8 DAY")
	seed(t, db, 30, "CONCAT('P', s.n)", "", "")
	seed(t, db, 40, "CONCAT('R', s.n)", "delivery_state, delivered_at", "'delivered', NOW(3) - INTERVAL 1 DAY")
	ctx := context.Background()
	st, err := outbox.NewStore(ctx, db.DB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	var total, after int64
	for {
		n, last, err := st.Purge(ctx, after, now.Add(-7*24*time.Hour), now, 500)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if n == 0 || last == 0 {
			break
		}
		after = last
	}
	if total != 1200 {
		t.Errorf("purged %d, want the 1200 old delivered events", total)
	}
	if n := db.Count(t, "room_events WHERE delivery_state = 'delivered'"); n != 40 {
		t.Errorf("%d delivered events left, want the 40 recent ones", n)
	}
	if n := db.Count(t, "room_events WHERE delivery_state IN ('parked', 'pending')"); n != 60 {
		t.Errorf("%d parked and pending events left, want 60", n)
	}
	through, err := outbox.PurgedThrough(ctx, db.DB)
	if err != nil || through != 1200 {
		t.Errorf("purged through %d (%v), want 1200", through, err)
	}
}

// RecentLag reads the latest delivered events only (not older delivered
// ones, not pending or parked ones) and takes nearest-rank percentiles of
// delivered_at − created_at.
func TestRecentLag(t *testing.T) {
	db := testdb.New(t)
	ctx := context.Background()
	if lag, err := outbox.RecentLag(ctx, db.DB, 100); err != nil || lag.N != 0 {
		t.Fatalf("no events: %+v, %v; want N 0", lag, err)
	}
	closed := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	insert := func(state string, created time.Time, delivered any) {
		db.Exec(t, "INSERT INTO room_events (rid, type, payload, created_at, delivery_state, delivered_at) VALUES ('L', 'room.closed', '{}', ?, ?, ?)",
			created, state, delivered)
	}
	insert("delivered", closed, closed.Add(time.Hour)) // older than the 100 read
	for i := 1; i <= 100; i++ {
		// Delivered in a shuffled order: lag 10 ms × ((37 i) mod 100 + 1).
		lag := time.Duration((37*i)%100+1) * 10 * time.Millisecond
		created := closed.Add(time.Duration(i) * time.Second)
		insert("delivered", created, created.Add(lag))
	}
	insert("pending", closed.Add(time.Hour), nil)
	insert("parked", closed.Add(time.Hour), nil)

	lag, err := outbox.RecentLag(ctx, db.DB, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := outbox.Lag{N: 100, P50: 500 * time.Millisecond, P99: 990 * time.Millisecond, Max: time.Second}
	if lag.N != want.N || lag.P50 != want.P50 || lag.P99 != want.P99 || lag.Max != want.Max {
		t.Fatalf("got N %d, p50 %v, p99 %v, max %v; want N %d, p50 %v, p99 %v, max %v",
			lag.N, lag.P50, lag.P99, lag.Max, want.N, want.P50, want.P99, want.Max)
	}
	first, last := closed.Add(time.Second+380*time.Millisecond), closed.Add(100*time.Second+10*time.Millisecond)
	if !lag.First.Equal(first) || !lag.Last.Equal(last) {
		t.Errorf("delivered between %v and %v, want %v and %v", lag.First, lag.Last, first, last)
	}
}

// engineOf is the engine of db's server.
func engineOf(t *testing.T, db *testdb.DB) dbconnect.Engine {
	t.Helper()
	engine, _, err := dbconnect.DetectEngine(context.Background(), db.DB)
	if err != nil {
		t.Fatal(err)
	}
	return engine
}
