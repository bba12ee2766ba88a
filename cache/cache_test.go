package cache_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haybale/haybale/cache"
	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc/rpctest"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

var bg = context.Background()

// countingTransport counts the image requests a cache sends to the
// stores, and can hold answers (after the store produced them) until
// released.
type countingTransport struct {
	base  http.RoundTripper
	count atomic.Int64
	delay time.Duration // before forwarding each request

	holdArmed atomic.Bool
	held      chan struct{} // gets a value when an answer is held
	release   chan struct{} // closed to let held answers go
}

func newTransport() *countingTransport {
	return &countingTransport{
		base:    http.DefaultTransport.(*http.Transport).Clone(),
		held:    make(chan struct{}, 16),
		release: make(chan struct{}),
	}
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.count.Add(1)
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	resp, err := c.base.RoundTrip(r)
	if c.holdArmed.Load() {
		c.held <- struct{}{}
		select {
		case <-c.release:
		case <-r.Context().Done():
			if err == nil {
				resp.Body.Close()
			}
			return nil, r.Context().Err()
		}
	}
	return resp, err
}

// env is a running cluster, a client that writes to it, and helpers to
// start cache nodes in front of it.
type env struct {
	t  *testing.T
	c  *testcluster.Cluster
	cl *client.Client
	r  *rand.Rand
}

func newEnv(t *testing.T, stores int) *env {
	t.Helper()
	c := testcluster.Start(t, testcluster.Options{Stores: stores, Replication: stores})
	cl, err := client.New(client.Options{Directory: c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return &env{t: t, c: c, cl: cl, r: rand.New(rand.NewPCG(1, 2))}
}

// photo is a written photo and its images.
type photo struct {
	id   needle.PhotoID
	data [4][]byte
}

func (p *photo) path(size needle.SizeCode) string { return needle.ImagePath(p.id, size, "jpg") }

// write stores a photo of four random images, the large one about
// largeLen bytes.
func (e *env) write(largeLen int) *photo {
	e.t.Helper()
	p := &photo{}
	var ims []client.Image
	for i, s := range needle.PhotoSizes {
		n := largeLen >> (2 * (3 - i))
		p.data[i] = make([]byte, max(n, 64))
		for j := range p.data[i] {
			p.data[i][j] = byte(e.r.Uint32())
		}
		ims = append(ims, client.Image{Size: s, ContentType: needle.TypeJPEG, Data: p.data[i]})
	}
	var err error
	// The directory may still be allocating the first volume.
	for range 100 {
		if p.id, err = e.cl.WritePhoto(bg, ims); err == nil {
			return p
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatal(err)
	return nil
}

// node is a running cache node.
type node struct {
	srv  *cache.Server
	base string
	// internal is the base URL of the internal listener (eviction,
	// metrics), plain HTTP in these tests.
	internal string
	tr       *countingTransport
	hc       *http.Client
}

// startNode starts a cache node with its own client (so its own lookup
// cache) whose store requests go through a counting transport. ln may be
// nil.
func (e *env) startNode(opts cache.Options, ln net.Listener, tr *countingTransport) *node {
	e.t.Helper()
	if tr == nil {
		tr = newTransport()
	}
	cl, err := client.New(client.Options{Directory: e.c.DirAddr, HTTPClient: &http.Client{Transport: tr, Timeout: 10 * time.Second}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cl.Close() })
	opts.Client = cl
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := cache.New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	sopts := cache.ServerOptions{Addr: "127.0.0.1:0", Listener: ln, InternalAddr: "127.0.0.1:0", Logger: opts.Logger}
	srv, err := cache.NewServer(c, sopts)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("cache Serve: %v", err)
		}
	})
	return &node{srv: srv, base: "http://" + srv.Addr().String(), internal: "http://" + srv.InternalAddr().String(), tr: tr, hc: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}}
}

// answer is a response reduced to what must match between servers.
type answer struct {
	code int
	hdr  http.Header
	body []byte
}

func (a answer) String() string {
	var keys []string
	for k := range a.hdr {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%d", a.code)
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %s: %q", k, a.hdr[k])
	}
	fmt.Fprintf(&b, "\n  body %d bytes", len(a.body))
	return b.String()
}

func do(t *testing.T, hc *http.Client, method, url string, hdr map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, url, err)
	}
	resp.Header.Del("Date")
	return answer{resp.StatusCode, resp.Header, body}
}

func (n *node) get(t *testing.T, path string, hdr map[string]string) answer {
	t.Helper()
	return do(t, n.hc, http.MethodGet, n.base+path, hdr)
}

// metric returns the value of one sample of the node's /metrics, 0 when
// absent.
func (n *node) metric(t *testing.T, sample string) float64 {
	t.Helper()
	a := do(t, n.hc, http.MethodGet, n.internal+"/metrics", nil)
	sc := bufio.NewScanner(bytes.NewReader(a.body))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && name == sample {
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", sample, err)
			}
			return f
		}
	}
	return 0
}

// TestHitAndMissAnswerLikeTheStore sends each kind of request to a fresh
// cache node twice (a miss, then a hit) and to a store: status, headers
// and body must be the same all three times.
func TestHitAndMissAnswerLikeTheStore(t *testing.T) {
	e := newEnv(t, 1)
	// The large image, 400 KB, is cached in the memfd: its hits are sent
	// with sendfile on the fast path, or read from the mapping.
	p := e.write(400000)
	storeBase := "http://" + e.c.Stores[0].HTTPAddr()
	hc := &http.Client{}
	ref := do(t, hc, http.MethodGet, storeBase+p.path(needle.SizeThumb), nil)
	if ref.code != 200 || !bytes.Equal(ref.body, p.data[0]) {
		t.Fatalf("store: %v", ref)
	}
	etag, lastMod := ref.hdr.Get("Etag"), ref.hdr.Get("Last-Modified")
	lm, _ := http.ParseTime(lastMod)
	wrongCookie := p.id
	wrongCookie.Cookie ^= 1
	n := len(p.data[0])

	cases := []struct {
		name, method, path string
		hdr                map[string]string
		code               int
		cached             bool // the second request is a hit
	}{
		{"GET", "GET", p.path(needle.SizeThumb), nil, 200, true},
		{"GET large, other extension", "GET", needle.ImagePath(p.id, needle.SizeLarge, "png"), nil, 200, true},
		{"GET large", "GET", p.path(needle.SizeLarge), nil, 200, true},
		{"HEAD large", "HEAD", p.path(needle.SizeLarge), nil, 200, true},
		{"Range large", "GET", p.path(needle.SizeLarge), map[string]string{"Range": "bytes=70000-140000"}, 206, true},
		{"If-None-Match other, large", "GET", p.path(needle.SizeLarge), map[string]string{"If-None-Match": `"0"`}, 200, true},
		{"HEAD", "HEAD", p.path(needle.SizeThumb), nil, 200, true},
		{"If-None-Match", "GET", p.path(needle.SizeThumb), map[string]string{"If-None-Match": etag}, 304, true},
		{"If-None-Match other", "GET", p.path(needle.SizeThumb), map[string]string{"If-None-Match": `"0"`}, 200, true},
		{"If-Modified-Since", "GET", p.path(needle.SizeThumb), map[string]string{"If-Modified-Since": lastMod}, 304, true},
		{"If-Modified-Since earlier", "GET", p.path(needle.SizeThumb), map[string]string{"If-Modified-Since": lm.Add(-time.Hour).Format(http.TimeFormat)}, 200, true},
		{"If-Match mismatch", "GET", p.path(needle.SizeThumb), map[string]string{"If-Match": `"0"`}, 412, true},
		{"Range", "GET", p.path(needle.SizeThumb), map[string]string{"Range": "bytes=0-9"}, 206, true},
		{"Range suffix", "GET", p.path(needle.SizeThumb), map[string]string{"Range": "bytes=-7"}, 206, true},
		{"Range HEAD", "HEAD", p.path(needle.SizeThumb), map[string]string{"Range": "bytes=3-"}, 206, true},
		{"Range unsatisfiable", "GET", p.path(needle.SizeThumb), map[string]string{"Range": fmt.Sprintf("bytes=%d-", n)}, 416, true},
		{"Range malformed", "GET", p.path(needle.SizeThumb), map[string]string{"Range": "bytes=x-"}, 416, true},
		{"Range several", "GET", p.path(needle.SizeThumb), map[string]string{"Range": "bytes=0-1,3-4"}, 200, true},
		{"If-Range mismatch", "GET", p.path(needle.SizeThumb), map[string]string{"Range": "bytes=0-1", "If-Range": `"0"`}, 200, true},
		{"wrong cookie", "GET", needle.ImagePath(wrongCookie, needle.SizeThumb, ""), nil, 404, false},
		{"original never written", "GET", p.path(needle.SizeOriginal), nil, 404, false},
		{"malformed path", "GET", "/p/1-xyz/t", nil, 400, false},
		{"bad size", "GET", "/p/1-1-0000000000000001/q", nil, 400, false},
		{"POST", "POST", p.path(needle.SizeThumb), nil, 405, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nd := e.startNode(cache.Options{}, nil, nil)
			want := do(t, hc, c.method, storeBase+c.path, c.hdr)
			if want.code != c.code {
				t.Fatalf("store answered %v, want %d", want, c.code)
			}
			miss := do(t, nd.hc, c.method, nd.base+c.path, c.hdr)
			hit := do(t, nd.hc, c.method, nd.base+c.path, c.hdr)
			for _, got := range []struct {
				what string
				a    answer
			}{{"miss", miss}, {"second request", hit}} {
				if got.a.String() != want.String() || !bytes.Equal(got.a.body, want.body) {
					t.Errorf("%s:\n%v\nstore:\n%v", got.what, got.a, want)
				}
			}
			if c.code == 200 && c.method == "GET" && !bytes.Equal(miss.body, p.data[0]) && !bytes.Equal(miss.body, p.data[3]) {
				t.Errorf("body is not the image")
			}
			hits, misses := nd.metric(t, "haybale_cache_hits_total"), nd.metric(t, "haybale_cache_misses_total")
			switch {
			case c.cached && (hits != 1 || misses != 1):
				t.Errorf("hits %v misses %v, want 1 and 1", hits, misses)
			case !c.cached && hits != 0:
				t.Errorf("hits %v, want 0", hits)
			}
			if reads := nd.tr.count.Load(); c.cached && reads != 1 {
				t.Errorf("%d store reads, want 1", reads)
			}
		})
	}
}

// TestAdmissionRules checks each rule on and off: whether a second GET of
// an image reads the store again, and the refusal metric.
func TestAdmissionRules(t *testing.T) {
	e := newEnv(t, 1)
	p := e.write(4000)
	cdn := map[string]string{cache.DefaultCDNHeader: "1"}
	type tc struct {
		name   string
		opts   cache.Options
		hdr    map[string]string
		cached bool
		rule   string // refusing rule when not cached
	}
	run := func(t *testing.T, c tc) {
		nd := e.startNode(c.opts, nil, nil)
		for i := range 2 {
			a := nd.get(t, p.path(needle.SizeSmall), c.hdr)
			if a.code != 200 || !bytes.Equal(a.body, p.data[needle.SizeSmall]) {
				t.Fatalf("GET %d: %v", i, a)
			}
		}
		wantReads := int64(2)
		if c.cached {
			wantReads = 1
		}
		if got := nd.tr.count.Load(); got != wantReads {
			t.Errorf("%d store reads for 2 GETs, want %d", got, wantReads)
		}
		if c.rule != "" {
			if got := nd.metric(t, `haybale_cache_admissions_refused_total{rule="`+c.rule+`"}`); got != 2 {
				t.Errorf("refusals by %s: %v, want 2", c.rule, got)
			}
		}
		if got := nd.metric(t, "haybale_cache_admissions_total"); (got == 1) != c.cached {
			t.Errorf("admissions %v", got)
		}
	}
	for _, c := range []tc{
		{name: "direct", cached: true},
		{name: "through CDN", hdr: cdn, rule: "cdn"},
		{name: "through CDN, custom header", opts: cache.Options{CDNHeader: "Via-Edge"}, hdr: map[string]string{"via-edge": "pop1"}, rule: "cdn"},
		{name: "custom header, default one ignored", opts: cache.Options{CDNHeader: "Via-Edge"}, hdr: cdn, cached: true},
		{name: "through CDN, AdmitFromCDN", opts: cache.Options{AdmitFromCDN: true}, hdr: cdn, cached: true},
	} {
		t.Run(c.name, func(t *testing.T) { run(t, c) })
	}
	// Now the volume turns read-only.
	if _, err := e.c.Directory.MarkReadOnly(bg, &directorypb.DirectoryMarkReadOnlyRequest{Vid: p.id.Vid, Reason: "cache test"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []tc{
		{name: "read-only volume", rule: "read-only"},
		{name: "read-only volume, AdmitReadOnly", opts: cache.Options{AdmitReadOnly: true}, cached: true},
		{name: "read-only volume through CDN, both admitted", opts: cache.Options{AdmitReadOnly: true, AdmitFromCDN: true}, hdr: cdn, cached: true},
	} {
		t.Run(c.name, func(t *testing.T) { run(t, c) })
	}
}

// TestReadOnlyAfterLookupTTL: a node that cached a writable volume's
// images stops admitting new ones once its lookup cache learns the volume
// turned read-only.
func TestReadOnlyAfterLookupTTL(t *testing.T) {
	e := newEnv(t, 1)
	p := e.write(4000)
	tr := newTransport()
	cl, err := client.New(client.Options{Directory: e.c.DirAddr, HTTPClient: &http.Client{Transport: tr}, LookupTTL: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, err := cache.New(cache.Options{Client: cl, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := c.Handler()
	get := func(size needle.SizeCode) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p.path(size), nil))
		if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), p.data[size]) {
			t.Fatalf("GET %v: %d", size, rec.Code)
		}
	}
	get(needle.SizeThumb)
	get(needle.SizeThumb)
	if got := tr.count.Load(); got != 1 {
		t.Fatalf("writable volume: %d store reads for 2 GETs, want 1", got)
	}
	if _, err := e.c.Directory.MarkReadOnly(bg, &directorypb.DirectoryMarkReadOnlyRequest{Vid: p.id.Vid}); err != nil {
		t.Fatal(err)
	}
	// Wait out the lookup TTL: the state is looked up afresh.
	if _, _, err := cl.Lookup(bg, p.id.Vid); err != nil {
		t.Fatal(err)
	}
	e.c.Eventually("client sees the volume read-only", func() error {
		if ok, err := cl.VolumeWritable(bg, p.id.Vid); err != nil || ok {
			return fmt.Errorf("writable %v, %v", ok, err)
		}
		return nil
	})
	before := tr.count.Load()
	get(needle.SizeMedium)
	get(needle.SizeMedium)
	if got := tr.count.Load() - before; got != 2 {
		t.Errorf("read-only volume: %d store reads for 2 GETs, want 2", got)
	}
	// What was cached before stays cached.
	before = tr.count.Load()
	get(needle.SizeThumb)
	if got := tr.count.Load() - before; got != 0 {
		t.Errorf("cached image read the store %d times", got)
	}
}

// TestOneFetchForConcurrentGETs sends 1,000 concurrent GETs of one
// uncached image: the stores see exactly one read.
func TestOneFetchForConcurrentGETs(t *testing.T) {
	e := newEnv(t, 1)
	p := e.write(40000)
	tr := newTransport()
	// Hold the store's answer a little so that most requests arrive while
	// the fetch is in flight (the count must be 1 either way).
	tr.delay = 100 * time.Millisecond
	// Admission is not what this test is about: a store that a loaded
	// machine starves past the test cluster's liveness window makes the
	// volume read-only, and the read-only rule would then refuse to keep
	// the image, so requests arriving after the fetch would fetch again.
	nd := e.startNode(cache.Options{AdmitReadOnly: true}, nil, tr)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1000}}
	const n = 1000
	start := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range n {
		wg.Go(func() {
			<-start
			resp, err := hc.Get(nd.base + p.path(needle.SizeLarge))
			if err != nil {
				t.Error(err)
				bad.Add(1)
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, p.data[needle.SizeLarge]) {
				bad.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d of %d GETs failed or returned wrong bytes", bad.Load(), n)
	}
	if got := tr.count.Load(); got != 1 {
		t.Fatalf("%d store reads for %d concurrent GETs, want 1", got, n)
	}
	hits, misses := nd.metric(t, "haybale_cache_hits_total"), nd.metric(t, "haybale_cache_misses_total")
	if hits+misses != n || misses < 1 {
		t.Errorf("hits %v + misses %v, want %d with at least one miss", hits, misses, n)
	}
}

// TestFailover stops one replica and corrupts the image on another: the
// cache still answers 200 with the right bytes.
func TestFailover(t *testing.T) {
	e := newEnv(t, 3)
	p := e.write(40000)
	reps, _, err := e.cl.Lookup(bg, p.id.Vid)
	if err != nil || len(reps) != 3 {
		t.Fatalf("replicas %v, %v", reps, err)
	}
	byID := map[string]*testcluster.Store{}
	for _, s := range e.c.Stores {
		byID[s.HB.StoreID()] = s
	}
	// The first listed replica goes down; the second has the large image
	// corrupt on disk. Whatever order the directory lists them in next,
	// the first attempt fails.
	byID[reps[0].StoreID].Stop()
	dat := filepath.Join(byID[reps[1].StoreID].DataDir, fmt.Sprintf("%d.dat", p.id.Vid))
	b, err := os.ReadFile(dat)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, p.data[needle.SizeLarge][:64])
	if i < 0 {
		t.Fatal("image bytes not found in the volume file")
	}
	b[i+100] ^= 0xff
	if err := os.WriteFile(dat, b, 0o644); err != nil {
		t.Fatal(err)
	}
	nd := e.startNode(cache.Options{}, nil, nil)
	for i := range 2 {
		a := nd.get(t, p.path(needle.SizeLarge), nil)
		if a.code != 200 || !bytes.Equal(a.body, p.data[needle.SizeLarge]) {
			t.Fatalf("GET %d: %v", i, a)
		}
	}
	if got := nd.tr.count.Load(); got < 2 {
		t.Errorf("%d store attempts, want a failover (at least 2)", got)
	}
	if got := nd.metric(t, "haybale_cache_misses_total"); got != 1 {
		t.Errorf("misses %v, want 1 (the second GET is a hit)", got)
	}
}

// TestUpstreamFailures: every replica down is 502, a fetch over the
// upstream timeout is 504, both with the documented header.
func TestUpstreamFailures(t *testing.T) {
	e := newEnv(t, 1)
	p := e.write(4000)

	slow := newTransport()
	slow.holdArmed.Store(true) // never released: the fetch times out
	nd := e.startNode(cache.Options{UpstreamTimeout: 200 * time.Millisecond}, nil, slow)
	a := nd.get(t, p.path(needle.SizeThumb), nil)
	wantFailure(t, a, http.StatusGatewayTimeout, "upstream-timeout")
	if got := nd.metric(t, `haybale_cache_upstream_errors_total{reason="timeout"}`); got != 1 {
		t.Errorf("timeouts counted %v, want 1", got)
	}

	nd = e.startNode(cache.Options{}, nil, nil)
	e.c.Stores[0].Stop()
	a = nd.get(t, p.path(needle.SizeThumb), nil)
	wantFailure(t, a, http.StatusBadGateway, "upstream-unavailable")
	if got := nd.metric(t, `haybale_cache_upstream_errors_total{reason="unavailable"}`); got != 1 {
		t.Errorf("upstream errors counted %v, want 1", got)
	}
}

func wantFailure(t *testing.T, a answer, code int, reason string) {
	t.Helper()
	var v struct {
		Error string `json:"error"`
	}
	if a.code != code || a.hdr.Get("X-Haybale-Error") != reason || a.hdr.Get("Cache-Control") != "no-store" ||
		a.hdr.Get("Content-Type") != "application/json" || json.Unmarshal(a.body, &v) != nil || v.Error == "" {
		t.Errorf("got %v %q, want %d with X-Haybale-Error %s and a JSON error", a, a.body, code, reason)
	}
}

// TestDeleteInvalidates deletes a cached photo (stores, then the cache
// node): it is 404 right after. A fetch in flight during the delete
// answers its request but does not put the photo back.
func TestDeleteInvalidates(t *testing.T) {
	e := newEnv(t, 1)
	// The medium and large images (100 and 400 KB) are cached in the
	// memfd, the others in Go memory.
	p := e.write(400000)
	storeBase := "http://" + e.c.Stores[0].HTTPAddr()
	nd := e.startNode(cache.Options{}, nil, nil)
	for _, s := range needle.PhotoSizes {
		nd.get(t, p.path(s), nil)
		if a := nd.get(t, p.path(s), nil); a.code != 200 {
			t.Fatalf("GET %v: %v", s, a)
		}
	}
	if got := nd.tr.count.Load(); got != 4 {
		t.Fatalf("%d store reads for 4 images read twice, want 4", got)
	}
	if got := nd.metric(t, "haybale_cache_memfd_slots"); got != 2 {
		t.Fatalf("%v images in the memfd, want 2", got)
	}
	if err := e.cl.Delete(bg, p.id); err != nil {
		t.Fatal(err)
	}
	// The gateway's invalidation, twice (idempotent).
	for range 2 {
		if a := do(t, nd.hc, http.MethodDelete, nd.internal+needle.ImagePathPrefix+p.id.String(), nil); a.code != http.StatusNoContent || len(a.body) != 0 {
			t.Fatalf("DELETE: %v", a)
		}
	}
	want := do(t, nd.hc, http.MethodGet, storeBase+p.path(needle.SizeSmall), nil)
	for _, s := range needle.PhotoSizes {
		a := nd.get(t, p.path(s), nil)
		if a.code != 404 || a.String() != want.String() || !bytes.Equal(a.body, want.body) {
			t.Errorf("GET %v after delete:\n%v\nstore:\n%v", s, a, want)
		}
	}
	if got := nd.metric(t, "haybale_cache_invalidations_total"); got != 2 {
		t.Errorf("invalidations %v, want 2", got)
	}
	if slots, b := nd.metric(t, "haybale_cache_memfd_slots"), nd.metric(t, "haybale_cache_memfd_bytes"); slots != 0 || b != 0 {
		t.Errorf("after the delete the memfd holds %v images, %v bytes; want none", slots, b)
	}
	// Malformed invalidations are 400.
	for _, path := range []string{"/p/nope", "/p/" + p.id.String() + "/zz"} {
		if a := do(t, nd.hc, http.MethodDelete, nd.internal+path, nil); a.code != 400 {
			t.Errorf("DELETE %s: %d, want 400", path, a.code)
		}
	}

	// A fetch in flight when the photo is deleted.
	q := e.write(4000)
	tr := newTransport()
	nd2 := e.startNode(cache.Options{}, nil, tr)
	tr.holdArmed.Store(true)
	got := make(chan answer, 1)
	go func() { got <- do(t, nd2.hc, http.MethodGet, nd2.base+q.path(needle.SizeThumb), nil) }()
	<-tr.held // the store has answered 200; the answer is held
	tr.holdArmed.Store(false)
	if err := e.cl.Delete(bg, q.id); err != nil {
		t.Fatal(err)
	}
	// The size in the path is accepted too; every size is evicted.
	if a := do(t, nd2.hc, http.MethodDelete, nd2.internal+q.path(needle.SizeLarge), nil); a.code != http.StatusNoContent {
		t.Fatalf("DELETE: %v", a)
	}
	// A request arriving now starts its own fetch rather than joining the
	// one that began before the delete (the timeout only guards the test
	// against a hang).
	if a := do(t, &http.Client{Timeout: 20 * time.Second}, http.MethodGet, nd2.base+q.path(needle.SizeThumb), nil); a.code != 404 {
		t.Errorf("GET during the stale fetch: %v, want 404", a)
	}
	close(tr.release)
	if a := <-got; a.code != 200 || !bytes.Equal(a.body, q.data[needle.SizeThumb]) {
		t.Fatalf("in-flight GET: %v", a)
	}
	if a := nd2.get(t, q.path(needle.SizeThumb), nil); a.code != 404 {
		t.Errorf("GET after the delete: %v, want 404", a)
	}
	if got := nd2.metric(t, `haybale_cache_admissions_refused_total{rule="deleted"}`); got != 1 {
		t.Errorf("refusals of the deleted photo: %v, want 1", got)
	}
}

// TestOwnership runs two nodes: each caches only the photos it owns and
// answers for the others without caching.
func TestOwnership(t *testing.T) {
	e := newEnv(t, 1)
	var lns [2]net.Listener
	var urls []string
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
		urls = append(urls, "http://"+ln.Addr().String())
	}
	var nodes [2]*node
	for i := range nodes {
		nodes[i] = e.startNode(cache.Options{Nodes: urls, Self: urls[i]}, lns[i], nil)
	}
	// Photos until each node owns one.
	var owned [2]*photo
	for range 40 {
		p := e.write(4000)
		o := needle.Owner(p.id.Key, urls)
		if owned[o] == nil {
			owned[o] = p
		}
		if owned[0] != nil && owned[1] != nil {
			break
		}
	}
	if owned[0] == nil || owned[1] == nil {
		t.Fatal("no photo owned by one of the nodes")
	}
	for i, nd := range nodes {
		if !nd.srv.Cache().Owns(owned[i].id.Key) || nd.srv.Cache().Owns(owned[1-i].id.Key) {
			t.Fatalf("node %d: Owns disagrees with needle.Owner", i)
		}
		for _, p := range []*photo{owned[i], owned[1-i]} {
			for range 2 {
				if a := nd.get(t, p.path(needle.SizeThumb), nil); a.code != 200 || !bytes.Equal(a.body, p.data[0]) {
					t.Fatalf("node %d: %v", i, a)
				}
			}
		}
		// 1 read for its own photo, 2 for the other's.
		if got := nd.tr.count.Load(); got != 3 {
			t.Errorf("node %d: %d store reads, want 3", i, got)
		}
		if got := nd.metric(t, `haybale_cache_admissions_refused_total{rule="not-owner"}`); got != 2 {
			t.Errorf("node %d: not-owner refusals %v, want 2", i, got)
		}
	}
	// Self must be one of Nodes.
	cl, _ := client.New(client.Options{Directory: e.c.DirAddr})
	defer cl.Close()
	if _, err := cache.New(cache.Options{Client: cl, Nodes: urls, Self: "http://elsewhere:1"}); err == nil {
		t.Error("New accepted a Self outside Nodes")
	}
}

// TestEvictionByCapacity reads more bytes than the capacity: the cache
// stays within it, evicts, and still answers correctly.
func TestEvictionByCapacity(t *testing.T) {
	e := newEnv(t, 1)
	const large = 20000
	var ps []*photo
	for range 12 {
		ps = append(ps, e.write(large))
	}
	capacity := int64(4 * large)
	nd := e.startNode(cache.Options{Capacity: capacity}, nil, nil)
	for round := range 3 {
		for _, p := range ps {
			if a := nd.get(t, p.path(needle.SizeLarge), nil); a.code != 200 || !bytes.Equal(a.body, p.data[needle.SizeLarge]) {
				t.Fatalf("round %d: %v", round, a)
			}
		}
	}
	held := nd.metric(t, "haybale_cache_bytes")
	if held > float64(capacity) || held < large {
		t.Errorf("cache holds %v bytes, want some and at most %d", held, capacity)
	}
	if got := nd.metric(t, "haybale_cache_evictions_total"); got < 1 {
		t.Errorf("evictions %v, want some", got)
	}
	if reads := nd.tr.count.Load(); reads <= int64(len(ps)) {
		t.Errorf("%d store reads for %d images read 3 times into a cache of 4: eviction never forced a re-read", reads, len(ps))
	}
}

// TestServerEndpoints checks the non-image endpoints and the shutdown.
func TestServerEndpoints(t *testing.T) {
	e := newEnv(t, 1)
	cl, err := client.New(client.Options{Directory: e.c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, err := cache.New(cache.Options{Client: cl})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := cache.NewServer(c, cache.ServerOptions{Addr: "127.0.0.1:0", InternalAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(bg) }()
	base := "http://" + srv.Addr().String()
	internal := "http://" + srv.InternalAddr().String()
	hc := &http.Client{}
	// Metrics and eviction are not on the public port.
	for path, code := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 404, "/nope": 404, "/p/": 400} {
		if a := do(t, hc, http.MethodGet, base+path, nil); a.code != code {
			t.Errorf("GET %s: %d, want %d", path, a.code, code)
		}
	}
	if a := do(t, hc, http.MethodDelete, base+"/p/1-4-0000000000000009", nil); a.code != http.StatusMethodNotAllowed {
		t.Errorf("public DELETE: %d, want 405", a.code)
	}
	a := do(t, hc, http.MethodGet, internal+"/metrics", nil)
	for _, want := range []string{"haybale_cache_hit_ratio", "haybale_cache_bytes", "haybale_cache_capacity_bytes", "haybale_cache_evictions_total",
		"haybale_cache_upstream_fetch_duration_seconds_bucket", "go_goroutines"} {
		if !bytes.Contains(a.body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if err := srv.Shutdown(bg); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if _, err := hc.Get(base + "/healthz"); err == nil {
		t.Error("still serving after Shutdown")
	}
	if _, err := hc.Get(internal + "/metrics"); err == nil {
		t.Error("internal listener still serving after Shutdown")
	}
	if err := srv.Serve(bg); err == nil {
		t.Errorf("second Serve: %v", err)
	}
}

// TestInternalListenerTLS checks who may evict and read metrics on a TLS
// internal listener: gateways evict, operators read metrics, nobody else,
// and a caller without a cluster certificate gets no connection.
func TestInternalListenerTLS(t *testing.T) {
	e := newEnv(t, 1)
	cl, err := client.New(client.Options{Directory: e.c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, err := cache.New(cache.Options{Client: cl})
	if err != nil {
		t.Fatal(err)
	}
	ca := rpctest.New(t)
	srv, err := cache.NewServer(c, cache.ServerOptions{Addr: "127.0.0.1:0", InternalAddr: "127.0.0.1:0",
		InternalTLS: ca.Node(t, pki.RoleCache, "cache1").ServerTLS(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	internal := "https://" + srv.InternalAddr().String()
	as := func(role pki.Role) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: ca.Node(t, role, "caller").ClientTLSExpecting(pki.RoleCache)}}
	}
	evict := internal + "/p/1-4-0000000000000009"
	for role, want := range map[pki.Role]int{pki.RoleGateway: 204, pki.RoleStore: 403, pki.RoleOperator: 403, pki.RoleCache: 403, pki.RoleDirectory: 403} {
		if a := do(t, as(role), http.MethodDelete, evict, nil); a.code != want {
			t.Errorf("%s evicting: %d, want %d", role, a.code, want)
		}
	}
	// Pushes of new images: gateways only.
	pushHdr := map[string]string{"Content-Type": "image/jpeg", "ETag": `"0123456789abcdef"`, "Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
	for role, want := range map[pki.Role]int{pki.RoleGateway: 204, pki.RoleStore: 403, pki.RoleOperator: 403, pki.RoleCache: 403, pki.RoleDirectory: 403} {
		if a := put(t, as(role), internal+"/p/1-5-0000000000000009/t", []byte("jpeg bytes"), pushHdr); a.code != want {
			t.Errorf("%s pushing: %d, want %d", role, a.code, want)
		}
	}
	if a := do(t, as(pki.RoleGateway), http.MethodPost, evict, nil); a.code != http.StatusMethodNotAllowed || a.hdr.Get("Allow") != "DELETE, PUT" {
		t.Errorf("gateway POST on the internal image path: %v", a)
	}
	for role, want := range map[pki.Role]int{pki.RoleOperator: 200, pki.RoleGateway: 403, pki.RoleStore: 403} {
		if a := do(t, as(role), http.MethodGet, internal+"/metrics", nil); a.code != want {
			t.Errorf("%s reading metrics: %d, want %d", role, a.code, want)
		}
	}
	// No certificate, or one from another CA: no TLS session at all.
	other := rpctest.New(t)
	for name, cfg := range map[string]*tls.Config{
		"no certificate": {RootCAs: ca.Pool()},
		"another CA":     other.Node(t, pki.RoleGateway, "gw").ClientTLS(),
	} {
		cfg.InsecureSkipVerify = name == "another CA" // reach the server's client check
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		req, _ := http.NewRequest(http.MethodDelete, evict, nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("%s: evicted with HTTP %d", name, resp.StatusCode)
		}
	}
	if n := metricOf(t, as(pki.RoleOperator), internal, "haybale_cache_invalidations_total"); n != 1 {
		t.Errorf("%v invalidations counted, want 1 (the gateway's)", n)
	}
}

// metricOf reads one sample from base's /metrics with hc.
func metricOf(t *testing.T, hc *http.Client, base, sample string) float64 {
	t.Helper()
	a := do(t, hc, http.MethodGet, base+"/metrics", nil)
	sc := bufio.NewScanner(bytes.NewReader(a.body))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && name == sample {
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}
