package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/haybale/haybale/bench"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/tools"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load generators and benchmarks",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newBenchStoreGetCmd(), newBenchPathsCmd(), newBenchColdPlanCmd(), newBenchGetOnceCmd(), newBenchUploadCmd(), newBenchStoreMemoryCmd())
	return cmd
}

func newBenchStoreGetCmd() *cobra.Command {
	var cfg bench.StoreGetConfig
	var sizes []string
	var dists []string
	var secretFile string
	var tls operatorTLSFlags
	cmd := &cobra.Command{
		Use:   "store-get",
		Short: "Load photos into a store and measure GET requests/s and latency",
		Long: `store-get loads --photos photos of four sizes into a running store over gRPC,
then GETs them over HTTP from --url with each connection count and
distribution, printing requests/s and p50/p99 latency.

With --grpc empty it loads nothing and reads the photos listed in --manifest,
so the same photos can be measured again, or from another server holding the
same paths (for example nginx serving the files written by --export).`,
		Example: `  haybale bench store-get --insecure --secret-file secret --grpc 127.0.0.1:8081 --url http://127.0.0.1:8080 --manifest /tmp/photos.txt --export /srv/static
  haybale bench store-get --url http://127.0.0.1:8090 --manifest /tmp/photos.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(sizes) != 4 {
				return fmt.Errorf("--sizes: want 4 sizes (t,s,m,l), got %d", len(sizes))
			}
			for i, s := range sizes {
				v, err := parseByteSize(s)
				if err != nil || v <= 0 {
					return fmt.Errorf("--sizes %q: want a positive size", s)
				}
				cfg.Sizes[i] = int(v)
			}
			for _, d := range dists {
				cfg.Distributions = append(cfg.Distributions, bench.Distribution(strings.ToLower(d)))
			}
			if cfg.GRPCAddr != "" {
				creds, err := tls.credentials()
				if err != nil {
					return err
				}
				cfg.Credentials = creds
				if secretFile == "" {
					return fmt.Errorf("--secret-file is required with --grpc: the store takes writes only with tokens signed by the cluster secret")
				}
				secret, err := token.LoadSecret(secretFile)
				if err != nil {
					return err
				}
				signer, err := token.NewSigner(secret)
				if err != nil {
					return err
				}
				cfg.SignWrite = func(vid uint32, key uint64) (string, error) {
					return signer.Sign(token.Claims{Kind: token.KindWrite, Vid: vid, KeyStart: key, KeyCount: 1, Expiry: time.Now().Add(time.Hour)})
				}
			}
			cfg.Out = cmd.OutOrStdout()
			_, err := bench.RunStoreGet(cmd.Context(), cfg)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.GRPCAddr, "grpc", "", "store gRPC address to load photos through (empty: use the photos in --manifest)")
	f.StringVar(&secretFile, "secret-file", "", "cluster secret file, to sign the write tokens of the loaded photos (required with --grpc)")
	tls.register(f)
	f.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "base URL to GET images from")
	f.IntVar(&cfg.Photos, "photos", 20000, "photos to load (4 images each)")
	f.Uint32Var(&cfg.FirstVid, "first-vid", 1, "first volume id to allocate for the photos")
	f.IntVar(&cfg.Volumes, "volumes", 4, "volumes to spread the photos over")
	f.StringSliceVar(&sizes, "sizes", []string{"5KB", "30KB", "120KB", "400KB"}, "data sizes of t, s, m and l (each varied by up to 10%)")
	f.IntVar(&cfg.LoadConcurrency, "load-concurrency", 8, "concurrent writes while loading")
	f.StringVar(&cfg.Manifest, "manifest", "", "file of loaded photo IDs: written after loading, read when --grpc is empty")
	f.StringVar(&cfg.ExportDir, "export", "", "also write every image as a static file under this directory (p/<id>/<size>)")
	f.IntSliceVar(&cfg.Concurrency, "conns", []int{16, 64}, "concurrent connections to measure with")
	f.StringSliceVar(&dists, "dist", []string{"uniform", "zipf"}, "request distributions: uniform, zipf")
	f.Float64Var(&cfg.ZipfS, "zipf-s", 1.1, "Zipf exponent (> 1)")
	f.DurationVar(&cfg.Duration, "duration", 0, "length of each measurement (default 10s)")
	f.BoolVar(&cfg.Warmup, "warmup", true, "read every image once before measuring")
	f.Uint64Var(&cfg.Seed, "seed", 1, "seed of the photo bytes and the request sequence")
	return cmd
}

func newBenchPathsCmd() *cobra.Command {
	var (
		manifest string
		dist     string
		zipfS    float64
		n        int
		seed     uint64
	)
	cmd := &cobra.Command{
		Use:   "paths",
		Short: "Print image paths drawn like store-get draws them, to drive wrk with the same mix",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if manifest == "" {
				return fmt.Errorf("--manifest is required")
			}
			d := bench.Distribution(strings.ToLower(dist))
			if d != bench.Uniform && d != bench.Zipf {
				return fmt.Errorf("--dist %q: want uniform or zipf", dist)
			}
			ids, err := bench.ReadManifest(manifest)
			if err != nil {
				return err
			}
			if len(ids) == 0 {
				return fmt.Errorf("manifest %s lists no photos", manifest)
			}
			return bench.WritePaths(cmd.OutOrStdout(), ids, d, zipfS, n, seed)
		},
	}
	f := cmd.Flags()
	f.StringVar(&manifest, "manifest", "", "manifest written by store-get (required)")
	f.StringVar(&dist, "dist", "uniform", "distribution: uniform or zipf")
	f.Float64Var(&zipfS, "zipf-s", 1.1, "Zipf exponent (> 1)")
	f.IntVar(&n, "n", 200000, "number of paths")
	f.Uint64Var(&seed, "seed", 1, "seed of the draw")
	return cmd
}

func newBenchColdPlanCmd() *cobra.Command {
	var (
		dir      string
		manifest string
		sample   int
		jobs     []int
		seed     uint64
	)
	cmd := &cobra.Command{
		Use:   "cold-plan FILE.dat...",
		Short: "Write a cold-read plan: every image once in random order, as wrk paths and as fio iologs of the same needles",
		Long: `cold-plan lists every live image of the volume files (as ` + "`haybale volume dump --json`" + `
does), or of the photos in --manifest, or a random --sample of them, each
once, in a random order, and writes into --dir:

  paths.txt          the image paths, one per line, in that order (for wrk)
  fio-<Q>.job        for each queue depth Q in --jobs, Q psync jobs
  iolog-<Q>-<J>.log  job J's reads (fio iolog v2): the needles of images
                     J, J+Q, J+2Q, ... of the list, whole, in list order
  plan.txt           the totals: images, needle bytes, data bytes and the
                     bytes of the distinct pages the needles touch

so that a store and fio read exactly the same byte ranges, each once.
bench/serve-compare.sh -c runs both from it.`,
		Example: `  haybale bench cold-plan --dir /tmp/cold --manifest manifest.txt data/*.dat
  fio /tmp/cold/fio-16.job`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return fmt.Errorf("--dir is required")
			}
			cfg := bench.ColdPlanConfig{Sample: sample, Seed: seed}
			if manifest != "" {
				ids, err := bench.ReadManifest(manifest)
				if err != nil {
					return err
				}
				if len(ids) == 0 {
					return fmt.Errorf("manifest %s lists no photos", manifest)
				}
				cfg.Photos = ids
			}
			for _, dat := range args {
				abs, err := filepath.Abs(dat)
				if err != nil {
					return err
				}
				var dump bytes.Buffer
				if err := tools.Dump(cmd.Context(), abs, tools.Output{W: &dump, JSON: true}); err != nil {
					return fmt.Errorf("dump %s: %w", dat, err)
				}
				fi, err := os.Stat(abs)
				if err != nil {
					return err
				}
				cfg.Volumes = append(cfg.Volumes, bench.ColdVolume{DatPath: abs, Size: fi.Size(), Dump: &dump})
			}
			plan, err := bench.NewColdPlan(cfg)
			if err != nil {
				return err
			}
			if err := bench.WriteColdPlan(dir, plan, jobs); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d images, %.1f MB of needles (%.1f MB of image data) in %d volume files; plan in %s\n",
				len(plan.Images), float64(plan.NeedleBytes())/1e6, float64(plan.DataBytes())/1e6, len(args), dir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory to write the plan's files into (required)")
	f.StringVar(&manifest, "manifest", "", "only the photos of this manifest (written by store-get); each must be in the volume files")
	f.IntVar(&sample, "sample", 0, "a random sample of this many images (0: every image)")
	f.IntSliceVar(&jobs, "jobs", []int{16, 64}, "queue depths to write fio jobs for")
	f.Uint64Var(&seed, "seed", 1, "seed of the order and the sample")
	return cmd
}

func newBenchGetOnceCmd() *cobra.Command {
	var (
		rawURL  string
		paths   string
		conns   int
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "get-once",
		Short: "GET every path of a list exactly once over N keep-alive connections, one request in flight each",
		Long: `get-once sends a GET for every path of --paths (one a line, as cold-plan's
paths.txt) to --url exactly once, over --conns keep-alive HTTP/1.1
connections with one request in flight each (the server sees a queue depth
of --conns), each connection taking the next path when its answer is in.
It reads each answer's header block and drops the body without copying it
(on Linux), so its own CPU per request stays small next to the server's.

It prints the line bench/wrk-once.lua prints, with the same fields:

  once: requests N answers N status_errors N socket_errors N timeouts N bytes N elapsed_s S rate R

answers being the complete 200s, socket_errors including answers the
client cannot take (no Content-Length, chunked, malformed), bytes every
byte received, headers included, elapsed from the first request to the
last answer, rate requests per second; then its own CPU per request
(getrusage over the run):

  client: cpu_us_per_request U cpu_s S

and the first failed requests with their causes. It exits with status 1
if any request failed or the run did not finish.`,
		Example: `  haybale bench get-once --url http://127.0.0.1:8080 --paths /tmp/cold/paths.txt --conns 16`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if paths == "" {
				return fmt.Errorf("--paths is required")
			}
			u, err := url.Parse(rawURL)
			if err != nil {
				return fmt.Errorf("--url %q: %w", rawURL, err)
			}
			if u.Scheme != "http" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
				return fmt.Errorf("--url %q: want http://HOST:PORT (plain HTTP, no path)", rawURL)
			}
			addr := u.Host
			if u.Port() == "" {
				addr += ":80"
			}
			if conns < 1 {
				return fmt.Errorf("--conns %d: want at least 1", conns)
			}
			list, err := readPathList(paths)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			res, runErr := bench.RunGetOnce(ctx, bench.GetOnceConfig{Addr: addr, Host: u.Host, Paths: list, Conns: conns})
			if res == nil {
				return runErr
			}
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, res.OnceLine())
			if res.CPUKnown {
				fmt.Fprintf(out, "client: cpu_us_per_request %.1f cpu_s %.3f\n", float64(res.CPUPerRequest.Nanoseconds())/1e3, res.CPU.Seconds())
			} else {
				fmt.Fprintln(out, "client: cpu_us_per_request n/a (this platform does not tell)")
			}
			for _, e := range res.Errors {
				fmt.Fprintf(out, "error: %v\n", e)
			}
			if runErr != nil {
				return runErr
			}
			if n := res.Failed(); n > 0 {
				return fmt.Errorf("%d of %d requests failed (%d status, %d socket, %d answers not taken)", n, res.Requests,
					res.StatusErrors, res.SocketErrors, res.AnswerErrors)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&rawURL, "url", "http://127.0.0.1:8080", "server to GET from, http://HOST:PORT")
	f.StringVar(&paths, "paths", "", "file of request paths, one a line, each starting with / (required)")
	f.IntVar(&conns, "conns", 16, "keep-alive connections, one request in flight each")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "stop the run after this long (0: no limit)")
	return cmd
}

// readPathList reads a file of request paths, one a line (blank lines
// skipped); each must start with /.
func readPathList(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var list []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if line == "" {
			continue
		}
		if line[0] != '/' || strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("%s:%d: %q is not a request path (want /...)", name, n, line)
		}
		list = append(list, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%s lists no paths", name)
	}
	return list, nil
}

func newBenchStoreMemoryCmd() *cobra.Command {
	var cfg bench.StoreMemoryConfig
	var keep bool
	cmd := &cobra.Command{
		Use:   "store-memory",
		Short: "Measure a store process's RSS and Go heap per stored image: after a load, after a restart, with reads",
		Long: `store-memory starts ` + "`haybale store`" + ` (this binary, or --haybale) as a child process
on an empty data directory, loads --images images over gRPC with parallel
writers, and samples the process's memory: VmRSS, RssAnon and RssFile from
/proc/PID/status (and smaps_rollup), the Go heap and the volume indexes'
mapped memory from the store's /metrics. It then restarts the store and
samples again after the volumes are open, and once more with reads running.
It prints every figure as bytes per image above the empty store's.`,
		Example: `  haybale bench store-memory --images 4000000
  haybale bench store-memory --images 4000000 --delete 0.25`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Binary == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("cannot find this binary to start the store: %w (give --haybale)", err)
				}
				cfg.Binary = exe
			}
			if cfg.Dir == "" {
				dir, err := os.MkdirTemp("", "haybale-store-memory-")
				if err != nil {
					return err
				}
				if !keep {
					defer os.RemoveAll(dir)
				}
				cfg.Dir = dir
			} else if names, err := os.ReadDir(filepath.Join(cfg.Dir, "data")); err == nil && len(names) > 0 && !cfg.Reuse {
				return fmt.Errorf("--dir %s: its data directory is not empty; give a new directory", cfg.Dir)
			}
			cfg.SecretFile = filepath.Join(cfg.Dir, "secret")
			secret, err := token.LoadOrCreateSecret(cfg.SecretFile)
			if err != nil {
				return err
			}
			signer, err := token.NewSigner(secret)
			if err != nil {
				return err
			}
			cfg.SignWrite = func(vid uint32, keyStart, keyCount uint64) (string, error) {
				return signer.Sign(token.Claims{Kind: token.KindWrite, Vid: vid, KeyStart: keyStart, KeyCount: keyCount, Expiry: time.Now().Add(time.Hour)})
			}
			cfg.SignDelete = func(vid uint32, key, cookie uint64) (string, error) {
				return signer.Sign(token.Claims{Kind: token.KindDelete, Vid: vid, KeyStart: key, KeyCount: 1, Cookie: cookie, Expiry: time.Now().Add(time.Hour)})
			}
			cfg.Out = cmd.OutOrStdout()
			_, err = bench.RunStoreMemory(cmd.Context(), cfg)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Binary, "haybale", "", "haybale binary to run the store with (default: this binary)")
	f.StringVar(&cfg.Dir, "dir", "", "work directory for the store's data and log (default: a new temporary directory, removed afterwards)")
	f.BoolVar(&keep, "keep", false, "keep the temporary work directory")
	f.IntVar(&cfg.Images, "images", 4_000_000, "images to load (4 per photo)")
	f.IntVar(&cfg.Volumes, "volumes", 4, "volumes to spread the photos over")
	f.IntVar(&cfg.Writers, "writers", 16, "concurrent gRPC writes")
	f.IntVar(&cfg.PhotosPerWrite, "photos-per-write", 4, "photos (4 needles each, consecutive keys) per Write request")
	f.IntVar(&cfg.DataBytes, "data-bytes", 100, "data bytes of every needle")
	f.Float64Var(&cfg.DeleteFraction, "delete", 0, "fraction of the photos to delete after the load (one tombstone each)")
	f.IntVar(&cfg.Readers, "readers", 16, "concurrent image GETs in the read phase")
	f.DurationVar(&cfg.ReadDuration, "read-duration", 10*time.Second, "length of the read phase")
	f.DurationVar(&cfg.Settle, "settle", 2*time.Second, "wait after each phase before sampling")
	f.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:18280", "the store's HTTP address")
	f.StringVar(&cfg.GRPCAddr, "grpc", "127.0.0.1:18281", "the store's gRPC address")
	f.StringSliceVar(&cfg.Env, "env", nil, "environment variables for the store, e.g. GOGC=50")
	f.BoolVar(&cfg.Reuse, "reuse", false, "measure the data an earlier run left in --dir (same --images, --volumes, --photos-per-write, --delete) instead of loading: after open and with reads")
	return cmd
}
