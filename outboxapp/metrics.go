package outboxapp

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/promutil"
)

// outboxObserver turns delivery events into metrics and log lines; the
// secret is never in them (errors name the URL, not the secret).
type outboxObserver struct{ logger *zap.Logger }

func (ob outboxObserver) Delivered(e outbox.Event) {
	outboxMetrics.delivered.Inc()
	outboxMetrics.lag.Observe(time.Since(e.CreatedAt).Seconds())
}

func (ob outboxObserver) Failed(e outbox.Event, err error, parked bool) {
	outboxMetrics.failed.Inc()
	ob.logger.Warn("outbox: delivery failed", zap.Int64("event_id", e.ID), zap.String("rid", e.Rid),
		zap.Int("attempt", e.Attempts+1), zap.Bool("parked", parked), zap.Error(err))
	if parked {
		outboxMetrics.parked.Inc()
	}
}

func (ob outboxObserver) Status(st outbox.Status) {
	outboxMetrics.pending.Set(float64(st.Pending))
	age := 0.0
	if !st.OldestPending.IsZero() {
		age = time.Since(st.OldestPending).Seconds()
	}
	outboxMetrics.oldestAge.Set(age)
}

func (ob outboxObserver) Purged(n int64) { outboxMetrics.purged.Add(float64(n)) }

func (ob outboxObserver) Error(what string, err error) {
	ob.logger.Error("outbox: "+what, zap.Error(err))
}

type outboxMetricSet struct {
	once                      sync.Once
	delivered, failed, parked prometheus.Counter
	purged                    prometheus.Counter
	pending, oldestAge        prometheus.Gauge
	lag                       prometheus.Histogram
}

// lagBuckets span a delivery within a poll (the default poll_interval is
// 250 ms) to one held back for an hour by a receiver outage.
var lagBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600}

var outboxMetrics outboxMetricSet

func initOutboxMetrics() {
	outboxMetrics.once.Do(func() {
		counter := func(name, help string) prometheus.Counter {
			return prometheus.NewCounter(prometheus.CounterOpts{Namespace: promutil.Namespace, Subsystem: promutil.Subsystem, Name: name, Help: help})
		}
		gauge := func(name, help string) prometheus.Gauge {
			return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: promutil.Namespace, Subsystem: promutil.Subsystem, Name: name, Help: help})
		}
		outboxMetrics.delivered = counter("outbox_delivered_total", "Outbox events delivered (the receiver answered 2xx).")
		outboxMetrics.failed = counter("outbox_failed_attempts_total", "Failed delivery attempts of outbox events.")
		outboxMetrics.parked = counter("outbox_parked_total", "Outbox events parked after too many failed attempts.")
		outboxMetrics.purged = counter("outbox_purged_total", "Delivered outbox events deleted after the retention.")
		outboxMetrics.pending = gauge("outbox_pending", "Outbox events not yet delivered nor parked (counted less often than every second once counting takes over 10 ms).")
		outboxMetrics.lag = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: promutil.Namespace, Subsystem: promutil.Subsystem,
			Name: "outbox_delivery_lag_seconds", Buckets: lagBuckets,
			Help: "Time from a close (the event's created_at) to its delivery being recorded, per delivered outbox event; a replayed event counts from its close."})
		outboxMetrics.oldestAge = gauge("outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox event; 0 when none is pending.")
	})
}

func (m *outboxMetricSet) all() []prometheus.Collector {
	return []prometheus.Collector{m.delivered, m.failed, m.parked, m.purged, m.pending, m.oldestAge, m.lag}
}
