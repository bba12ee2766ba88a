package gateway

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// BenchmarkUpload measures end-to-end uploads through the gateway's HTTP
// handler into a one-store cluster: read the body, decode, resize to the
// four sizes, encode, write the needles (fdatasync'ed) and build the URLs.
// serial runs one upload at a time; parallel runs GOMAXPROCS at once. MB/s
// counts uploaded bytes.
//
//	go test -run '^$' -bench Upload -benchtime 20x ./gateway/
func BenchmarkUpload(b *testing.B) {
	e := startEnv(b, envOptions{stores: 1, replication: 1, gw: Options{RecentUploads: 1}})
	for _, size := range []struct {
		name string
		w, h int
	}{{"12MP", 4000, 3000}, {"2MP", 1920, 1080}} {
		data := encodeJPEG(b, photoLike(size.w, size.h, 42), 90)
		upload := func(b *testing.B) {
			resp, err := http.Post(e.url+"/photos", "image/jpeg", bytes.NewReader(data))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				b.Errorf("HTTP %d", resp.StatusCode)
			}
		}
		report := func(b *testing.B, start time.Time) {
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "uploads/s")
		}
		b.Run(fmt.Sprintf("%s/%.1fMB/serial", size.name, float64(len(data))/1e6), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			start := time.Now()
			for b.Loop() {
				upload(b)
			}
			report(b, start)
		})
		b.Run(fmt.Sprintf("%s/%.1fMB/parallel", size.name, float64(len(data))/1e6), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					upload(b)
				}
			})
			report(b, start)
		})
	}
}
