// Command webhook-receiver is an example receiver of the
// rocketchat_voip_outbox webhook: it checks each delivery's signature and
// time as docs/outbox.md describes, skips deliveries it has already
// handled, and prints the rest. Copy Verify into your own receiver; keep
// the delivery ids it has handled in your database, not in memory.
//
//	VOIP_WEBHOOK_SECRET=... go run ./examples/webhook-receiver -listen 127.0.0.1:8089
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Window is how far a delivery's signed time may be from the receiver's
// clock. Each attempt is signed when it is sent (a retry, or a replay by
// 'caddy rocketchat-voip outbox replay', is signed afresh), so this only
// needs to cover clock skew and the webhook timeout.
const Window = 5 * time.Minute

var (
	errUnsigned = errors.New("no or malformed X-RocketChat-Voip-Signature")
	errStale    = errors.New("signed too long ago (or in the future): a replay?")
	errBadMAC   = errors.New("signature does not match")
)

// Verify checks a delivery: the signature header is "t=<unix seconds>,v1=<hex>",
// where the hex is HMAC-SHA256(secret, "<t>.<delivery id>.<body>"), and t is
// within Window of now.
func Verify(secret []byte, signature, deliveryID string, body []byte, now time.Time) error {
	var ts, v1 string
	for part := range strings.SplitSeq(signature, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			v1 = v
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	want, herr := hex.DecodeString(v1)
	if err != nil || herr != nil || deliveryID == "" {
		return errUnsigned
	}
	if d := now.Sub(time.Unix(t, 0)); d > Window || d < -Window {
		return errStale
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "." + deliveryID + "."))
	mac.Write(body)
	if !hmac.Equal(mac.Sum(nil), want) {
		return errBadMAC
	}
	return nil
}

// receiver answers deliveries: 401 to one that does not verify (the outbox
// retries it, then parks it), 2xx to the rest, including one already
// handled (the outbox delivers at least once).
type receiver struct {
	secret []byte
	now    func() time.Time
	handle func(id string, body []byte)

	mu   sync.Mutex
	seen map[string]bool // handled delivery ids; use your database
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "cannot read the body", http.StatusBadRequest)
		return
	}
	id := r.Header.Get("X-RocketChat-Voip-Delivery")
	if err := Verify(rc.secret, r.Header.Get("X-RocketChat-Voip-Signature"), id, body, rc.now()); err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	rc.mu.Lock()
	dup := rc.seen[id]
	rc.seen[id] = true
	rc.mu.Unlock()
	if !dup {
		rc.handle(id, body)
	}
	w.WriteHeader(http.StatusNoContent)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8089", "address to listen on")
	flag.Parse()
	secret := os.Getenv("VOIP_WEBHOOK_SECRET")
	if secret == "" {
		log.Fatal("set VOIP_WEBHOOK_SECRET to the outbox's webhook secret")
	}
	rc := &receiver{secret: []byte(secret), now: time.Now, seen: map[string]bool{},
		handle: func(id string, body []byte) { log.Printf("delivery %s: %s", id, body) }}
	log.Fatal(http.ListenAndServe(*listen, rc))
}
