package evloop

import "testing"

// benchRequest is a browser's image GET, as the store's loop sees most.
const benchRequest = "GET /p/1234567/89abcdef01234567/w640.webp HTTP/1.1\r\n" +
	"Host: store1.example:8080\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
	"Accept: image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5\r\n" +
	"Accept-Language: en-US,en;q=0.5\r\n" +
	"Accept-Encoding: gzip, deflate, br\r\n" +
	"Referer: https://www.example/\r\n" +
	"Connection: keep-alive\r\n\r\n"

// BenchmarkParse measures Request.parse of benchRequest.
func BenchmarkParse(b *testing.B) {
	raw := []byte(benchRequest)
	var r Request
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if err := r.parse(raw); err != nil {
			b.Fatal(err)
		}
	}
}
