package rocketchatvoip

import (
	"database/sql"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbpool"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/promutil"
)

// metrics are process-wide, like Caddy's own HTTP metrics, so counts carry
// across config reloads; each config's registry gets them registered anew.
var metrics struct {
	once            sync.Once
	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	dbDuration      prometheus.Histogram
	pool            prometheus.Collector
	bodyBudget      prometheus.Collector
	bodyBudgetUsed  prometheus.Collector

	// per outcome, resolved once so the request path does no label lookup
	byOutcome map[string]outcomeMetrics
}

type outcomeMetrics struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

const metricsNamespace, metricsSubsystem = promutil.Namespace, promutil.Subsystem

func initMetrics() {
	metrics.once.Do(func() {
		metrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "requests_total",
			Help: "room.close requests handled, by outcome (one value per row of the contract).",
		}, []string{"outcome"})
		metrics.requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "request_duration_seconds",
			Help:    "Time to answer a room.close request, by outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"outcome"})
		metrics.dbDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "db_duration_seconds",
			Help:    "Time a room.close request spent waiting on MySQL.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		})
		metrics.pool = poolCollector{
			open:   prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "db_open_connections"), "Open connections of the MySQL pool.", []string{"database"}, nil),
			inUse:  prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "db_in_use_connections"), "Connections of the MySQL pool in use.", []string{"database"}, nil),
			idle:   prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "db_idle_connections"), "Idle connections of the MySQL pool.", []string{"database"}, nil),
			waited: prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "db_wait_total"), "Times a request waited for a free connection.", []string{"database"}, nil),
			limit:  prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "db_concurrency_limit"), "Requests let work on the database at once now (db_concurrency, adapted to the round-trip time).", []string{"database"}, nil),
		}
		metrics.bodyBudget = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "body_budget_bytes",
			Help: "The process's body_budget: bytes of room.close request bodies it holds at most at once.",
		}, func() float64 { return float64(bodies.budget.Limit()) })
		metrics.bodyBudgetUsed = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "body_budget_used_bytes",
			Help: "Bytes of body_budget held by room.close request bodies now.",
		}, func() float64 { return float64(bodies.budget.Used()) })
		metrics.byOutcome = make(map[string]outcomeMetrics, len(outcomes))
		for _, o := range outcomes {
			metrics.byOutcome[o] = outcomeMetrics{metrics.requests.WithLabelValues(o), metrics.requestDuration.WithLabelValues(o)}
		}
	})
}

// registerMetrics adds the module's metrics to the config's registry.
func registerMetrics(registry *prometheus.Registry) error {
	initMetrics()
	return promutil.Register(registry, metrics.requests, metrics.requestDuration, metrics.dbDuration, metrics.pool, dbpool.UpCollector, metrics.bodyBudget, metrics.bodyBudgetUsed)
}

func observeRequest(outcome string, took time.Duration) {
	if m, ok := metrics.byOutcome[outcome]; ok {
		m.requests.Inc()
		m.duration.Observe(took.Seconds())
	}
}

// poolCollector reports every shared pool's connection counts and
// concurrency limit at scrape time, so a pool that is gone leaves no series.
type poolCollector struct {
	open, inUse, idle, waited, limit *prometheus.Desc
}

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.open
	ch <- c.inUse
	ch <- c.idle
	ch <- c.waited
	ch <- c.limit
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	// Two DSNs may name one database (other options); report their sum.
	type sums struct {
		stats sql.DBStats
		limit int
	}
	byName := map[string]*sums{}
	dbpool.Each(func(p *dbpool.Pool) {
		s, limit := p.DB().Stats(), 0
		if l := p.Limiter(); l != nil {
			limit = l.Limit()
		}
		sum, ok := byName[p.Name()]
		if !ok {
			byName[p.Name()] = &sums{s, limit}
			return
		}
		sum.stats.OpenConnections += s.OpenConnections
		sum.stats.InUse += s.InUse
		sum.stats.Idle += s.Idle
		sum.stats.WaitCount += s.WaitCount
		sum.limit += limit
	})
	for name, s := range byName {
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(s.stats.OpenConnections), name)
		ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(s.stats.InUse), name)
		ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.stats.Idle), name)
		ch <- prometheus.MustNewConstMetric(c.waited, prometheus.CounterValue, float64(s.stats.WaitCount), name)
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(s.limit), name)
	}
}
