package testdb

import (
	"fmt"
	"strings"
	"testing"
)

// SeedEvents inserts n room_events rows in one INSERT … SELECT (so that a
// backlog of 100,000 takes a second or two): rid is an SQL expression of
// s.n (0 … n-1), e.g. "CONCAT('R', s.n % 100)"; cols and values set further
// columns, e.g. "delivery_state, delivered_at" and
// "'delivered', NOW(3) - INTERVAL 8 DAY". Ids follow s.n.
func (d *DB) SeedEvents(t testing.TB, n int, rid, cols, values string) {
	t.Helper()
	d.Exec(t, SeedEventsSQL(rid, cols, values, n), n)
}

// SeedEventsSQL is SeedEvents' statement, for up to n rows; its one
// parameter is n.
func SeedEventsSQL(rid, cols, values string, n int) string {
	const digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)"
	from, num := []string{digits + " d0"}, []string{"d0.d"}
	for i, p := 1, 10; p < n; i, p = i+1, p*10 {
		from = append(from, fmt.Sprintf("%s d%d", digits, i))
		num = append(num, fmt.Sprintf("%d*d%d.d", p, i))
	}
	if cols != "" {
		cols, values = ", "+cols, ", "+values
	}
	return fmt.Sprintf(`INSERT INTO room_events (rid, type, payload, created_at%s)
SELECT %s, 'room.closed', JSON_OBJECT('n', s.n), NOW(3)%s FROM (SELECT %s AS n FROM %s) s WHERE s.n < ? ORDER BY s.n`,
		cols, rid, values, strings.Join(num, " + "), strings.Join(from, ", "))
}
