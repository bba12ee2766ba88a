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
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
)

// dirLoader loads images from static files laid out as a store's paths
// (<dir>/p/<photo ID>/<size letter>), the export of `haybale bench
// store-get --export`, with the headers a store would send.
type dirLoader struct{ dir string }

func (d dirLoader) Load(_ context.Context, id needle.PhotoID, size needle.SizeCode) (Loaded, error) {
	data, err := os.ReadFile(filepath.Join(d.dir, "p", id.String(), size.Letter()))
	if os.IsNotExist(err) {
		return Loaded{}, ErrNotFound
	}
	if err != nil {
		return Loaded{}, err
	}
	return Loaded{
		Data: data, ContentType: "image/jpeg", ETag: fmt.Sprintf(`"%016x"`, len(data)),
		LastModified: "Mon, 02 Jan 2006 15:04:05 GMT", Writable: true, Source: "files",
	}, nil
}

// BenchmarkHitVsNginx compares cache hits with nginx serving the same
// bytes from the page cache, side by side: set HAYBALE_BENCH_DIR to the
// work directory of bench/serve-compare.sh (static/ and the paths-*.txt
// request lists) and HAYBALE_NGINX_URL to the nginx it runs. The cache
// loads every image of the request lists once, then wrk (-t2,
// HAYBALE_WRK_DURATION, default 8s) runs against the cache and nginx in
// turn, HAYBALE_BENCH_REPS times (default 3), for each row, the side that
// goes first rotating between reps. It prints a table of medians; CPU per
// request is the process's own (the cache server under load; the idle
// test harness and an idle second cache) and the nginx workers' from
// /proc. HAYBALE_CACHE_LOOP selects the cache's listener: unset, the
// fasthttp one; "both", two caches, one on each, interleaved with nginx;
// anything else, the event loops.
func BenchmarkHitVsNginx(b *testing.B) {
	dir, nginx := os.Getenv("HAYBALE_BENCH_DIR"), os.Getenv("HAYBALE_NGINX_URL")
	if dir == "" || nginx == "" {
		b.Skip("HAYBALE_BENCH_DIR and HAYBALE_NGINX_URL are not set (bench/serve-compare.sh -k sets them)")
	}
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed")
	}
	dur := cmpOr(os.Getenv("HAYBALE_WRK_DURATION"), "8s")
	reps, _ := strconv.Atoi(cmpOr(os.Getenv("HAYBALE_BENCH_REPS"), "3"))
	nginxPIDs := strings.Fields(os.Getenv("HAYBALE_NGINX_PIDS"))

	rows := []struct {
		list  string
		conns int
	}{{"mix-uniform", 64}, {"mix-zipf", 64}, {"t", 64}, {"l", 64}}
	lists := make([]string, len(rows))
	for i, r := range rows {
		lists[i] = r.list
	}
	self := []string{strconv.Itoa(os.Getpid())}
	type side struct {
		name, url string
		pids      []string
	}
	var sides []side
	switch mode := os.Getenv("HAYBALE_CACHE_LOOP"); mode {
	case "":
		sides = append(sides, side{"cache", "http://" + serveBenchCorpus(b, dir, "127.0.0.1:0", lists, false), self})
	case "both":
		sides = append(sides, side{"cache (fasthttp)", "http://" + serveBenchCorpus(b, dir, "127.0.0.1:0", lists, false), self})
		sides = append(sides, side{"cache (loop)", "http://" + serveBenchCorpus(b, dir, "127.0.0.1:0", lists, true), self})
	default:
		sides = append(sides, side{"cache (loop)", "http://" + serveBenchCorpus(b, dir, "127.0.0.1:0", lists, true), self})
	}
	sides = append(sides, side{"nginx", nginx, nginxPIDs})
	rate := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	total := regexp.MustCompile(`(\d+) requests in`)
	run := func(url, list string, conns int, pids []string) (rps, cpuPerReq float64) {
		t0 := cpuSeconds(b, pids)
		cmd := exec.Command(wrk, "-t2", "-c"+strconv.Itoa(conns), "-d"+dur, "-s", "../bench/wrk-paths.lua", url)
		cmd.Env = append(os.Environ(), "PATHS="+filepath.Join(dir, "paths-"+list+".txt"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("wrk: %v\n%s", err, out)
		}
		t1 := cpuSeconds(b, pids)
		if strings.Contains(string(out), "Non-2xx") {
			b.Errorf("wrk saw non-2xx answers:\n%s", out)
		}
		m, n := rate.FindSubmatch(out), total.FindSubmatch(out)
		if m == nil || n == nil {
			b.Fatalf("no rate in wrk's output:\n%s", out)
		}
		rps, _ = strconv.ParseFloat(string(m[1]), 64)
		reqs, _ := strconv.ParseFloat(string(n[1]), 64)
		return rps, (t1 - t0) / reqs * 1e6
	}
	// rps[row][side][rep], cpu likewise.
	rps := make([][][]float64, len(rows))
	cpu := make([][][]float64, len(rows))
	for i := range rows {
		rps[i], cpu[i] = make([][]float64, len(sides)), make([][]float64, len(sides))
	}
	for rep := range reps {
		for i, r := range rows {
			for k := range sides {
				j := (k + rep) % len(sides)
				q, c := run(sides[j].url, r.list, r.conns, sides[j].pids)
				rps[i][j], cpu[i][j] = append(rps[i][j], q), append(cpu[i][j], c)
			}
		}
	}
	ng := len(sides) - 1
	ratio := func(a, b []float64) float64 {
		q := make([]float64, len(a))
		for j := range a {
			q[j] = a[j] / b[j]
		}
		return median(q)
	}
	fmt.Printf("\ncache hits against nginx, medians over %d reps, wrk -t2 -d%s\n\n", reps, dur)
	fmt.Println("| rows | conns | server | req/s | / nginx | CPU µs/req | CPU / nginx |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for i, r := range rows {
		for j, s := range sides {
			if j == ng {
				fmt.Printf("| %s | %d | %s | %.0f | | %.1f | |\n", r.list, r.conns, s.name, median(rps[i][j]), median(cpu[i][j]))
				continue
			}
			fmt.Printf("| %s | %d | %s | %.0f | %.2f | %.1f | %.2f |\n", r.list, r.conns, s.name, median(rps[i][j]),
				ratio(rps[i][j], rps[i][ng]), median(cpu[i][j]), ratio(cpu[i][j], cpu[i][ng]))
		}
	}
}

// serveBenchCorpus starts a cache server on addr whose Loader reads the
// files of the work directory of bench/serve-compare.sh, loads every image
// of the request lists (paths-<list>.txt) once, and returns its address.
// With loop, it serves on event loops. The server stops when the test
// ends.
func serveBenchCorpus(tb testing.TB, dir, addr string, lists []string, loop bool) string {
	tb.Helper()
	c, err := New(Options{Loader: dirLoader{filepath.Join(dir, "static")}, Capacity: 32 << 30, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := NewServer(c, ServerOptions{Addr: addr, Logger: slog.New(slog.DiscardHandler), EventLoop: loop})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	base := "http://" + srv.Addr().String()
	// Warm: every image of every list, once.
	seen := map[string]bool{}
	for _, list := range lists {
		f, err := os.Open(filepath.Join(dir, "paths-"+list+".txt"))
		if err != nil {
			tb.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			p := sc.Text()
			if seen[p] {
				continue
			}
			seen[p] = true
			resp, err := http.Get(base + p)
			if err != nil {
				tb.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				tb.Fatalf("warming %s: status %d", p, resp.StatusCode)
			}
		}
		f.Close()
	}
	return srv.Addr().String()
}

// TestServeBenchCorpus serves the cache of BenchmarkHitVsNginx, warmed, for
// a while, so that a profiler or a system-call count can watch its hits
// under wrk: set HAYBALE_BENCH_DIR, HAYBALE_SERVE_FOR (a duration),
// HAYBALE_SERVE_ADDR (default 127.0.0.1:18300) and HAYBALE_SERVE_LISTS
// (request lists to warm, default "t l mix-uniform"). It prints "ready"
// once warm; with HAYBALE_CACHE_LOOP set, it serves on event loops.
// Skipped unless HAYBALE_SERVE_FOR is set.
func TestServeBenchCorpus(t *testing.T) {
	dir, hold := os.Getenv("HAYBALE_BENCH_DIR"), os.Getenv("HAYBALE_SERVE_FOR")
	if dir == "" || hold == "" {
		t.Skip("HAYBALE_BENCH_DIR and HAYBALE_SERVE_FOR are not set")
	}
	d, err := time.ParseDuration(hold)
	if err != nil {
		t.Fatalf("HAYBALE_SERVE_FOR: %v", err)
	}
	addr := serveBenchCorpus(t, dir, cmpOr(os.Getenv("HAYBALE_SERVE_ADDR"), "127.0.0.1:18300"),
		strings.Fields(cmpOr(os.Getenv("HAYBALE_SERVE_LISTS"), "t l mix-uniform")), os.Getenv("HAYBALE_CACHE_LOOP") != "")
	fmt.Println("ready", addr)
	time.Sleep(d)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// cpuSeconds returns the user+system CPU seconds of the processes.
func cpuSeconds(b *testing.B, pids []string) float64 {
	var ticks float64
	for _, p := range pids {
		stat, err := os.ReadFile("/proc/" + p + "/stat")
		if err != nil {
			b.Fatal(err)
		}
		// Fields after the command name, which is in parentheses.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		ticks += u + s
	}
	return ticks / 100 // USER_HZ
}
