package gateway

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/haybale/haybale/internal/imagetest"
	"github.com/haybale/haybale/resizer"
)

// Settings of BenchmarkBombsPeakRSS.
const (
	// bombBudget is the gateway's decode memory budget.
	bombBudget = 1 << 30
	// bombMargin is what the process may hold beyond the decode budget
	// while the bombs arrive: the bombs' bodies (16 × under 600 KB), the
	// resized outputs on their way to the store, and the garbage of the
	// decodes that finished, which the collector frees once the heap
	// nears the soft memory limit (budget + margin, as GOMEMLIMIT).
	bombMargin = 256 << 20
)

// BenchmarkBombsPeakRSS sends 16 decompression bombs at once to a gateway
// whose decode memory budget is 1 GiB, and reports the process's peak
// resident memory above its resting level: 6 progressive 4096×4096 4:4:4
// JPEGs (about 340 MiB estimated each), 6 CMYK ones (about 490 MiB) and 4
// bombs of 8944×8944 (1.2 and 1.9 GB), which are refused with 413 from
// their headers. The first 12 decode within the budget, at most two at a
// time, although the resizer allows 16 decodes at once as on a 16-core
// host: only the memory budget holds them back. It runs twice: with the Go soft memory limit at the resting RSS
// plus the budget (as GOMEMLIMIT would be set for a process that runs
// nothing else), where it fails when the peak exceeds the budget plus
// bombMargin, and without a soft limit, where the collector lets garbage
// of finished decodes grow the heap up to twice what is live, for
// comparison. Linux only (it reads and resets the peak from /proc/self).
//
//	go test -run '^$' -bench BombsPeakRSS -benchtime 1x ./gateway/
func BenchmarkBombsPeakRSS(b *testing.B) {
	if _, err := os.Stat("/proc/self/clear_refs"); err != nil {
		b.Skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
	}
	e := startEnv(b, envOptions{stores: 1, replication: 1, resizer: resizer.Options{DecodeMemory: bombBudget, MaxConcurrent: 16}, gw: Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}})
	var bombs [][]byte
	for i := range 16 {
		side, cmyk := 4096, i%2 == 1
		if i >= 12 {
			side = 8944
		}
		bombs = append(bombs, imagetest.Bomb(side, side, cmyk))
	}
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	b.Run("GOMEMLIMIT=rest+budget", func(b *testing.B) { bombsPeakRSS(b, e, bombs, true) })
	b.Run("no-GOMEMLIMIT", func(b *testing.B) { bombsPeakRSS(b, e, bombs, false) })
}

// bombsPeakRSS sends the bombs at once and reports the peak RSS; with
// softLimit, the Go soft memory limit is the resting RSS plus the budget
// and the peak must stay within the budget plus bombMargin.
func bombsPeakRSS(b *testing.B, e *env, bombs [][]byte, softLimit bool) {
	for b.Loop() {
		runtime.GC()
		debug.FreeOSMemory()
		base := procStatus(b, "VmRSS")
		limit := int64(math.MaxInt64)
		if softLimit {
			limit = int64(base) + bombBudget
		}
		debug.SetMemoryLimit(limit)
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			b.Skipf("cannot reset the peak RSS: %v", err)
		}
		statuses := make([]int, len(bombs))
		var wg sync.WaitGroup
		for i, bomb := range bombs {
			wg.Go(func() {
				resp, err := http.Post(e.url+"/photos", "image/jpeg", bytes.NewReader(bomb))
				if err != nil {
					b.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				statuses[i] = resp.StatusCode
				if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusRequestEntityTooLarge {
					b.Logf("bomb %d: HTTP %d %s", i, resp.StatusCode, body)
				}
			})
		}
		wg.Wait()
		peak := procStatus(b, "VmHWM")
		for i, s := range statuses {
			want := http.StatusCreated
			if i >= 12 {
				want = http.StatusRequestEntityTooLarge
			}
			if s != want {
				b.Errorf("bomb %d: HTTP %d, want %d", i, s, want)
			}
		}
		over := int64(peak) - int64(base)
		b.ReportMetric(float64(base)/(1<<20), "rest-MiB")
		b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
		b.ReportMetric(float64(over)/(1<<20), "peak-over-rest-MiB")
		b.ReportMetric(float64(bombBudget)/(1<<20), "budget-MiB")
		if softLimit && over > bombBudget+bombMargin {
			b.Errorf("peak RSS %d MiB above rest, over the %d MiB budget plus the %d MiB margin",
				over>>20, bombBudget>>20, bombMargin>>20)
		}
	}
}

// procStatus returns a memory field ("VmRSS", "VmHWM") of
// /proc/self/status, in bytes.
func procStatus(tb testing.TB, field string) uint64 {
	tb.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			tb.Fatalf("%s: %v", field, err)
		}
		return kb << 10
	}
	tb.Fatalf("no %s in /proc/self/status", field)
	return 0
}
