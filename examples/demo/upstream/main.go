// Command upstream stands in for Rocket.Chat in the demo: it answers every
// request with a small JSON document saying what it got, so that what Caddy
// passed through is visible, and logs each outbox delivery (POST
// /hooks/voip) with its headers and body.
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
		if r.URL.Path == "/hooks/voip" {
			body, _ := io.ReadAll(r.Body)
			log.Printf("webhook: %s=%s %s=%s %s=%s body=%s", "X-RocketChat-Voip-Event", r.Header.Get("X-RocketChat-Voip-Event"),
				"X-RocketChat-Voip-Delivery", r.Header.Get("X-RocketChat-Voip-Delivery"),
				"X-RocketChat-Voip-Signature", r.Header.Get("X-RocketChat-Voip-Signature"), body)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{ //nolint:errcheck
			"upstream": "rocket.chat stand-in", "method": r.Method, "uri": r.RequestURI, "bodyBytes": n,
		})
	})))
}
