package params

import "testing"

var typicalBodies = map[string]string{
	"minimal":       `{"rid":"rbWWg8Gu7sw3f5cJ2","token":"8ae6b8a2-9c5f-4e1f-b1ab-0f7cd3b1d9e4"}`,
	"with-options":  `{"rid":"rbWWg8Gu7sw3f5cJ2","token":"8ae6b8a2-9c5f-4e1f-b1ab-0f7cd3b1d9e4","options":{"comment":"Customer called about the invoice","tags":["billing","vip"]}}`,
	"invalid-first": `{"rid":1}`,
}

func BenchmarkParse(b *testing.B) {
	for name, body := range typicalBodies {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			data := []byte(body)
			for b.Loop() {
				Parse("application/json", data)
			}
		})
	}
}
