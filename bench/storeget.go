package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// Distribution is how a GET benchmark picks the image of each request.
type Distribution string

// Distributions.
const (
	// Uniform picks every image with the same probability.
	Uniform Distribution = "uniform"
	// Zipf picks images with Zipf-skewed popularity (exponent
	// StoreGetConfig.ZipfS), the hot images scattered over the volumes.
	Zipf Distribution = "zipf"
)

// StoreGetConfig configures RunStoreGet. Zero values take the documented
// defaults.
type StoreGetConfig struct {
	// GRPCAddr is the store's gRPC address, used to allocate volumes and
	// load the photos. Empty skips loading: the photos are those listed in
	// Manifest, already stored.
	GRPCAddr string
	// Credentials secure the gRPC connection to the store (an operator's
	// certificate on a TLS plane); nil means rpc.Insecure().
	Credentials *rpc.Credentials
	// SignWrite returns the write token for one photo's key on vid; the
	// store takes no write without one. The caller signs with the cluster
	// secret (internal/token). Required when GRPCAddr is set.
	SignWrite func(vid uint32, key uint64) (string, error)
	// URL is the base URL the GETs go to, e.g. http://127.0.0.1:8080: a
	// store, or any server holding the same images at the same paths
	// (nginx over ExportDir). Required.
	URL string
	// Photos is how many photos to load; default 20,000.
	Photos int
	// FirstVid and Volumes name the volumes the photos are spread over:
	// FirstVid .. FirstVid+Volumes-1; defaults 1 and 4. They must not
	// exist on the store.
	FirstVid uint32
	Volumes  int
	// Sizes are the data sizes of the t, s, m and l images, each varied
	// by up to ±10%; default 5 KB, 30 KB, 120 KB and 400 KB.
	Sizes [4]int
	// LoadConcurrency is the number of concurrent Write calls while
	// loading; default 8.
	LoadConcurrency int
	// Manifest is a file listing the loaded photo IDs, one per line:
	// written after loading, read when GRPCAddr is empty.
	Manifest string
	// ExportDir, when set, receives a copy of every loaded image as the
	// static file <ExportDir>/p/<photo ID>/<letter>, for comparing with a
	// static file server over the same bytes and paths.
	ExportDir string
	// Concurrency lists the numbers of concurrent connections to measure
	// with; default 16 and 64.
	Concurrency []int
	// Distributions lists the request distributions to measure; default
	// uniform and Zipf.
	Distributions []Distribution
	// ZipfS is the Zipf exponent (> 1); default 1.1.
	ZipfS float64
	// Duration is the length of each measurement; default 10s.
	Duration time.Duration
	// Warmup reads every image once before measuring, so that the
	// measurement runs from the page cache.
	Warmup bool
	// Seed makes the photo bytes and the request sequence reproducible.
	Seed uint64
	// Out receives progress and the results table; default os.Stdout.
	Out io.Writer
}

func (c *StoreGetConfig) withDefaults() error {
	if c.URL == "" {
		return errors.New("bench: no URL to GET from")
	}
	c.URL = strings.TrimRight(c.URL, "/")
	if c.Photos <= 0 {
		c.Photos = 20000
	}
	if c.FirstVid == 0 {
		c.FirstVid = 1
	}
	if c.Volumes <= 0 {
		c.Volumes = 4
	}
	if c.Sizes == [4]int{} {
		c.Sizes = [4]int{5000, 30000, 120000, 400000}
	}
	if c.LoadConcurrency <= 0 {
		c.LoadConcurrency = 8
	}
	if len(c.Concurrency) == 0 {
		c.Concurrency = []int{16, 64}
	}
	if len(c.Distributions) == 0 {
		c.Distributions = []Distribution{Uniform, Zipf}
	}
	for _, d := range c.Distributions {
		if d != Uniform && d != Zipf {
			return fmt.Errorf("bench: unknown distribution %q (want uniform or zipf)", d)
		}
	}
	if c.ZipfS <= 1 {
		c.ZipfS = 1.1
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.GRPCAddr == "" && c.Manifest == "" {
		return errors.New("bench: need a store gRPC address to load photos, or a manifest of loaded ones")
	}
	return nil
}

// StoreGetResult is one measurement.
type StoreGetResult struct {
	Distribution Distribution
	Connections  int
	Requests     int64 // answered 200 with the whole body
	Errors       int64 // failed requests and non-200 answers
	Bytes        int64 // body bytes received
	Elapsed      time.Duration
	RPS          float64 // requests per second
	MBps         float64 // body megabytes (10^6) per second
	P50, P99     time.Duration
	P999         time.Duration
}

// RunStoreGet loads photos into a store (unless told to use loaded ones),
// then measures GET requests per second and latency percentiles for each
// distribution and connection count, printing a table to cfg.Out.
func RunStoreGet(ctx context.Context, cfg StoreGetConfig) ([]StoreGetResult, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	var ids []needle.PhotoID
	var err error
	if cfg.GRPCAddr != "" {
		ids, err = loadPhotos(ctx, &cfg)
		if err == nil && cfg.Manifest != "" {
			err = writeManifest(cfg.Manifest, ids)
		}
	} else {
		ids, err = readManifest(cfg.Manifest)
	}
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, errors.New("bench: no photos to read")
	}
	paths := make([]*url.URL, 0, 4*len(ids))
	for _, id := range ids {
		for _, s := range needle.PhotoSizes {
			u, err := url.Parse(cfg.URL + needle.ImagePath(id, s, ""))
			if err != nil {
				return nil, fmt.Errorf("bench: %w", err)
			}
			paths = append(paths, u)
		}
	}
	if cfg.Warmup {
		fmt.Fprintf(cfg.Out, "warming up: reading %d images once\n", len(paths))
		r := measure(ctx, &cfg, paths, sequential, 16, 0)
		if r.Errors > 0 {
			return nil, fmt.Errorf("bench: %d of %d warm-up reads failed", r.Errors, len(paths))
		}
	}
	var results []StoreGetResult
	for _, d := range cfg.Distributions {
		for _, c := range cfg.Concurrency {
			if err := ctx.Err(); err != nil {
				return results, err
			}
			r := measure(ctx, &cfg, paths, d, c, cfg.Duration)
			fmt.Fprintf(cfg.Out, "%-8s conns=%-3d %9.0f req/s  %7.1f MB/s  p50 %v  p99 %v  errors %d\n",
				d, c, r.RPS, r.MBps, r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Errors)
			results = append(results, r)
		}
	}
	PrintStoreGet(cfg.Out, cfg.URL, len(ids), results)
	return results, nil
}

// PrintStoreGet prints results as a Markdown table.
func PrintStoreGet(w io.Writer, target string, photos int, results []StoreGetResult) {
	fmt.Fprintf(w, "\nGET %s, %d photos x 4 sizes\n\n", target, photos)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| distribution\t conns\t req/s\t MB/s\t p50\t p99\t p99.9\t errors\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t---\t")
	for _, r := range results {
		fmt.Fprintf(tw, "| %s\t %d\t %.0f\t %.0f\t %v\t %v\t %v\t %d\t\n", r.Distribution, r.Connections, r.RPS, r.MBps,
			r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.P999.Round(time.Microsecond), r.Errors)
	}
	tw.Flush()
}

// sequential is the warm-up's distribution: every image once, in order.
const sequential Distribution = "sequential"

// measure runs conns workers GETting images for d (sequential: each image
// once, then stop).
func measure(ctx context.Context, cfg *StoreGetConfig, paths []*url.URL, d Distribution, conns int, dur time.Duration) StoreGetResult {
	transport := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	// The hot images of the Zipf distribution are spread at random over
	// the volumes and sizes.
	perm := rand.New(rand.NewPCG(cfg.Seed, 1)).Perm(len(paths))
	var next atomic.Int64
	var errs, bytes atomic.Int64
	lat := make([][]time.Duration, conns)
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if dur > 0 {
		mctx, cancel = context.WithTimeout(mctx, dur)
		defer cancel()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conns {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(cfg.Seed, uint64(w)+2))
			var zipf *rand.Zipf
			if d == Zipf {
				zipf = rand.NewZipf(r, cfg.ZipfS, 1, uint64(len(paths)-1))
			}
			buf := make([]byte, 64<<10)
			samples := make([]time.Duration, 0, 1<<16)
			for mctx.Err() == nil {
				var i int
				switch d {
				case Uniform:
					i = r.IntN(len(paths))
				case Zipf:
					i = perm[zipf.Uint64()]
				default:
					i = int(next.Add(1) - 1)
					if i >= len(paths) {
						lat[w] = samples
						return
					}
				}
				req := &http.Request{Method: http.MethodGet, URL: paths[i], Host: paths[i].Host,
					Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}
				t0 := time.Now()
				resp, err := client.Do(req.WithContext(mctx))
				if err != nil {
					if mctx.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				n, err := io.CopyBuffer(io.Discard, resp.Body, buf)
				resp.Body.Close()
				switch {
				case err != nil && mctx.Err() != nil:
					continue // cut off by the end of the run
				case err != nil || resp.StatusCode != http.StatusOK:
					errs.Add(1)
					continue
				}
				samples = append(samples, time.Since(t0))
				bytes.Add(n)
			}
			lat[w] = samples
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, s := range lat {
		all = append(all, s...)
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(p*float64(len(all))))]
	}
	return StoreGetResult{
		Distribution: d,
		Connections:  conns,
		Requests:     int64(len(all)),
		Errors:       errs.Load(),
		Bytes:        bytes.Load(),
		Elapsed:      elapsed,
		RPS:          float64(len(all)) / elapsed.Seconds(),
		MBps:         float64(bytes.Load()) / 1e6 / elapsed.Seconds(),
		P50:          pct(0.50),
		P99:          pct(0.99),
		P999:         pct(0.999),
	}
}

// loadPhotos allocates the volumes and writes cfg.Photos photos of four
// sizes, each photo in one Write.
func loadPhotos(ctx context.Context, cfg *StoreGetConfig) ([]needle.PhotoID, error) {
	if cfg.SignWrite == nil {
		return nil, errors.New("bench: loading photos needs SignWrite (the cluster secret)")
	}
	conn, err := rpc.Dial(rpc.OrInsecure(cfg.Credentials), cfg.GRPCAddr, []pki.Role{pki.RoleStore})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer conn.Close()
	client := storepb.NewStoreClient(conn)
	for i := range cfg.Volumes {
		vid := cfg.FirstVid + uint32(i)
		_, err := client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: vid})
		if status.Code(err) == codes.FailedPrecondition {
			return nil, fmt.Errorf("bench: volume %d already exists on the store: load into a fresh data directory, choose another --first-vid, or pass only a --manifest to reuse loaded photos", vid)
		}
		if err != nil {
			return nil, fmt.Errorf("bench: allocating volume %d: %w", vid, err)
		}
	}

	// Image bytes are windows into one random block: incompressible, and
	// cheap to produce at 11 GB.
	seedRand := rand.New(rand.NewPCG(cfg.Seed, 0))
	block := make([]byte, 2*slices.Max(cfg.Sizes[:])+1)
	for i := range block {
		block[i] = byte(seedRand.Uint32())
	}
	ids := make([]needle.PhotoID, cfg.Photos)
	for i := range ids {
		ids[i] = needle.PhotoID{Vid: cfg.FirstVid + uint32(i%cfg.Volumes), Key: uint64(i + 1), Cookie: seedRand.Uint64()}
	}

	fmt.Fprintf(cfg.Out, "loading %d photos x 4 sizes into volumes %d..%d\n", cfg.Photos, cfg.FirstVid, cfg.FirstVid+uint32(cfg.Volumes)-1)
	start := time.Now()
	var next, done atomic.Int64
	var written atomic.Int64
	var outMu sync.Mutex // cfg.Out need not be safe for concurrent use
	g, gctx := errgroup.WithContext(ctx)
	for w := range cfg.LoadConcurrency {
		g.Go(func() error {
			r := rand.New(rand.NewPCG(cfg.Seed, uint64(w)+1<<32))
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return nil
				}
				id := ids[i]
				tok, err := cfg.SignWrite(id.Vid, id.Key)
				if err != nil {
					return fmt.Errorf("bench: signing photo %v: %w", id, err)
				}
				req := &storepb.WriteRequest{Vid: id.Vid, WriteToken: tok}
				for s, size := range cfg.Sizes {
					size += size / 10 * (r.IntN(21) - 10) / 10
					off := r.IntN(len(block) - size)
					req.Needles = append(req.Needles, &storepb.Needle{
						Key: id.Key, Cookie: id.Cookie, SizeCode: uint32(s),
						ContentType: uint32(needle.TypeJPEG), Data: block[off : off+size],
					})
				}
				if _, err := client.Write(gctx, req); err != nil {
					return fmt.Errorf("bench: writing photo %v: %w", id, err)
				}
				if cfg.ExportDir != "" {
					if err := exportPhoto(cfg.ExportDir, id, req.Needles); err != nil {
						return err
					}
				}
				for _, n := range req.Needles {
					written.Add(int64(len(n.Data)))
				}
				if d := done.Add(1); d%int64(max(1, len(ids)/10)) == 0 {
					outMu.Lock()
					fmt.Fprintf(cfg.Out, "  %d photos, %.1f GB, %.0f MB/s\n", d, float64(written.Load())/1e9,
						float64(written.Load())/1e6/time.Since(start).Seconds())
					outMu.Unlock()
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Out, "loaded %d photos (%.1f GB) in %v\n", len(ids), float64(written.Load())/1e9, time.Since(start).Round(time.Second))
	return ids, nil
}

// exportPhoto writes the photo's images as static files.
func exportPhoto(dir string, id needle.PhotoID, needles []*storepb.Needle) error {
	pdir := filepath.Join(dir, "p", id.String())
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return fmt.Errorf("bench: export: %w", err)
	}
	for _, n := range needles {
		if err := os.WriteFile(filepath.Join(pdir, needle.SizeCode(n.SizeCode).Letter()), n.Data, 0o644); err != nil {
			return fmt.Errorf("bench: export: %w", err)
		}
	}
	return nil
}

func writeManifest(path string, ids []needle.PhotoID) error {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(id.String())
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("bench: manifest: %w", err)
	}
	return nil
}

func readManifest(path string) ([]needle.PhotoID, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bench: manifest: %w", err)
	}
	defer f.Close()
	var ids []needle.PhotoID
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		id, err := needle.ParsePhotoID(line)
		if err != nil {
			return nil, fmt.Errorf("bench: manifest %s: %w", path, err)
		}
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("bench: manifest: %w", err)
	}
	return ids, nil
}

// WritePaths writes n image paths drawn from d over the manifest's photos,
// one per line, for driving another load generator (wrk) with the same
// request mix.
func WritePaths(w io.Writer, ids []needle.PhotoID, d Distribution, zipfS float64, n int, seed uint64) error {
	paths := make([]string, 0, 4*len(ids))
	for _, id := range ids {
		for _, s := range needle.PhotoSizes {
			paths = append(paths, needle.ImagePath(id, s, ""))
		}
	}
	r := rand.New(rand.NewPCG(seed, 3))
	perm := rand.New(rand.NewPCG(seed, 1)).Perm(len(paths))
	zipf := rand.NewZipf(r, max(zipfS, 1.0001), 1, uint64(len(paths)-1))
	bw := bufio.NewWriter(w)
	for range n {
		i := r.IntN(len(paths))
		if d == Zipf {
			i = perm[zipf.Uint64()]
		}
		bw.WriteString(paths[i])
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// ReadManifest reads a manifest written by RunStoreGet.
func ReadManifest(path string) ([]needle.PhotoID, error) { return readManifest(path) }
