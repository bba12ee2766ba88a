package cache

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
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

// Parameters of the new-photo model of BenchmarkFirstViews.
const (
	simUploadEvery  = 100  // measured requests between two uploads
	simFirstViews   = 10   // views followed per new photo
	simViewSpacing  = 2000 // mean requests between two views of a new photo
	simThumbViews   = 0.7  // share of the views that are of t (else s)
	simNewPhotoSize = 5 << 10
)

// firstViews is what BenchmarkFirstViews measures over the first views of
// new photos.
type firstViews struct {
	views, cdnHits, cacheReqs, cacheHits, storeReads int64
	photos                                           int64
}

// newView is one scheduled view of a new photo.
type newView struct {
	at    int // trace position it comes before
	photo int
	size  needle.SizeCode
	cdn   bool
}

// replayFirstViews replays tr through the CDN model and a cache (as
// replay does) while new photos are uploaded, one every simUploadEvery
// requests of the measured part, each viewed simFirstViews times at
// exponentially spaced later moments (t or s; through the CDN or not, in
// the trace's proportions). With push, each upload puts the photo's t and
// s into the cache through the push handler, as the gateway does.
func (tr *simTrace) replayFirstViews(tb testing.TB, opts Options, push bool) firstViews {
	lens := make(map[uint64]int, len(tr.lens))
	for k, v := range tr.lens {
		lens[k] = v
	}
	up := &fakeUpstream{lens: lens, buf: make([]byte, max(tr.maxSize, simNewPhotoSize))}
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
	r := rand.New(rand.NewPCG(7, 0xf1e5))
	images := len(tr.paths)
	// Schedule the uploads and their views.
	var uploads []int // trace position of each upload
	var views []newView
	for at := tr.warmup; at < len(tr.reqs); at += simUploadEvery {
		p := len(uploads)
		uploads = append(uploads, at)
		next := float64(at)
		for range simFirstViews {
			next += r.ExpFloat64() * simViewSpacing
			size := needle.SizeSmall
			if r.Float64() < simThumbViews {
				size = needle.SizeThumb
			}
			views = append(views, newView{at: int(next), photo: p, size: size, cdn: r.Float64() < simCDNShare})
		}
	}
	sort.SliceStable(views, func(a, b int) bool { return views[a].at < views[b].at })
	idOf := func(p int) needle.PhotoID {
		return needle.PhotoID{Vid: simWritableVid, Key: uint64(images + 1 + p), Cookie: 1}
	}
	h, pushH := c.Handler(), c.PushHandler()
	w := &discardWriter{hdr: http.Header{}}
	direct := http.Header{}
	viaCDN := http.Header{DefaultCDNHeader: {"1"}}
	req := &http.Request{Method: http.MethodGet, URL: &url.URL{}}
	serve := func(path string, hdr http.Header) bool {
		req.URL.Path, req.Header = path, hdr
		clear(w.hdr)
		before := up.reads.Load()
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			tb.Fatalf("%s: status %d", path, w.code)
		}
		return up.reads.Load() == before
	}
	var res firstViews
	nextUpload, nextView := 0, 0
	body := make([]byte, simNewPhotoSize)
	for i, img := range tr.reqs {
		for nextUpload < len(uploads) && uploads[nextUpload] == i {
			id := idOf(nextUpload)
			up.lens[id.Key] = simNewPhotoSize
			res.photos++
			if push {
				for _, s := range []needle.SizeCode{needle.SizeThumb, needle.SizeSmall} {
					pr := httptest.NewRequest(http.MethodPut, needle.ImagePath(id, s, ""), bytes.NewReader(body))
					pr.Header.Set("Content-Type", "image/jpeg")
					pr.Header.Set("ETag", `"00000000000000bb"`)
					pr.Header.Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
					pw := &discardWriter{hdr: http.Header{}}
					pushH.ServeHTTP(pw, pr)
					if pw.code != http.StatusNoContent {
						tb.Fatalf("push: status %d", pw.code)
					}
				}
			}
			nextUpload++
		}
		for nextView < len(views) && views[nextView].at <= i {
			v := views[nextView]
			nextView++
			res.views++
			hdr := direct
			if v.cdn {
				ck := int32(images + 2*v.photo + int(v.size))
				if _, ok := cdn.GetIfPresent(ck); ok {
					res.cdnHits++
					continue
				}
				cdn.Set(ck, simNewPhotoSize)
				hdr = viaCDN
			}
			res.cacheReqs++
			if serve(needle.ImagePath(idOf(v.photo), v.size, "jpg"), hdr) {
				res.cacheHits++
			} else {
				res.storeReads++
			}
		}
		// The background trace, as replay does.
		hdr := direct
		if tr.viaCDN[i] {
			if _, ok := cdn.GetIfPresent(img); ok {
				continue
			}
			cdn.Set(img, int32(tr.lens[uint64(img)+1]))
			hdr = viaCDN
		}
		serve(tr.paths[img], hdr)
	}
	return res
}

// BenchmarkFirstViews measures how the first simFirstViews views of new
// photos are served on the trace model of BenchmarkHitRatio (recent
// images weighing 10 times old ones, the Haystack admission rules),
// without and with the gateway's push of t and s at upload: one upload
// every 100 requests, each new photo viewed 10 times at exponentially
// spaced moments (mean 2,000 requests apart), 70% of the views of t, 70%
// through the CDN. It reports the share of those views answered without a
// store read (by the CDN or the cache), the cache's hit ratio on those
// that reached it, and store reads per new photo. Run it once:
// -benchtime 1x.
func BenchmarkFirstViews(b *testing.B) {
	tr := newSimTrace(1, simImages, simRequests, simWarmup, 10)
	for _, push := range []bool{false, true} {
		b.Run(fmt.Sprintf("push=%v", push), func(b *testing.B) {
			var res firstViews
			for b.Loop() {
				res = tr.replayFirstViews(b, Options{}, push)
			}
			b.ReportMetric(float64(res.cdnHits+res.cacheHits)/float64(res.views), "first-views-hit-ratio")
			b.ReportMetric(float64(res.cacheHits)/float64(res.cacheReqs), "cache-hit-ratio")
			b.ReportMetric(float64(res.storeReads)/float64(res.photos), "store-reads/photo")
		})
	}
}

// TestFirstViewsPush checks, on a smaller trace, that pushing new photos
// at upload turns their first views into hits: fewer of them reach a
// store.
func TestFirstViewsPush(t *testing.T) {
	tr := newSimTrace(1, 10_000, 200_000, 50_000, 10)
	without := tr.replayFirstViews(t, Options{}, false)
	with := tr.replayFirstViews(t, Options{}, true)
	if without.views == 0 || without.views != with.views || without.photos != with.photos {
		t.Fatalf("replays differ: %+v, %+v", without, with)
	}
	if with.storeReads >= without.storeReads || with.cacheHits <= without.cacheHits {
		t.Errorf("the push did not help: without %+v, with %+v", without, with)
	}
	// Without the push, every photo's first view that reaches the cache
	// goes to a store.
	if without.storeReads < without.photos/2 {
		t.Errorf("without the push, only %d store reads for %d new photos", without.storeReads, without.photos)
	}
}
