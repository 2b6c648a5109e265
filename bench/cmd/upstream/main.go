// Command upstream is the benchmarks' stand-in for Rocket.Chat: it answers
// every request with a small fixed body, as fast as it can.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:18189", "address to listen on")
	flag.Parse()
	body := []byte(`{"success":true,"upstream":"bench"}`)
	log.Fatal(http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})))
}
