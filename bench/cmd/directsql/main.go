// Command directsql is the benchmarks' database baseline: it runs exactly
// the SQL the module runs for one scenario (the same prepared statements,
// through the module's own store package), with the same pool
// settings and concurrency, but without HTTP or Caddy, and prints
// throughput and latency as JSON.
//
//	directsql -dsn ... -mode close|auth -c 64 -d 10s [-first 0] [-random-token]
//
// With -http it is instead the thinnest HTTP server in front of the same
// lookup: net/http, no Caddy, answering a room.close with the status the
// lookup decides (401, 403, or 400 for an invalid body) and a fixed body, to
// be driven by the same wrk script as the module. It measures what the
// lookup costs an HTTP client without Caddy's own work per request.
//
//	directsql -dsn ... -http 127.0.0.1:18182 -c 64
package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

func main() {
	dsn := flag.String("dsn", "", "database DSN")
	mode := flag.String("mode", "close", "close: authenticate and close the next room; auth: the authentication lookup only")
	conc := flag.Int("c", 16, "concurrent workers (and max open connections)")
	dur := flag.Duration("d", 10*time.Second, "duration")
	first := flag.Int("first", 0, "first room index to close")
	user := flag.String("user", "bench-agent", "X-User-Id")
	token := flag.String("token", "bench-agent-token", "X-Auth-Token")
	randomToken := flag.Bool("random-token", false, "a random token per request (the 401 scenario)")
	httpAddr := flag.String("http", "", "serve the lookup over HTTP on this address instead of running a load")
	flag.Parse()

	cfg, err := mysql.ParseDSN(*dsn)
	if err != nil {
		log.Fatal(err)
	}
	cfg.ParseTime, cfg.Loc, cfg.InterpolateParams = true, time.UTC, false
	connector, _ := mysql.NewConnector(cfg)
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(*conc) // the module's max_open_conns in the same run
	db.SetMaxIdleConns(*conc)
	ctx := context.Background()
	st, err := store.New(ctx, db)
	if err != nil {
		log.Fatal(err)
	}

	if *httpAddr != "" {
		serveLookup(*httpAddr, st)
		return
	}

	var next atomic.Int64
	next.Store(int64(*first))
	var mu sync.Mutex
	var latencies []time.Duration
	var failures atomic.Int64
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1<<16)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				tok := *token
				if *randomToken {
					tok = strconv.FormatUint(rand.Uint64(), 36)
				}
				opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
				var err error
				if *mode == "close" {
					// The module's close: one read of credentials and room,
					// then the transaction.
					rid := fmt.Sprintf("BENCH%07d", next.Add(1)-1)
					hashed := store.HashLoginToken(tok)
					var creds store.Credentials
					var found store.Found
					creds, found, err = st.ReadCredentialsAndRoom(opCtx, *user, hashed, rid, "bench-visitor-token")
					var u store.User
					if err == nil {
						u, err = store.Verify(creds, *user, hashed, 90*24*time.Hour, time.Now())
					}
					if err == nil {
						_, err = st.CloseRoom(opCtx, store.CloseRequest{
							Rid: rid, VisitorToken: "bench-visitor-token",
							Agent: store.Agent{ID: u.ID, Username: u.Username, Name: u.Name},
						}, found)
					}
				} else {
					_, err = authenticate(opCtx, st, *user, tok)
				}
				cancel()
				if err != nil && !(*randomToken && err == store.ErrUnauthorized) {
					failures.Add(1)
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return float64(latencies[int(float64(len(latencies)-1)*p)].Microseconds()) / 1000
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"requests": len(latencies), "rps": float64(len(latencies)) / elapsed.Seconds(),
		"p50_ms": pct(0.50), "p99_ms": pct(0.99), "failures": failures.Load(), "next_room": next.Load(),
	})
}

// authenticate is the module's authentication: the credentials alone, then
// Verify.
func authenticate(ctx context.Context, st *store.Store, userID, token string) (store.User, error) {
	if !store.Askable(userID, token) {
		return store.User{}, store.ErrUnauthorized
	}
	hashed := store.HashLoginToken(token)
	c, err := st.ReadCredentials(ctx, userID, hashed)
	if err != nil {
		return store.User{}, err
	}
	return store.Verify(c, userID, hashed, 90*24*time.Hour, time.Now())
}

func serveLookup(addr string, st *store.Store) {
	unauthorized := []byte(`{"status":"error","message":"You must be logged in to do this."}`)
	forbidden := []byte(`{"success":false,"error":"unauthorized"}`)
	invalid := []byte(`{"success":false,"error":"must be string [invalid-params]","errorType":"invalid-params"}`)
	log.Fatal(http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		u, err := authenticate(ctx, st, r.Header.Get("X-User-Id"), r.Header.Get("X-Auth-Token"))
		w.Header().Set("Content-Type", "application/json")
		switch {
		case err != nil:
			w.WriteHeader(http.StatusUnauthorized)
			w.Write(unauthorized)
		case bytes.HasPrefix(body, []byte(`{"rid":1}`)):
			w.WriteHeader(http.StatusBadRequest)
			w.Write(invalid)
		case !u.CanCloseRooms:
			w.WriteHeader(http.StatusForbidden)
			w.Write(forbidden)
		default:
			w.Write([]byte(`{"success":true}`))
		}
	})))
}
