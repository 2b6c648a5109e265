package dbpool

import (
	"database/sql"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/promutil"
)

// Collector reports, at scrape time, every pool held now: whether it is in
// service (db_up), its connections and its concurrency limit. A pool that
// is gone leaves no series. The handler and the outbox app both register
// it.
var Collector prometheus.Collector = collector{
	up:      desc("db_up", "1 when the database is in use: reached, schema current, statements prepared, and the last connection opened to it succeeded; 0 while room.close answers 503 for want of it."),
	open:    desc("db_open_connections", "Open connections of the MySQL pool."),
	inUse:   desc("db_in_use_connections", "Connections of the MySQL pool in use."),
	idle:    desc("db_idle_connections", "Idle connections of the MySQL pool."),
	waited:  desc("db_wait_total", "Times a request waited for a free connection."),
	limit:   desc("db_concurrency_limit", "Requests let work on the database at once now (db_concurrency, adapted to the round-trip time)."),
	waiting: desc("db_waiting", "Requests waiting for a db_concurrency slot now."),
}

func desc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(promutil.Namespace, promutil.Subsystem, name), help, []string{"database"}, nil)
}

type collector struct {
	up, open, inUse, idle, waited, limit, waiting *prometheus.Desc
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.open, c.inUse, c.idle, c.waited, c.limit, c.waiting} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	// Two DSNs may name one database (other options): up if either is, and
	// the sum of their counts.
	type sums struct {
		up             bool
		stats          sql.DBStats
		limit, waiting int
	}
	byName := map[string]*sums{}
	Each(func(p *Pool) {
		s := byName[p.Name()]
		if s == nil {
			s = &sums{}
			byName[p.Name()] = s
		}
		st := p.DB().Stats()
		s.up = s.up || p.Up()
		s.stats.OpenConnections += st.OpenConnections
		s.stats.InUse += st.InUse
		s.stats.Idle += st.Idle
		s.stats.WaitCount += st.WaitCount
		s.limit += p.Limiter().Limit()
		s.waiting += p.Limiter().Waiting()
	})
	for name, s := range byName {
		up := 0.0
		if s.up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, name)
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(s.stats.OpenConnections), name)
		ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(s.stats.InUse), name)
		ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.stats.Idle), name)
		ch <- prometheus.MustNewConstMetric(c.waited, prometheus.CounterValue, float64(s.stats.WaitCount), name)
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(s.limit), name)
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(s.waiting), name)
	}
}
