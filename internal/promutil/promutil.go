// Package promutil holds what the module's Caddy modules share of their
// Prometheus metrics.
package promutil

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Every metric's name starts caddy_rocketchat_voip_.
const Namespace, Subsystem = "caddy", "rocketchat_voip"

// Register adds collectors to a config's registry (nil: metrics are off).
// Several modules of one config register the same process-wide collectors,
// and a reload registers them again; that is not an error.
func Register(registry *prometheus.Registry, collectors ...prometheus.Collector) error {
	if registry == nil {
		return nil
	}
	for _, c := range collectors {
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}
