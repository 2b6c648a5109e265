package rocketchatvoip

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
	"unsafe"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/bodybudget"
)

// bodies is the process's body budget: every handler's request bodies are
// held against it, across config reloads. Its limit is the largest
// body_budget of the handlers provisioned and not yet cleaned up.
var bodies = struct {
	budget *bodybudget.Budget
	mu     sync.Mutex
	limits map[*Handler]int64
}{budget: bodybudget.New(defaultBodyBudget), limits: map[*Handler]int64{}}

// useBodyBudget counts h's body_budget in the process's budget until
// releaseBodyBudget.
func (h *Handler) useBodyBudget() {
	bodies.mu.Lock()
	defer bodies.mu.Unlock()
	bodies.limits[h] = h.BodyBudget
	bodies.budget.SetLimit(largestBodyBudget())
}

func (h *Handler) releaseBodyBudget() {
	bodies.mu.Lock()
	defer bodies.mu.Unlock()
	if _, ok := bodies.limits[h]; !ok {
		return
	}
	delete(bodies.limits, h)
	if len(bodies.limits) > 0 {
		bodies.budget.SetLimit(largestBodyBudget())
	}
}

func largestBodyBudget() int64 {
	var n int64
	for _, l := range bodies.limits {
		n = max(n, l)
	}
	return n
}

// bodyStep is how much a body without Content-Length grows its buffer by
// at a time: bounded steps rather than doubling, which would hold up to
// twice the body.
const bodyStep = 64 << 10

// maxBodyWait bounds how long a request waits for body budget; past it (or
// past db_timeout, if shorter) it is refused with 503 body_budget.
const maxBodyWait = time.Second

var errBodyBudget = errors.New("no body budget free: every byte of body_budget stayed in use")

// readBody reads the body into one buffer held against the body budget,
// sized from Content-Length when the request has one. It returns the body
// and the function that returns its bytes to the budget, or, when the body
// could not be had (release is nil), the reply to send.
//
// The string shares the buffer's memory (a conversion would copy the body
// and hold it twice); the buffer is never written after it is returned.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, st *requestState) (body string, release func(), rep reply) {
	var held int64
	take := func(n int64) error {
		if bodies.budget.TryAcquire(n) {
			held += n
			return nil
		}
		ctx, cancel := context.WithTimeout(r.Context(), min(time.Duration(h.DBTimeout), maxBodyWait))
		defer cancel()
		if err := bodies.budget.Acquire(ctx, n); err != nil {
			if r.Context().Err() != nil {
				return err
			}
			return errBodyBudget
		}
		held += n
		return nil
	}
	var buf []byte
	err := func() error {
		if r.ContentLength >= 0 {
			// Within max_body, as roomClose checked; the server reads no
			// more than Content-Length.
			if err := take(r.ContentLength); err != nil {
				return err
			}
			buf = make([]byte, r.ContentLength)
			_, err := io.ReadFull(r.Body, buf)
			return err
		}
		src := http.MaxBytesReader(w, r.Body, h.MaxBody)
		for {
			if len(buf) == cap(buf) {
				// One byte past max_body lets MaxBytesReader see a longer body.
				next := int64(cap(buf)) + min(bodyStep, h.MaxBody+1-int64(cap(buf)))
				// The old buffer counts until its bytes are copied.
				old := held
				if err := take(next); err != nil {
					return err
				}
				buf = append(make([]byte, 0, next), buf...)
				bodies.budget.Release(old)
				held -= old
			}
			n, err := src.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
		}
	}()
	if err != nil {
		bodies.budget.Release(held)
		return "", nil, bodyFailed(st, err)
	}
	return unsafe.String(unsafe.SliceData(buf), len(buf)), func() { bodies.budget.Release(held) }, reply{}
}

// beforeBody answers rep, decided from the credentials alone, without
// keeping the body. A body whose size is unknown (no Content-Length) is read
// to its end first and dropped, since one longer than max_body answers 413
// before anything else.
func (h *Handler) beforeBody(w http.ResponseWriter, r *http.Request, st *requestState, rep reply) reply {
	if r.ContentLength >= 0 {
		if r.ContentLength > bodyStep && r.ProtoMajor == 1 {
			// net/http reads up to 256 KiB of an unread body (into no
			// buffer) before it writes the answer, so that the connection
			// can serve the next request. A small body has mostly arrived
			// with the headers, and keep-alive is worth it; for a large
			// one a client trickling it would hold the answer back, so the
			// connection is closed instead. (HTTP/2 resets the stream.)
			w.Header().Set("Connection", "close")
		}
		return rep
	}
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, h.MaxBody)); err != nil {
		return bodyFailed(st, err)
	}
	return rep
}

// bodyFailed is the reply to a body that could not be read whole.
func bodyFailed(st *requestState, err error) reply {
	switch {
	case errors.As(err, new(*http.MaxBytesError)):
		return replyTooLarge
	case errors.Is(err, errBodyBudget):
		st.err = err
		return replyBodyBudget
	default:
		st.err = err
		return replyUnreadable
	}
}
