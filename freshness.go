package rocketchatvoip

import (
	"cmp"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/rcsync"
)

// What a handler does with room.close while the data is stale (when_stale).
const (
	WhenStaleUnavailable = "unavailable" // 503 service-unavailable (default)
	WhenStaleUpstream    = "upstream"    // pass the request to the next handler: Rocket.Chat answers it
)

const (
	defaultMaxStaleness = 2 * time.Minute
	defaultSyncSource   = "rocketchat"
	// freshnessEvery is how often the staleness is read from MySQL: one
	// query a second per database, whatever the traffic.
	freshnessEvery = time.Second
)

// serveIfStale gates room.close on the freshness of the data a
// rocketchat_voip_sync keeps: once per request it reads a value refreshed
// once a second, never the database. True when it answered (or passed on)
// the request.
func (h *Handler) serveIfStale(w http.ResponseWriter, r *http.Request, next func() error) (bool, error) {
	if h.freshness == nil {
		return false, nil
	}
	// Just after a start the first read may still be under way: wait for it
	// as long as the close itself could wait for the database. A read that
	// does not end in that time leaves the age unknown, which is stale.
	known := h.freshness.WaitFirstRead(r.Context(), time.Duration(h.DBTimeout))
	if known && !h.freshness.Stale(time.Duration(h.MaxStaleness)) {
		return false, nil
	}
	if h.WhenStale == WhenStaleUpstream {
		// Rocket.Chat, the authority, answers: its own data is never stale.
		// Counted, so that the passing shows in the metrics.
		start := time.Now()
		err := next()
		observeRequest(OutcomeStale, time.Since(start))
		return true, err
	}
	st := &requestState{start: time.Now(), outcome: OutcomeStale}
	defer h.finish(r, st)
	writeJSON(w, http.StatusServiceUnavailable, bodyUnavailable)
	return true, nil
}

func (h *Handler) validateFreshness() error {
	eff := h.withDefaults()
	switch {
	case eff.MaxStaleness < 0:
		return fmt.Errorf("max_staleness: must not be negative")
	case eff.IgnoreStaleness && h.MaxStaleness != 0:
		return fmt.Errorf("max_staleness: off takes no duration")
	case eff.WhenStale != WhenStaleUnavailable && eff.WhenStale != WhenStaleUpstream:
		return fmt.Errorf("when_stale: must be %s or %s, not %q", WhenStaleUnavailable, WhenStaleUpstream, eff.WhenStale)
	}
	return nil
}

func (h *Handler) applyFreshnessDefaults() {
	if !h.IgnoreStaleness {
		h.MaxStaleness = cmp.Or(h.MaxStaleness, caddy.Duration(defaultMaxStaleness))
	}
	h.WhenStale = cmp.Or(h.WhenStale, WhenStaleUnavailable)
	h.SyncSource = cmp.Or(h.SyncSource, defaultSyncSource)
}

// freshnessWatchers share one reader per database and source, across
// handlers and reloads.
var freshnessWatchers = caddy.NewUsagePool()

type freshnessWatcher struct{ *rcsync.Freshness }

func (f freshnessWatcher) Destruct() error { f.Stop(); return nil }

// useFreshness starts (or shares) the reader of the sync's staleness.
func (h *Handler) useFreshness() error {
	if h.IgnoreStaleness {
		return nil
	}
	key := h.pool.Name() + " " + h.SyncSource
	val, _, err := freshnessWatchers.LoadOrNew(key, func() (caddy.Destructor, error) {
		f := rcsync.NewFreshness(h.pool.DB(), h.SyncSource, freshnessEvery)
		f.Start()
		return freshnessWatcher{f}, nil
	})
	if err != nil {
		return err
	}
	h.freshnessKey, h.freshness = key, val.(freshnessWatcher).Freshness
	return nil
}

func (h *Handler) releaseFreshness() {
	if h.freshnessKey != "" {
		freshnessWatchers.Delete(h.freshnessKey) //nolint:errcheck // Destruct cannot fail
	}
}
