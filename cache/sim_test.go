package cache

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"sync/atomic"
	"testing"

	"github.com/maypok86/otter/v2"

	"github.com/haybale/haybale/needle"
)

// Volumes of the simulated cluster.
const (
	simWritableVid = 1 // recent uploads
	simReadOnlyVid = 2 // everything older
)

// fakeUpstream serves synthetic images of known lengths without a
// network: every image's bytes are a prefix of one shared buffer. It is
// safe for concurrent use.
type fakeUpstream struct {
	lens  map[uint64]int // by photo key
	buf   []byte
	reads atomic.Int64
}

func (f *fakeUpstream) Load(_ context.Context, id needle.PhotoID, _ needle.SizeCode) (Loaded, error) {
	n, ok := f.lens[id.Key]
	if !ok {
		return Loaded{}, ErrNotFound
	}
	f.reads.Add(1)
	return Loaded{
		Data:         f.buf[:n],
		ContentType:  "image/jpeg",
		ETag:         `"00000000000000aa"`,
		LastModified: "Mon, 02 Jan 2006 15:04:05 GMT",
		Writable:     id.Vid == simWritableVid,
		Source:       "fake",
	}, nil
}

// The request mix of the store benchmark (bench/RESULTS.md, "Store GET"):
// the four sizes of a photo, about 5 KB, 30 KB, 120 KB and 400 KB.
var simSizeBytes = [4]int{5 << 10, 30 << 10, 120 << 10, 400 << 10}

// simTrace is a synthetic request trace (see BenchmarkHitRatio).
type simTrace struct {
	paths   []string // by image
	lens    map[uint64]int
	vids    []uint32 // by image
	bytes   int64    // of all images
	reqs    []int32  // image of each request
	viaCDN  []bool   // whether each request was sent through the CDN
	warmup  int      // requests before measuring
	maxSize int
}

// Parameters of the trace model.
const (
	simImages      = 100_000
	simZipfS       = 1.1
	simRecentShare = 0.2  // images on writable volumes
	simCDNShare    = 0.7  // requests from clients that go through the CDN
	simCDNCapacity = 0.10 // of all image bytes
	simCacheShare  = 0.10 // of all image bytes: the cache's capacity
	simRequests    = 2_000_000
	simWarmup      = 500_000
)

// newSimTrace draws a trace of requests over images, the first warmup of
// them for warming up.
func newSimTrace(seed uint64, images, requests, warmup int, recentWeight float64) *simTrace {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	tr := &simTrace{lens: make(map[uint64]int, images), paths: make([]string, images), vids: make([]uint32, images)}
	// Image i is the i-th upload: the newest simRecentShare of them are
	// on writable volumes. Each image is one size of a photo, the four
	// sizes equally likely, its length varied by up to 10%.
	for i := range images {
		n := simSizeBytes[r.IntN(4)]
		n += int(float64(n) * 0.1 * (2*r.Float64() - 1))
		vid := uint32(simReadOnlyVid)
		if i >= images-int(simRecentShare*float64(images)) {
			vid = simWritableVid
		}
		id := needle.PhotoID{Vid: vid, Key: uint64(i + 1), Cookie: 1}
		tr.lens[id.Key] = n
		tr.vids[i] = vid
		tr.paths[i] = needle.ImagePath(id, needle.SizeSmall, "jpg")
		tr.bytes += int64(n)
		tr.maxSize = max(tr.maxSize, n)
	}
	// Popularity: weighted sampling without replacement (Efraimidis and
	// Spirakis), a recent image weighing recentWeight times an old one,
	// so the hottest images are mostly recent and the tail mostly old.
	type scored struct {
		img   int
		score float64
	}
	order := make([]scored, images)
	for i := range order {
		w := 1.0
		if tr.vids[i] == simWritableVid {
			w = recentWeight
		}
		order[i] = scored{i, math.Pow(r.Float64(), 1/w)}
	}
	sort.Slice(order, func(a, b int) bool { return order[a].score > order[b].score })
	zipf := rand.NewZipf(r, simZipfS, 1, uint64(images-1))
	tr.reqs = make([]int32, requests)
	tr.viaCDN = make([]bool, requests)
	for i := range tr.reqs {
		tr.reqs[i] = int32(order[zipf.Uint64()].img)
		tr.viaCDN[i] = r.Float64() < simCDNShare
	}
	tr.warmup = warmup
	return tr
}

// discardWriter is a ResponseWriter that keeps the status only.
type discardWriter struct {
	hdr  http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.hdr }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }

// simResult is what one replay of a trace measured.
type simResult struct {
	clientReqs, cacheReqs, cacheHits, directReqs, directHits int64
	storeReads, writableReads                                int64
}

// replay runs the trace through a CDN model and a cache with opts: the
// CDN is a byte-bounded otter cache (it admits everything); requests
// through it that miss reach the cache with the CDN header.
func (tr *simTrace) replay(tb testing.TB, opts Options) simResult {
	up := &fakeUpstream{lens: tr.lens, buf: make([]byte, tr.maxSize)}
	opts.Capacity = int64(simCacheShare * float64(tr.bytes))
	opts.Logger = slog.New(slog.DiscardHandler)
	opts.Loader = up
	c, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	cdn := otter.Must(&otter.Options[int32, int32]{
		MaximumWeight: uint64(simCDNCapacity * float64(tr.bytes)),
		Weigher:       func(_ int32, n int32) uint32 { return uint32(n) },
		Executor:      func(fn func()) { fn() },
	})
	h := c.Handler()
	w := &discardWriter{hdr: http.Header{}}
	direct := http.Header{}
	viaCDN := http.Header{DefaultCDNHeader: {"1"}}
	req := &http.Request{Method: http.MethodGet, URL: &url.URL{}}
	var res simResult
	for i, img := range tr.reqs {
		measure := i >= tr.warmup
		if measure {
			res.clientReqs++
		}
		if tr.viaCDN[i] {
			if _, ok := cdn.GetIfPresent(img); ok {
				continue
			}
			cdn.Set(img, int32(tr.lens[uint64(img)+1]))
			req.Header = viaCDN
		} else {
			req.Header = direct
		}
		req.URL.Path = tr.paths[img]
		clear(w.hdr)
		before := up.reads.Load()
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			tb.Fatalf("status %d", w.code)
		}
		if !measure {
			continue
		}
		hit := up.reads.Load() == before
		res.cacheReqs++
		if hit {
			res.cacheHits++
		}
		if !tr.viaCDN[i] {
			res.directReqs++
			if hit {
				res.directHits++
			}
		}
		if !hit {
			res.storeReads++
			if tr.vids[img] == simWritableVid {
				res.writableReads++
			}
		}
	}
	return res
}

// BenchmarkHitRatio replays a Zipf-skewed trace through the cache under
// each admission policy and reports the cache's hit ratio and the store
// reads it leaves. Run it once: -benchtime 1x.
//
// The trace model: 100,000 images (each one size of a photo: 5, 30, 120
// or 400 KB, equally likely, +-10%); the cache holds 10% of their bytes.
// Requests pick images by popularity rank with Zipf s = 1.1. The newest
// 20% of the images sit on writable volumes, the rest on read-only ones,
// and popularity favours recent images: the rank order is drawn by
// weighted sampling without replacement, a recent image weighing 10 (or,
// in the second set, 100) times an old one. 70% of the requests come from clients behind a CDN, modelled
// as a byte-bounded cache (otter, admit-all) holding 10% of the bytes;
// only its misses reach the cache tier, with the CDN header. The other 30%
// reach the cache directly. 500,000 requests warm the caches; the next
// 1,500,000 are measured.
func BenchmarkHitRatio(b *testing.B) {
	policies := []struct {
		name string
		opts Options
	}{
		{"haystack", Options{}},
		{"admit-all", Options{AdmitFromCDN: true, AdmitReadOnly: true}},
		{"cdn-rule-only", Options{AdmitReadOnly: true}},
		{"read-only-rule-only", Options{AdmitFromCDN: true}},
	}
	for _, weight := range []float64{10, 100} {
		tr := newSimTrace(1, simImages, simRequests, simWarmup, weight)
		for _, p := range policies {
			b.Run(fmt.Sprintf("recent-x%g/%s", weight, p.name), func(b *testing.B) {
				var res simResult
				for b.Loop() {
					res = tr.replay(b, p.opts)
				}
				b.ReportMetric(float64(res.cacheHits)/float64(res.cacheReqs), "hit-ratio")
				b.ReportMetric(float64(res.directHits)/float64(res.directReqs), "direct-hit-ratio")
				b.ReportMetric(1000*float64(res.storeReads)/float64(res.clientReqs), "store-reads/kreq")
				b.ReportMetric(1000*float64(res.writableReads)/float64(res.clientReqs), "writable-reads/kreq")
				b.ReportMetric(float64(res.cacheReqs)/float64(res.clientReqs), "cache-share")
			})
		}
	}
}

// TestSimTraceShape checks, on a smaller trace, the properties the
// benchmark relies on: a skewed trace, a mostly recent head, the CDN
// share, and admission rules that change what the cache keeps.
func TestSimTraceShape(t *testing.T) {
	const images, requests = 10_000, 200_000
	tr := newSimTrace(1, images, requests, requests/4, 10)
	counts := make([]int, images)
	recentInHead, cdn := 0, 0
	for i, img := range tr.reqs {
		counts[img]++
		if tr.viaCDN[i] {
			cdn++
		}
	}
	imgs := make([]int, images)
	for i := range imgs {
		imgs[i] = i
	}
	sort.Slice(imgs, func(a, b int) bool { return counts[imgs[a]] > counts[imgs[b]] })
	top := 0
	for _, img := range imgs[:images/100] {
		top += counts[img]
		if tr.vids[img] == simWritableVid {
			recentInHead++
		}
	}
	if share := float64(top) / requests; share < 0.3 {
		t.Errorf("the hottest 1%% of images get %.2f of the requests; want a skewed trace", share)
	}
	if share := float64(recentInHead) / (images / 100); share < 0.5 {
		t.Errorf("%.2f of the hottest images are recent, want most", share)
	}
	if share := float64(cdn) / requests; math.Abs(share-simCDNShare) > 0.01 {
		t.Errorf("CDN share %.3f, want %.2f", share, simCDNShare)
	}
	haystack := tr.replay(t, Options{})
	all := tr.replay(t, Options{AdmitFromCDN: true, AdmitReadOnly: true})
	if haystack.cacheReqs == 0 || haystack.cacheHits == 0 || haystack.cacheHits > haystack.cacheReqs {
		t.Fatalf("replay: %+v", haystack)
	}
	// The CDN model (otter) is not exactly deterministic, so the traffic
	// reaching the cache differs a little between replays.
	if haystack.cacheHits == all.cacheHits {
		t.Errorf("the admission rules made no difference: %+v, %+v", haystack, all)
	}
}
