// Command upstream stands in for Rocket.Chat in the demo and the benchmarks:
// it answers every request with a small JSON document saying what it got,
// so that what Caddy passed through is visible.
package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:18089", "address to listen on")
	flag.Parse()
	log.Printf("demo upstream (stand-in for Rocket.Chat) on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{ //nolint:errcheck
			"upstream": "rocket.chat stand-in", "method": r.Method, "uri": r.RequestURI, "bodyBytes": n,
		})
	})))
}
