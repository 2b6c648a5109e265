package rocketchatvoip

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/ratelimit"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

// fastClose tries a known closer's close, with a valid body, in one round
// trip: the rate limit applied as the credentials' last authentication
// found the bypass, then one CALL that closes the room only if every
// condition of the success still holds (store.FastClose). Not answered: it
// changed nothing (a count it took is given back), and the steps of
// roomClose decide the answer, every error included, within what is left
// of the same db_timeout and on the same database slot.
func (c *closeRequest) fastClose() (reply, bool) {
	if c.invalid != nil {
		return reply{}, false
	}
	known, ok := c.h.db.Closers().Lookup(c.userID, c.hashed)
	if s := c.h.db.Store(); !ok || s == nil || !s.HasFastClose() {
		return reply{}, false
	}
	var (
		bypass  *bool // nil: no rate limit, so the bypass changes no answer
		counted bool
		d       ratelimit.Decision
		client  string
	)
	if limiter := c.h.limiter; limiter != nil {
		bypass = &known.BypassRateLimit
		if !known.BypassRateLimit {
			client = clientIP(c.r)
			d, counted = limiter.Take(client), true
			if !d.Allowed {
				// A 429 needs the credentials read. The steps count the
				// request again: past the limit a count changes no answer.
				return reply{}, false
			}
		}
	}
	rep, answered := c.db.withDatabase(func(ctx context.Context) (reply, bool) {
		from := time.Now()
		res, err := c.db.store.FastClose(ctx, store.FastCloseRequest{
			CloseRequest: store.CloseRequest{
				Rid: c.p.Rid, VisitorToken: c.p.Token, Comment: c.p.Comment, Tags: c.p.Tags,
				Agent: store.Agent{ID: c.userID, Username: known.Username, Name: known.Name},
			},
			HashedToken: c.hashed, LoginExpiration: time.Duration(c.h.LoginExpiration), BypassRateLimit: bypass,
		})
		c.db.spent(from, res.RoundTrips, nil)
		switch {
		case err == nil:
			return reply{http.StatusOK, OutcomeClosed, successBody(c.p.Rid)}, true
		case errors.Is(err, store.ErrNotFast):
			return reply{}, false // the steps' turn
		default:
			return c.db.failed(err), true
		}
	})
	if rep.outcome != OutcomeClosed && counted {
		// Not (yet) known to be a request the limit counts.
		c.h.limiter.Return(client, d)
	}
	if !answered {
		return reply{}, false
	}
	c.st.userID, c.st.rid = c.userID, c.p.Rid
	if rep.outcome == OutcomeClosed && counted {
		setRateLimitHeaders(c.w, d)
	}
	return rep, true
}
