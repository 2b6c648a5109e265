package rocketchatvoip

import (
	"net/http"
	"strconv"
	"unicode/utf8"
)

// Response bodies, byte for byte Rocket.Chat's (compact JSON, keys in
// Rocket.Chat's order). Fixed bodies are built once.
var (
	bodyUnauthorized6 = []byte(`{"status":"error","message":"You must be logged in to do this."}`)
	bodyUnauthorized7 = []byte(`{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}`)
	bodyForbidden     = []byte(`{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}`)
	bodyInvalidToken  = []byte(`{"success":false,"error":"invalid-token"}`)
	bodyInvalidRoom   = []byte(`{"success":false,"error":"invalid-room"}`)
	bodyRoomClosed    = []byte(`{"success":false,"error":"room-closed"}`)
	bodyTooLarge      = []byte(`{"success":false,"error":"request entity too large"}`)
	bodyUnavailable   = []byte(`{"success":false,"error":"service-unavailable"}`)
	bodyInternalError = []byte(`{"success":false,"error":"internal-error"}`)
	bodyUnreadable    = []byte(`{"success":false,"error":"request body could not be read"}`)
)

// invalidParamsBody returns the 400 body for a validation error.
func invalidParamsBody(err error) []byte {
	b := make([]byte, 0, 96)
	b = append(b, `{"success":false,"error":`...)
	b = appendJSString(b, err.Error()+" [invalid-params]")
	return append(b, `,"errorType":"invalid-params"}`...)
}

// tooManyRequestsBody is Rocket.Chat's rate limiter message.
func tooManyRequestsBody(waitSeconds int64) []byte {
	b := make([]byte, 0, 192)
	b = append(b, `{"success":false,"error":"Error, too many requests. Please slow down. You must wait `...)
	b = strconv.AppendInt(b, waitSeconds, 10)
	return append(b, ` seconds before trying this endpoint again. [error-too-many-requests]"}`...)
}

// successBody is {"rid":"<rid>","success":true}.
func successBody(rid string) []byte {
	b := make([]byte, 0, len(rid)+32)
	b = append(b, `{"rid":`...)
	b = appendJSString(b, rid)
	return append(b, `,"success":true}`...)
}

// appendJSString appends s as JavaScript's JSON.stringify writes a string:
// only '"', '\\' and control characters are escaped (not <, >, & or
// U+2028/9, unlike encoding/json).
func appendJSString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, "\ufffd"...) // as a JS string decoded from these bytes would hold
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		}
		switch c {
		case '"':
			b = append(b, '\\', '"')
		case '\\':
			b = append(b, '\\', '\\')
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			if c < 0x20 {
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			} else {
				b = append(b, c)
			}
		}
		i++
	}
	return append(b, '"')
}

// writeJSON writes a complete response with the contract's framing.
func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client is gone; nothing to do
}
