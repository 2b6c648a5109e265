package outbox

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Headers of a delivery.
const (
	HeaderEvent     = "X-RocketChat-Voip-Event"
	HeaderDelivery  = "X-RocketChat-Voip-Delivery"
	HeaderSignature = "X-RocketChat-Voip-Signature"
)

// Config says where and how events are delivered.
type Config struct {
	URL    string
	Secret []byte
	// Timeout bounds one POST.
	Timeout time.Duration
	// MaxAttempts failed attempts park an event.
	MaxAttempts int
	// BackoffBase and BackoffMax shape the wait before attempt n+1:
	// min(BackoffMax, BackoffBase·2^(n-1)), with jitter of up to half of it.
	BackoffBase, BackoffMax time.Duration
	// Batch is how many events one claim takes; they are delivered in
	// parallel, which is safe since a claim holds at most one event per room.
	Batch int
	// Lease is how long a claim lasts; a gateway that dies holding one has
	// its events delivered by another after it.
	Lease time.Duration
	// PollInterval is the wait between claims when nothing was deliverable.
	PollInterval time.Duration
}

// Observer is told what happens, for metrics and logs.
type Observer interface {
	Delivered(e Event)
	Failed(e Event, err error, parked bool)
	Status(st Status)
	Error(what string, err error)
}

// Deliverer runs the delivery loop.
type Deliverer struct {
	store  *Store
	cfg    Config
	client *http.Client
	obs    Observer
	id     string // this gateway's claim prefix
	seq    uint64
	now    func() time.Time
}

// NewDeliverer returns a deliverer; Run starts it.
func NewDeliverer(store *Store, cfg Config, obs Observer) *Deliverer {
	var b [6]byte
	rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read never fails
	return &Deliverer{
		store:  store,
		cfg:    cfg,
		client: &http.Client{Timeout: cfg.Timeout},
		obs:    obs,
		id:     hex.EncodeToString(b[:]),
		now:    func() time.Time { return time.Now().UTC().Truncate(time.Millisecond) },
	}
}

// Run delivers until ctx is cancelled. A batch being delivered then is
// finished first (each POST is bounded by the webhook timeout), so that a
// reload neither drops nor repeats a delivery: the next config's deliverer
// is already claiming other events meanwhile.
func (d *Deliverer) Run(ctx context.Context) {
	lastStatus := time.Time{}
	for ctx.Err() == nil {
		n := d.once(ctx)
		if time.Since(lastStatus) >= time.Second {
			lastStatus = time.Now()
			if st, err := d.store.Status(ctx); err == nil {
				d.obs.Status(st)
			}
		}
		if n < d.cfg.Batch {
			select {
			case <-ctx.Done():
			case <-time.After(d.cfg.PollInterval):
			}
		}
	}
}

// once claims one batch and delivers it; it returns the batch's size.
func (d *Deliverer) once(ctx context.Context) int {
	d.seq++
	owner := d.id + "-" + strconv.FormatUint(d.seq, 10)
	events, err := d.store.Claim(ctx, owner, d.now(), d.cfg.Lease, d.cfg.Batch)
	if err != nil {
		if ctx.Err() == nil {
			d.obs.Error("claiming events", err)
		}
		return 0
	}
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		delivered []Event
	)
	batchCtx := context.WithoutCancel(ctx)
	for _, e := range events {
		wg.Go(func() {
			if d.deliver(batchCtx, owner, e) {
				mu.Lock()
				delivered = append(delivered, e)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	// One statement records the batch's deliveries. A gateway that dies
	// before it has them sent again by another after the lease: the
	// documented duplicates.
	markCtx, cancel := context.WithTimeout(batchCtx, 5*time.Second)
	defer cancel()
	ids := make([]int64, len(delivered))
	for i, e := range delivered {
		ids[i] = e.ID
	}
	if err := d.store.MarkDelivered(markCtx, ids, owner, d.now()); err != nil {
		d.obs.Error("recording deliveries", err)
		return len(events)
	}
	for _, e := range delivered {
		d.obs.Delivered(e)
	}
	return len(events)
}

// deliver POSTs e and reports whether the receiver took it; a failure is
// recorded at once (with its backoff, or parked).
func (d *Deliverer) deliver(ctx context.Context, owner string, e Event) bool {
	err := d.post(ctx, e)
	if err == nil {
		return true
	}
	markCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	now := d.now()
	parked, merr := d.store.MarkFailed(markCtx, e, owner, now, now.Add(d.backoff(e.Attempts+1)), d.cfg.MaxAttempts, err.Error())
	if merr != nil {
		d.obs.Error("recording a failed delivery", merr)
		return false
	}
	d.obs.Failed(e, err, parked)
	return false
}

// backoff is the wait after the attempt-th failure: exponential, capped,
// with jitter so that receivers coming back are not hit in step.
func (d *Deliverer) backoff(attempt int) time.Duration {
	wait := float64(d.cfg.BackoffBase) * math.Pow(2, float64(attempt-1))
	wait = min(wait, float64(d.cfg.BackoffMax))
	return time.Duration(wait/2 + mrand.Float64()*wait/2)
}

// Body is the JSON POSTed for an event.
type Body struct {
	ID        int64           `json:"id"`
	Type      string          `json:"type"`
	Rid       string          `json:"rid"`
	CreatedAt string          `json:"created_at"`
	Payload   json.RawMessage `json:"payload"`
}

// Encode returns the delivery body of e.
func Encode(e Event) []byte {
	b, _ := json.Marshal(Body{ID: e.ID, Type: e.Type, Rid: e.Rid, CreatedAt: e.CreatedAt.UTC().Format("2006-01-02T15:04:05.000Z07:00"), Payload: e.Payload})
	return b
}

// Sign is the signature header's value for body: "sha256=" and the hex
// HMAC-SHA256 of the body under secret.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func (d *Deliverer) post(ctx context.Context, e Event) error {
	body := Encode(e)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderEvent, e.Type)
	req.Header.Set(HeaderDelivery, strconv.FormatInt(e.ID, 10))
	if len(d.cfg.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(d.cfg.Secret, body))
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) //nolint:errcheck // drained for keep-alive
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("the receiver answered %d", resp.StatusCode)
	}
	return nil
}
