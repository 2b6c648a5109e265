package outbox

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dblimit"
)

// Headers of a delivery.
const (
	HeaderEvent     = "X-RocketChat-Voip-Event"
	HeaderDelivery  = "X-RocketChat-Voip-Delivery"
	HeaderSignature = "X-RocketChat-Voip-Signature"
)

// Config says where and how events are delivered.
type Config struct {
	URL string
	// Secret signs each delivery (see Sign); empty sends them unsigned,
	// which the app allows only when the user says so.
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
	// PollInterval is the longest wait between claims when nothing was
	// deliverable; the wait ends sooner when a retry falls due sooner.
	PollInterval time.Duration
	// Retain is how long delivered events are kept before they are
	// purged; 0 keeps them.
	Retain time.Duration
	// Congestion, when set, reports for how many windows in a row the
	// database has been the bottleneck of the requests that come before
	// the outbox (closes waiting for their slots,
	// dblimit.Limiter.CongestedWindows; 0: it has room). The outbox gives
	// way to sustained congestion (yieldWindows): a catch-up then works a
	// tenth of the time (yieldShare), so that a drained backlog does not
	// take the database the closes need, and the stream of new events
	// waits a poll_interval between claims. At the first congested
	// window a catch-up stops its extra loops. Closes that merely happen,
	// or queue for a moment, do not slow the stream: its lag stays within
	// a batch or two of each close.
	Congestion func() int
}

// yieldWindows congested windows in a row make the steady stream wait a
// poll_interval between claims, and a catch-up work a tenth of the time
// (dblimit.SustainedWindows: 0.5 to 1 s of closes queueing).
const yieldWindows = dblimit.SustainedWindows

// yieldShare is the share of the time a catch-up works while congestion is
// sustained: after each full batch it pauses nine times as long as the
// batch took.
const yieldShare = 0.1

// catchUpLoops is how many more claim loops run while more is due at once
// and the closes are not congested. One loop's pace is bound by its round
// trips (a claim, the POSTs, the marks, one after another), not by what the
// database can take, so a backlog drains faster with more of them while
// the database has room. Each extra loop claims its own batches, as another
// gateway would, so each room's order holds; they stop as soon as a claim
// is not full or the closes need the database.
const catchUpLoops = 3

const (
	// scanFactor × Batch due events are read per claim at most: enough to
	// fill a batch past events that wait behind an earlier one of their
	// room, which are then deferred out of the way.
	scanFactor = 2
	// countBudget bounds the backlog's count to a hundredth of the time:
	// counting 300,000 events (~80 ms) runs every 8 s, a few every second.
	countBudget = 100
	// purgeBatch events are deleted per statement, every purgeEvery.
	purgeBatch = 500
	purgeEvery = time.Minute
)

// Observer is told what happens, for metrics and logs.
type Observer interface {
	Delivered(e Event)
	Failed(e Event, err error, parked bool)
	Status(st Status)
	Purged(n int64)
	Error(what string, err error)
}

// Deliverer runs the delivery loop.
type Deliverer struct {
	store  *Store
	cfg    Config
	client *http.Client
	obs    Observer
	id     string // this gateway's claim prefix
	seq    atomic.Uint64
	// catchingUp counts the catch-up loops running.
	catchingUp atomic.Int32
	// foundAt is when a claim of any loop last found events (UnixNano).
	foundAt atomic.Int64
	now     func() time.Time
}

// NewDeliverer returns a deliverer; Run starts it.
func NewDeliverer(store *Store, cfg Config, obs Observer) *Deliverer {
	var b [6]byte
	rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read never fails
	return &Deliverer{
		store:  store,
		cfg:    cfg,
		client: newClient(cfg.Timeout),
		obs:    obs,
		id:     hex.EncodeToString(b[:]),
		now:    func() time.Time { return time.Now().UTC().Truncate(time.Millisecond) },
	}
}

// Run delivers until ctx is cancelled. A batch being delivered then is
// finished first (each POST is bounded by the webhook timeout), so that a
// reload neither drops nor repeats a delivery: the next config's deliverer
// is already claiming other events meanwhile. With a retention, it also
// purges old delivered events.
func (d *Deliverer) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if d.cfg.Retain > 0 {
		wg.Go(func() { d.purgeLoop(ctx) })
	}
	var (
		status      statusRefresh
		streamBatch time.Duration // how long the last batch that found events took
	)
	for ctx.Err() == nil {
		from := time.Now()
		claimedAt, n, full := d.once(ctx)
		d.refreshStatus(ctx, &status)
		if n == d.cfg.Batch || full {
			// More is due at once: a catch-up, or a stream of closes
			// faster than a batch per claim. While the database has room
			// it takes more loops; while the closes queue for a moment it
			// keeps to this one; once their congestion lasts it works a
			// tenth of the time.
			if d.congested(yieldWindows) {
				pause := time.Duration(float64(time.Since(from)) * (1/yieldShare - 1))
				select {
				case <-ctx.Done():
				case <-time.After(min(pause, d.cfg.PollInterval*4)):
				}
				continue
			}
			if d.congested(1) {
				continue
			}
			for d.catchingUp.Load() < catchUpLoops {
				d.catchingUp.Add(1)
				wg.Go(func() {
					defer d.catchingUp.Add(-1)
					d.catchUp(ctx)
				})
			}
			continue
		}
		// Nothing more was due: wait for the earliest retry, or poll_interval
		// for new events, whichever comes first. A retry that fell due since
		// the claim looked is due now. While closes keep coming (a claim
		// found some within the last poll_interval, this one or one of the
		// catch-up's) and the database has room, the next claim follows
		// after as long as the last batch took instead: a steady stream is
		// then delivered within a batch or two of each close, not a
		// poll_interval, and a drained catch-up does not leave a
		// poll_interval of closes to pile up behind it.
		if took := time.Since(from); n > 0 {
			streamBatch = took
		}
		wait := d.cfg.PollInterval
		if time.Since(time.Unix(0, d.foundAt.Load())) < wait && streamBatch > 0 && streamBatch < wait && !d.congested(yieldWindows) {
			wait = streamBatch
		} else if next, ok, err := d.store.NextDue(ctx, claimedAt); err == nil && ok {
			wait = max(0, min(wait, time.Until(next)))
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// congested reports whether the closes have been congested for at least
// windows windows in a row.
func (d *Deliverer) congested(windows int) bool {
	return d.cfg.Congestion != nil && d.cfg.Congestion() >= windows
}

// catchUp claims and delivers batches beside Run's loop while each claim
// is full and the closes are not congested at all.
func (d *Deliverer) catchUp(ctx context.Context) {
	for ctx.Err() == nil {
		if _, n, full := d.once(ctx); (n < d.cfg.Batch && !full) || d.congested(1) {
			return
		}
	}
}

// statusRefresh is when the gauges were last refreshed, and the counts.
type statusRefresh struct {
	last, nextCount time.Time
	st              Status
}

// refreshStatus reports the status about every second. The oldest pending
// event costs two index reads; the counts read an entry per event, so they
// are refreshed every second only while that takes under 10 ms, and
// otherwise every countBudget times as long as the last count took.
func (d *Deliverer) refreshStatus(ctx context.Context, r *statusRefresh) {
	if time.Since(r.last) < time.Second {
		return
	}
	r.last = time.Now()
	oldest, err := d.store.OldestPending(ctx)
	if err != nil {
		return
	}
	r.st.OldestPending = oldest
	if oldest.IsZero() {
		r.st.Pending = 0 // exact without a count
	}
	if !r.last.Before(r.nextCount) {
		pending, parked, err := d.store.Counts(ctx)
		took := time.Since(r.last)
		r.nextCount = r.last.Add(max(time.Second, countBudget*took))
		if err != nil {
			return
		}
		r.st.Pending, r.st.Parked = pending, parked
	}
	d.obs.Status(r.st)
}

// purgeLoop purges delivered events older than Retain, every purgeEvery.
func (d *Deliverer) purgeLoop(ctx context.Context) {
	for {
		d.purge(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(purgeEvery):
		}
	}
}

// purge runs one round: windows of purgeBatch delivered events in id order,
// deleting the old ones, until a window has none (the rest are younger) or
// the end. Between statements it pauses as long as the last one took, so
// that it takes at most half of one connection.
func (d *Deliverer) purge(ctx context.Context) {
	var after int64
	for ctx.Err() == nil {
		start := time.Now()
		now := d.now()
		n, last, err := d.store.Purge(ctx, after, now.Add(-d.cfg.Retain), now, purgeBatch)
		if err != nil {
			if ctx.Err() == nil {
				d.obs.Error("purging delivered events", err)
			}
			return
		}
		if n > 0 {
			d.obs.Purged(n)
		}
		if n == 0 || last == 0 {
			return
		}
		after = last
		select {
		case <-ctx.Done():
		case <-time.After(max(10*time.Millisecond, time.Since(start))):
		}
	}
}

// once claims one batch and delivers it; it returns the time the claim
// looked for due events, the batch's size, and whether the claim's scan was
// full (more may be due at once).
func (d *Deliverer) once(ctx context.Context) (time.Time, int, bool) {
	owner := d.id + "-" + strconv.FormatUint(d.seq.Add(1), 10)
	now := d.now()
	events, full, err := d.store.Claim(ctx, owner, now, d.cfg.Lease, d.cfg.Batch, scanFactor*d.cfg.Batch, now.Add(d.cfg.BackoffMax))
	if err != nil {
		if ctx.Err() == nil {
			d.obs.Error("claiming events", err)
		}
		return now, 0, false
	}
	if len(events) > 0 {
		d.foundAt.Store(time.Now().UnixNano())
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
	if err := d.store.MarkDelivered(markCtx, delivered, owner, d.now()); err != nil {
		d.obs.Error("recording deliveries", err)
		return now, len(events), full
	}
	for _, e := range delivered {
		d.obs.Delivered(e)
	}
	return now, len(events), full
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

// Sign is the signature header's value for a delivery: "t=" and the Unix
// time in seconds, then ",v1=" and the hex HMAC-SHA256, under secret, of
// the time, the delivery id and the body, joined by dots:
//
//	HMAC-SHA256(secret, "<t>.<delivery id>.<body>")
//
// Covering the time lets a receiver refuse a stale copy; covering the id,
// a copy sent again under another X-RocketChat-Voip-Delivery.
func Sign(secret []byte, t time.Time, deliveryID int64, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "." + strconv.FormatInt(deliveryID, 10) + "."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// newClient is the webhook's HTTP client. It never follows a redirect: a
// receiver (or whoever answers for its name) could otherwise send the
// signed POST anywhere the gateway reaches, Caddy's admin API included.
func newClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// RedactURL is raw without what may carry a secret: the query string and
// the fragment go, a password becomes "xxxxx". It is how a webhook URL (or
// a redirect's Location) appears in logs and in room_events.last_error.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(an unparsable URL)"
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return u.Redacted()
}

func (d *Deliverer) post(ctx context.Context, e Event) error {
	body := Encode(e)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return redactErr(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderEvent, e.Type)
	req.Header.Set(HeaderDelivery, strconv.FormatInt(e.ID, 10))
	if len(d.cfg.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(d.cfg.Secret, d.now(), e.ID, body))
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return redactErr(err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) //nolint:errcheck // drained for keep-alive
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode <= 399:
		where := "no Location"
		if loc, err := resp.Location(); err == nil {
			where = "Location " + clip(RedactURL(loc.String()), 120)
		} else if resp.Header.Get("Location") != "" {
			where = "an unparsable Location"
		}
		return fmt.Errorf("the receiver answered %d (%s); redirects are not followed", resp.StatusCode, where)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return fmt.Errorf("the receiver answered %d", resp.StatusCode)
	}
	return nil
}

// clip is s cut to at most n bytes, whole characters only: the receiver
// chooses a Location, and last_error holds 255 bytes.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// redactErr is err with the URL that net/http puts in it redacted.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return &url.Error{Op: ue.Op, URL: RedactURL(ue.URL), Err: ue.Err}
	}
	return err
}
