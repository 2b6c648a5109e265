package main

import (
	"fmt"
	"log"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// remoteScenario runs scenario r: closes at -remote-conns connections, rooms
// with and without PBX events, old build against this one (at each
// -remote-db-concurrency setting), every Caddy reaching MariaDB through
// bench-delayproxy (directly with -db-delay 0, so that the same closes at
// the same connection counts compare with the database local).
func remoteScenario() []string {
	cfg, err := mysql.ParseDSN(*dsn)
	if err != nil {
		log.Fatal(err)
	}
	remoteDSN := *dsn // -db-delay 0: directly, the database local
	if *dbDelay > 0 {
		start(bin("bench-delayproxy"), "-listen", delayAddr, "-target", cfg.Addr, "-delay", dbDelay.String())
		waitFor(delayAddr)
		cfg.Addr = delayAddr
		remoteDSN = cfg.FormatDSN()
	}

	old := startCaddy(*oldBin, "rocketchat-voip-bench-remote-old", "admin off", moduleSiteWith(remoteOld, remoteDSN, ""))
	waitFor(remoteOld)
	type build struct {
		name, addr string
		pid        int
	}
	var builds []build
	for i, dc := range strings.Split(*remoteDC, ",") {
		addr := port(remoteNewPort + i)
		extra, name := "db_concurrency "+dc, "new, db_concurrency "+dc
		if dc == "0" {
			extra, name = "", "new, default db_concurrency"
		}
		c := startCaddy(bin("caddy"), "rocketchat-voip-bench-remote-"+dc, "admin off", moduleSiteWith(addr, remoteDSN, extra))
		waitFor(addr)
		builds = append(builds, build{name, addr, c.Process.Pid})
	}

	var rows []string
	for _, rooms := range []struct{ name, prefix string }{{"rooms without a call", "BENCH"}, {"rooms with PBX events", "CALL"}} {
		for _, c := range strings.Split(*remoteCn, ",") {
			conns, err := strconv.Atoi(c)
			if err != nil {
				log.Fatalf("-remote-conns: %v", err)
			}
			for _, b := range builds {
				var o, n []result
				for r := 0; r < *rounds; r++ {
					run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
					o = append(o, wrk(old.Process.Pid, remoteOld, conns, "close.lua", "0", "2", rooms.prefix))
					run(bin("bench-seed"), "-dsn", *dsn, "-reopen")
					n = append(n, wrk(b.pid, b.addr, conns, "close.lua", "0", "2", rooms.prefix))
				}
				rows = append(rows, oldVsNew(fmt.Sprintf("room.close, %s, %d conns (%s)", rooms.name, conns, b.name), best(o), best(n)))
			}
		}
	}
	return rows
}
