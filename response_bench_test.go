package rocketchatvoip

import (
	"net/http"
	"testing"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/params"
)

// discardWriter is a ResponseWriter that keeps nothing, reused across
// iterations like a server's.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

func BenchmarkWriteResponse(b *testing.B) {
	b.Run("success", func(b *testing.B) {
		w := &discardWriter{h: http.Header{}}
		b.ReportAllocs()
		for b.Loop() {
			writeJSON(w, http.StatusOK, successBody("rbWWg8Gu7sw3f5cJ2"))
		}
	})
	b.Run("fixed", func(b *testing.B) {
		w := &discardWriter{h: http.Header{}}
		b.ReportAllocs()
		for b.Loop() {
			writeJSON(w, http.StatusBadRequest, bodyRoomClosed)
		}
	})
	b.Run("invalid-params", func(b *testing.B) {
		w := &discardWriter{h: http.Header{}}
		e := &params.Error{Message: "must have required property 'token'"}
		b.ReportAllocs()
		for b.Loop() {
			writeJSON(w, http.StatusBadRequest, invalidParamsBody(e))
		}
	})
}
