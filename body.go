package rocketchatvoip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/bodybudget"
)

// bodies is the process's body budget: every handler's request bodies are
// held against it, across config reloads. Its limit is the largest
// body_budget of the handlers provisioned and not yet cleaned up, and no
// user's share of it is less than the largest max_body.
var bodies = struct {
	budget   *bodybudget.Budget
	mu       sync.Mutex
	handlers map[*Handler]struct{}
}{budget: bodybudget.New(defaultBodyBudget, defaultMaxBody), handlers: map[*Handler]struct{}{}}

// useBodyBudget counts h's body_budget and max_body in the process's
// budget until releaseBodyBudget.
func (h *Handler) useBodyBudget() {
	bodies.mu.Lock()
	defer bodies.mu.Unlock()
	bodies.handlers[h] = struct{}{}
	setBodyBudget()
}

func (h *Handler) releaseBodyBudget() {
	bodies.mu.Lock()
	defer bodies.mu.Unlock()
	if _, ok := bodies.handlers[h]; !ok {
		return
	}
	delete(bodies.handlers, h)
	if len(bodies.handlers) > 0 {
		setBodyBudget()
	}
}

func setBodyBudget() {
	var limit, floor int64
	for h := range bodies.handlers {
		limit, floor = max(limit, h.BodyBudget), max(floor, h.MaxBody)
	}
	bodies.budget.SetLimit(limit, floor)
}

// firstBodyStep is the most of the budget a body holds before its bytes
// arrive: a body's buffer starts at this size (or its Content-Length, if
// smaller) and doubles only as it fills, up to its Content-Length or, for
// one without, one byte past max_body.
const firstBodyStep = 4 << 10

// maxBodyWait bounds how long a request waits for body budget; past it (or
// past db_timeout, if shorter) it is refused with 503 body_budget.
const maxBodyWait = time.Second

var (
	errBodyBudget  = errors.New("no body budget free: every byte of body_budget stayed in use")
	errBodyStalled = errors.New("the client sent no bytes of its body for db_timeout")
)

// heldBody is a request body, the bytes of the body budget it holds, and
// the user (or credentials) it holds them for: no one user holds more than
// its share of the budget.
type heldBody struct {
	bytes []byte
	key   string
	held  int64
}

// take holds n more bytes of the budget, waiting for them within the
// shorter of db_timeout and maxBodyWait.
func (b *heldBody) take(h *Handler, r *http.Request, n int64) error {
	if bodies.budget.TryAcquire(b.key, n) {
		b.held += n
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), min(time.Duration(h.DBTimeout), maxBodyWait))
	defer cancel()
	if err := bodies.budget.Acquire(ctx, b.key, n); err != nil {
		if r.Context().Err() != nil {
			return err
		}
		return errBodyBudget
	}
	b.held += n
	return nil
}

// give returns n of the bytes the body holds.
func (b *heldBody) give(n int64) {
	bodies.budget.Release(b.key, n)
	b.held -= n
}

// release gives back all the body holds of the budget.
func (b *heldBody) release() { b.give(b.held) }

// readBody reads the body of key's request into one buffer held against
// the body budget, or answers the request when the body cannot be had. The
// budget is taken as the bytes arrive, not from the Content-Length a
// client announces; a client that stops sending for db_timeout gets 400
// and its bytes go back. The body must be released.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, st *requestState, key string) (heldBody, reply, bool) {
	b := heldBody{key: key}
	src := newBodyReader(w, r, st, time.Duration(h.DBTimeout))
	var err error
	if r.ContentLength >= 0 {
		// Within max_body, as roomClose checked; the server reads no more
		// than Content-Length.
		err = b.read(h, r, src, r.ContentLength, true)
	} else {
		// One byte past max_body lets MaxBytesReader see a longer body.
		err = b.read(h, r, http.MaxBytesReader(w, src, h.MaxBody), h.MaxBody+1, false)
	}
	if err != nil {
		b.release()
		if r.ProtoMajor == 1 {
			// Not kept alive: net/http would otherwise read what is left
			// of the body before it answers, from a client that may have
			// stopped sending. (HTTP/2 resets the stream.)
			w.Header().Set("Connection", "close")
		}
		return heldBody{}, bodyFailed(st, err), true
	}
	src.done()
	return b, reply{}, false
}

// read reads src into the body's buffer, which grows as it fills, up to
// size bytes; sized: the body is exactly size bytes.
func (b *heldBody) read(h *Handler, r *http.Request, src io.Reader, size int64, sized bool) error {
	for {
		if len(b.bytes) == cap(b.bytes) {
			if sized && int64(len(b.bytes)) == size {
				return nil
			}
			if err := b.grow(h, r, min(size, max(2*int64(cap(b.bytes)), firstBodyStep))); err != nil {
				return err
			}
		}
		n, err := src.Read(b.bytes[len(b.bytes):cap(b.bytes)])
		b.bytes = b.bytes[:len(b.bytes)+n]
		switch {
		case err == io.EOF && sized && int64(len(b.bytes)) < size:
			return io.ErrUnexpectedEOF
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
	}
}

// grow moves the body into a buffer of size bytes; the old buffer counts
// against the budget until its bytes are copied.
func (b *heldBody) grow(h *Handler, r *http.Request, size int64) error {
	old := b.held
	if err := b.take(h, r, size); err != nil {
		return err
	}
	b.bytes = append(make([]byte, 0, size), b.bytes...)
	b.give(old)
	return nil
}

// bodyReader reads a request body, each read waiting at most idle for the
// client's bytes (through the connection's read deadline, where the server
// allows setting it), so that a client that stops sending gives back what
// its body holds. The server's own read timeout (Caddy's read_body) still
// applies.
type bodyReader struct {
	body     io.ReadCloser
	rc       *http.ResponseController
	idle     time.Duration
	server   time.Time // the server's read deadline; zero: none
	deadline bool      // the connection takes read deadlines
}

func newBodyReader(w http.ResponseWriter, r *http.Request, st *requestState, idle time.Duration) *bodyReader {
	br := &bodyReader{body: r.Body, rc: http.NewResponseController(w), idle: idle, deadline: true}
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.ReadTimeout > 0 {
		br.server = st.start.Add(srv.ReadTimeout)
	}
	return br
}

func (br *bodyReader) Read(p []byte) (int, error) {
	br.arm()
	n, err := br.body.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w: %w", errBodyStalled, err)
	}
	return n, err
}

// arm sets the read deadline idle from now (or the server's, if sooner).
func (br *bodyReader) arm() {
	if br.deadline {
		d := time.Now().Add(br.idle)
		if !br.server.IsZero() && br.server.Before(d) {
			d = br.server
		}
		br.deadline = br.rc.SetReadDeadline(d) == nil
	}
}

func (br *bodyReader) Close() error { return br.body.Close() }

// done puts the server's read deadline back, once the body is read whole.
func (br *bodyReader) done() {
	if br.deadline {
		br.rc.SetReadDeadline(br.server) //nolint:errcheck // it was taken before
	}
}

// beforeBody answers rep, decided from the credentials alone, without
// keeping the body. A body whose size is unknown (no Content-Length) is read
// to its end first and dropped, since one longer than max_body answers 413
// before anything else.
func (h *Handler) beforeBody(w http.ResponseWriter, r *http.Request, st *requestState, rep reply) reply {
	if r.ContentLength >= 0 {
		if r.ContentLength > smallBody && r.ProtoMajor == 1 {
			// net/http reads up to 256 KiB of an unread body (into no
			// buffer) before it writes the answer, so that the connection
			// can serve the next request. A small body has mostly arrived
			// with the headers, and keep-alive is worth it; for a large
			// one a client trickling it would hold the answer back, so the
			// connection is closed instead. (HTTP/2 resets the stream.)
			w.Header().Set("Connection", "close")
		} else if r.ContentLength > 0 {
			// net/http reads the rest before it answers: a client that
			// stops sending holds the answer back for db_timeout at most.
			newBodyReader(w, r, st, time.Duration(h.DBTimeout)).arm()
		}
		return rep
	}
	src := newBodyReader(w, r, st, time.Duration(h.DBTimeout))
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, src, h.MaxBody)); err != nil {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		return bodyFailed(st, err)
	}
	src.done()
	return rep
}

// smallBody is the largest unread body whose connection is kept open.
const smallBody = 64 << 10

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
