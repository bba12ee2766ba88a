package cache

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
)

// hitServer starts a cache server over loopback whose images (n of each
// size code in sizes) are all cached, and returns its base URL and the
// image paths.
func hitServer(b *testing.B, sizes []int, n int) (string, []string) {
	b.Helper()
	up := &fakeUpstream{lens: map[uint64]int{}}
	var paths []string
	maxLen := 0
	for i := range n * len(sizes) {
		key := uint64(i + 1)
		up.lens[key] = sizes[i%len(sizes)]
		maxLen = max(maxLen, sizes[i%len(sizes)])
		paths = append(paths, needle.ImagePath(needle.PhotoID{Vid: simWritableVid, Key: key, Cookie: 7}, needle.SizeSmall, "jpg"))
	}
	up.buf = make([]byte, maxLen)
	c, err := New(Options{Loader: up, Capacity: 1 << 30, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := NewServer(c, ServerOptions{Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	base := "http://" + srv.Addr().String()
	for _, p := range paths { // warm: every image cached
		resp, err := http.Get(base + p)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if got := up.reads.Load(); got != int64(len(paths)) {
		b.Fatalf("%d fetches to warm %d images", got, len(paths))
	}
	return base, paths
}

// The size mixes of the request-rate benchmarks.
var hitMixes = []struct {
	name  string
	sizes []int
}{
	{"t-5KB", []int{5 << 10}},
	{"mix-t-s-m-l", simSizeBytes[:]},
}

// BenchmarkHitGET measures cache-hit GETs over loopback from 64
// connections (a Go load generator in the same process): 1,000 cached
// images per size, each connection cycling through them from its own
// start. It reports requests/s and MB/s of image bytes.
func BenchmarkHitGET(b *testing.B) {
	const conns = 64
	for _, mix := range hitMixes {
		b.Run(mix.name, func(b *testing.B) {
			base, paths := hitServer(b, mix.sizes, 1000)
			tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr}
			var next, bytes atomic.Int64
			var failed atomic.Int64
			buf := make([][]byte, conns)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for g := range conns {
				buf[g] = make([]byte, 512<<10)
				wg.Go(func() {
					i := g * 997
					for next.Add(1) <= int64(b.N) {
						i++
						resp, err := hc.Get(base + paths[i%len(paths)])
						if err != nil {
							failed.Add(1)
							continue
						}
						n, _ := io.CopyBuffer(io.Discard, resp.Body, buf[g])
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							failed.Add(1)
						}
						bytes.Add(n)
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if failed.Load() > 0 {
				b.Fatalf("%d requests failed", failed.Load())
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(bytes.Load())/1e6/elapsed.Seconds(), "MB/s")
		})
	}
}

// BenchmarkHitGETWrk runs wrk (when installed) against the same cached
// images: wrk -t2 -c64 -d<HAYBALE_WRK_DURATION, default 5s>, cycling
// through the paths with bench/wrk-paths.lua. It reports wrk's
// requests/s; b.N is meaningless (run with -benchtime 1x).
func BenchmarkHitGETWrk(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed")
	}
	dur := os.Getenv("HAYBALE_WRK_DURATION")
	if dur == "" {
		dur = "5s"
	}
	for _, mix := range hitMixes {
		b.Run(mix.name, func(b *testing.B) {
			base, paths := hitServer(b, mix.sizes, 1000)
			f, err := os.CreateTemp(b.TempDir(), "paths")
			if err != nil {
				b.Fatal(err)
			}
			w := bufio.NewWriter(f)
			for _, p := range paths {
				fmt.Fprintln(w, p)
			}
			if err := w.Flush(); err != nil {
				b.Fatal(err)
			}
			f.Close()
			var out []byte
			for b.Loop() {
				cmd := exec.Command(wrk, "-t2", "-c64", "-d"+dur, "--latency", "-s", "../bench/wrk-paths.lua", base)
				cmd.Env = append(os.Environ(), "PATHS="+f.Name())
				if out, err = cmd.CombinedOutput(); err != nil {
					b.Fatalf("wrk: %v\n%s", err, out)
				}
			}
			m := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`).FindSubmatch(out)
			if m == nil {
				b.Fatalf("no rate in wrk's output:\n%s", out)
			}
			rate, _ := strconv.ParseFloat(string(m[1]), 64)
			b.ReportMetric(rate, "req/s")
			if regexp.MustCompile(`Non-2xx`).Match(out) {
				b.Errorf("wrk saw non-2xx answers:\n%s", out)
			}
			b.Logf("wrk output:\n%s", out)
		})
	}
}
