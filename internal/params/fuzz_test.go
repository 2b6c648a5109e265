package params

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/corpus"
)

// FuzzParse: the body reader and validator never panic, and never accept a
// body that the schema (checked here independently, straight from
// Rocket.Chat's schema with AJV's coercion rules) rejects. The seed corpus is
// the differential corpus of the conformance suite.
//
//	go test ./params -fuzz FuzzParse -fuzztime 60s
func FuzzParse(f *testing.F) {
	for _, c := range corpus.Cases() {
		f.Add(c.ContentType, string(c.Body))
	}
	f.Fuzz(func(t *testing.T, contentType string, body string) {
		p, err := Parse(contentType, []byte(body))
		if strings.Contains(contentType, "application/json") {
			// The one-pass scanner agrees with encoding/json + Validate.
			sameOutcome(t, body)
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		if !strings.Contains(contentType, "application/json") || tooDeepForReference(body) {
			return // forms are strings by construction; other bodies never validate
		}
		// An accepted body satisfies the schema written out independently.
		var v any
		dec := json.NewDecoder(bytes.NewReader(wellFormedUTF8(trimBOMs([]byte(body)))))
		dec.UseNumber()
		if dec.Decode(&v) != nil {
			t.Fatalf("accepted a body that is not JSON: %q", body)
		}
		if !schemaAccepts(v) {
			t.Fatalf("accepted %q, which the schema rejects (got %+v)", body, p)
		}
	})
}

// schemaAccepts is the schema written out again, with AJV's coercion: a
// string field takes a string, number, boolean or null; options is an object
// whose comment is such a scalar and whose tags is null, "", 0, false or an
// array of such scalars; no other top-level keys.
func schemaAccepts(v any) bool {
	obj, ok := v.(map[string]any)
	if !ok {
		return false
	}
	scalar := func(x any) bool {
		switch x.(type) {
		case string, json.Number, bool, nil:
			return true
		}
		return false
	}
	for k, x := range obj {
		switch k {
		case "rid", "token":
			if !scalar(x) {
				return false
			}
		case "options":
			opts, ok := x.(map[string]any)
			if !ok {
				return false
			}
			if c, ok := opts["comment"]; ok && !scalar(c) {
				return false
			}
			if tags, ok := opts["tags"]; ok {
				switch tv := tags.(type) {
				case nil:
				case string:
					if tv != "" {
						return false
					}
				case json.Number:
					if f, err := tv.Float64(); err != nil || f != 0 {
						return false
					}
				case bool:
					if tv {
						return false
					}
				case []any:
					for _, item := range tv {
						if !scalar(item) {
							return false
						}
					}
				default:
					return false
				}
			}
		default:
			return false
		}
	}
	_, hasRid := obj["rid"]
	_, hasToken := obj["token"]
	return hasRid && hasToken
}
