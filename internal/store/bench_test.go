package store

import "testing"

func BenchmarkHashLoginToken(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		HashLoginToken("Xq3u8MRgFbYz5hD7VbK2pQx9wL0sT4nJeA6cZ1mR_yU")
	}
}
