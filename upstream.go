package rocketchatvoip

import (
	"bytes"
	"io"
)

// What a handler does with credentials unknown to MySQL (unknown_credentials).
const (
	UnknownCredentialsUnauthorized = "unauthorized" // 401, as Rocket.Chat answers (default)
	UnknownCredentialsUpstream     = "upstream"     // pass the request to the next handler: Rocket.Chat answers it
)

// replyPassedOn stands for a request the next handler answered.
var replyPassedOn = reply{outcome: OutcomeUnknownUpstream}

// passOn hands the request to the next handler instead of answering it:
// with its body as the client sent it (read already for a recent closer,
// replayed from the buffer), and with no database slot held while
// Rocket.Chat answers.
func (c *closeRequest) passOn() (reply, bool) {
	c.db.letGo()
	if c.bodyRead {
		c.r.Body = io.NopCloser(bytes.NewReader(c.body.bytes))
		c.r.ContentLength = int64(len(c.body.bytes)) // a chunked body is sent whole
	}
	c.st.nextErr = c.next.ServeHTTP(c.w, c.r)
	return replyPassedOn, true
}
