package params

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/corpus"
)

// referenceParseJSON is the obvious, slow reading of a JSON body: decode it
// with encoding/json into generic values, then Validate. The one-pass scanner
// in json.go must agree with it on every body.
func referenceParseJSON(body string) (Params, *Error) {
	data := wellFormedUTF8(trimBOMs([]byte(body)))
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return validate(map[string]any{}) // not JSON: {}
	}
	if _, err := dec.Token(); err != io.EOF {
		return validate(map[string]any{}) // trailing data: not JSON either
	}
	switch v.(type) {
	case map[string]any, []any:
		return validate(v)
	default: // the router spreads a scalar into an object without 'rid'
		return validate(map[string]any{})
	}
}

func sameOutcome(t *testing.T, body string) {
	t.Helper()
	if tooDeepForReference(body) {
		return
	}
	got, gotErr := Parse("application/json", []byte(body))
	want, wantErr := referenceParseJSON(body)
	if (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Message) {
		t.Fatalf("body %q: scanner says %v, reference says %v", body, gotErr, wantErr)
	}
	if gotErr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("body %q: scanner gives %#v, reference gives %#v", body, got, want)
	}
}

func TestScannerAgreesWithReferenceOnCorpus(t *testing.T) {
	n := 0
	for _, c := range corpus.Cases() {
		sameOutcome(t, string(c.Body))
		n++
	}
	if n < 200 {
		t.Fatalf("corpus has %d bodies, want at least 200", n)
	}
}

// BenchmarkReference measures the encoding/json reading the scanner
// replaced, for comparison with BenchmarkParse.
func BenchmarkReference(b *testing.B) {
	for name, body := range typicalBodies {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				referenceParseJSON(body)
			}
		})
	}
}

// tooDeepForReference reports a body that may nest past encoding/json's depth
// limit (10,000), where JSON.parse and the scanner go on but the reference
// gives up; such bodies are judged by the conformance suite alone.
func tooDeepForReference(body string) bool {
	return strings.Count(body, "[")+strings.Count(body, "{") > 10000
}
