package dbpool

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/promutil"
)

// UpCollector reports caddy_rocketchat_voip_db_up{database} for every pool
// held now, at scrape time: 1 when the pool is in service (Up), 0 while the
// module runs without it. The handler and the outbox app both register it.
var UpCollector prometheus.Collector = upCollector{
	desc: prometheus.NewDesc(prometheus.BuildFQName(promutil.Namespace, promutil.Subsystem, "db_up"),
		"1 when the database is in use: reached, schema current, statements prepared, and the last connection opened to it succeeded; 0 while room.close answers 503 for want of it.",
		[]string{"database"}, nil),
}

type upCollector struct{ desc *prometheus.Desc }

func (c upCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c upCollector) Collect(ch chan<- prometheus.Metric) {
	// Two DSNs may name one database (other options): up if either is.
	up := map[string]bool{}
	Each(func(p *Pool) { up[p.Name()] = up[p.Name()] || p.Up() })
	for name, ok := range up {
		v := 0.0
		if ok {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, name)
	}
}
