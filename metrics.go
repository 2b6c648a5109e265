package rocketchatvoip

import (
	"strconv"
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
	bodyBudget      prometheus.Collector
	bodyBudgetUsed  prometheus.Collector
	buildInfo       prometheus.Collector

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
		metrics.bodyBudget = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "body_budget_bytes",
			Help: "The process's body_budget: bytes of room.close request bodies it holds at most at once.",
		}, func() float64 { return float64(bodies.budget.Limit()) })
		metrics.bodyBudgetUsed = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "body_budget_used_bytes",
			Help: "Bytes of body_budget held by room.close request bodies now.",
		}, func() float64 { return float64(bodies.budget.Used()) })
		metrics.buildInfo = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "build_info",
			Help:        "Always 1: the module's version and the schema version it needs, as labels.",
			ConstLabels: prometheus.Labels{"version": Version, "schema_version": strconv.Itoa(SchemaVersion())},
		}, func() float64 { return 1 })
		metrics.byOutcome = make(map[string]outcomeMetrics, len(outcomes))
		for _, o := range outcomes {
			metrics.byOutcome[o] = outcomeMetrics{metrics.requests.WithLabelValues(o), metrics.requestDuration.WithLabelValues(o)}
		}
	})
}

// registerMetrics adds the module's metrics to the config's registry.
func registerMetrics(registry *prometheus.Registry) error {
	initMetrics()
	return promutil.Register(registry, metrics.requests, metrics.requestDuration, metrics.dbDuration, dbpool.Collector, metrics.bodyBudget, metrics.bodyBudgetUsed, metrics.buildInfo)
}

func observeRequest(outcome string, took time.Duration) {
	if m, ok := metrics.byOutcome[outcome]; ok {
		m.requests.Inc()
		m.duration.Observe(took.Seconds())
	}
}
