package main

import (
	"database/sql"
	"fmt"
	"log"
	"sync"
	"time"

	_ "github.com/go-sql-driver/mysql"
)

// outboxAddr is a Caddy with the module and the outbox app, delivering to
// the bench upstream.

// outboxScenario (x) closes rooms at 16 connections through a Caddy that
// also runs the outbox app, sampling the pending count every 250 ms: the
// outbox keeps up when pending stays bounded during the run and drains
// right after it. It returns a Markdown row.
func outboxScenario() string {
	db, err := sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// Earlier runs' events are not this run's work.
	if _, err := db.Exec("UPDATE room_events SET delivery_state = 'delivered' WHERE delivery_state <> 'delivered'"); err != nil {
		log.Fatal(err)
	}
	c := startCaddy(bin("caddy"), "rocketchat-voip-bench-outbox", fmt.Sprintf(`admin off
	rocketchat_voip_outbox {
		dsn %q
		webhook http://%s/hooks/voip {
			secret bench
		}
	}`, *dsn, upstreamAddr), moduleSite(outboxAddr))
	waitFor(outboxAddr)
	defer c.Process.Kill()

	pending := func() int {
		var n int
		db.QueryRow("SELECT COUNT(*) FROM room_events WHERE delivery_state = 'pending'").Scan(&n)
		return n
	}
	delivered := func() int {
		var n int
		db.QueryRow("SELECT COUNT(*) FROM room_events WHERE delivered_at >= NOW(3) - INTERVAL 1 HOUR").Scan(&n)
		return n
	}
	run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
	before := delivered()
	var (
		mu      sync.Mutex
		maxSeen int
		samples []int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			p := pending()
			mu.Lock()
			maxSeen = max(maxSeen, p)
			samples = append(samples, p)
			mu.Unlock()
		}
	})
	start := time.Now()
	m := wrk(c.Process.Pid, outboxAddr, 16, "close.lua", "0", "2")
	took := time.Since(start)
	close(stop)
	wg.Wait()
	atEnd := pending()
	drainStart := time.Now()
	for pending() > 0 && time.Since(drainStart) < time.Minute {
		time.Sleep(50 * time.Millisecond)
	}
	drained := time.Since(drainStart)
	got := delivered() - before
	half := samples[len(samples)/2:]
	lastHalfMax := 0
	for _, p := range half {
		lastHalfMax = max(lastHalfMax, p)
	}
	return fmt.Sprintf("| (x) room.close at 16 conns with the outbox app delivering to a loopback receiver | %.0f closes/s | %.0f deliveries/s | pending: max %d (max %d in the run's second half), %d at the end, drained %v later |",
		m.RPS, float64(got)/(took+drained).Seconds(), maxSeen, lastHalfMax, atEnd, drained.Round(10*time.Millisecond))
}
