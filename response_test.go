package rocketchatvoip

import (
	"testing"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/params"
)

func TestAppendJSStringMatchesJSONStringify(t *testing.T) {
	for in, want := range map[string]string{
		"plain":        `"plain"`,
		`q"b\s`:        `"q\"b\\s"`,
		"<a>&b":        `"<a>&b"`,
		"\b\f\n\r\t":   `"\b\f\n\r\t"`,
		"\x00\x1f\x7f": "\"\\u0000\\u001f\x7f\"",
		"\u2028\u2029": "\"\u2028\u2029\"",
		"é😀":           `"é😀"`,
		"bad\xffutf8":  "\"bad\ufffdutf8\"",
	} {
		if got := string(appendJSString(nil, in)); got != want {
			t.Errorf("appendJSString(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestBodies(t *testing.T) {
	if got := string(successBody("R1")); got != `{"rid":"R1","success":true}` {
		t.Error(got)
	}
	if got := string(invalidParamsBody(&params.Error{Message: "must have required property 'rid'"})); got != `{"success":false,"error":"must have required property 'rid' [invalid-params]","errorType":"invalid-params"}` {
		t.Error(got)
	}
	if got := string(tooManyRequestsBody(42)); got != `{"success":false,"error":"Error, too many requests. Please slow down. You must wait 42 seconds before trying this endpoint again. [error-too-many-requests]"}` {
		t.Error(got)
	}
}
