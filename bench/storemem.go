package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// StoreMemoryConfig configures RunStoreMemory. Zero values take the
// documented defaults.
type StoreMemoryConfig struct {
	// Binary is the haybale executable started as the store. Required.
	Binary string
	// Dir is the work directory: the store's data goes in Dir/data, its
	// log in Dir/store.log. Required; it should be empty.
	Dir string
	// SecretFile is the cluster secret the store checks write tokens
	// against. Required.
	SecretFile string
	// SignWrite returns the write token for keys keyStart ..
	// keyStart+keyCount-1 on vid; SignDelete the delete token of one
	// photo. Both are signed with the secret in SecretFile. SignDelete is
	// needed only with DeleteFraction.
	SignWrite  func(vid uint32, keyStart, keyCount uint64) (string, error)
	SignDelete func(vid uint32, key, cookie uint64) (string, error)
	// Images is the number of images to load (four per photo); default
	// 4,000,000.
	Images int
	// Volumes is the number of volumes the photos are spread over (vids
	// 1..Volumes); default 4.
	Volumes int
	// Writers is the number of concurrent Write calls; default 16.
	Writers int
	// PhotosPerWrite is how many photos (of four needles each, consecutive
	// keys on one volume) one Write carries; default 4.
	PhotosPerWrite int
	// DataBytes is the data size of every needle; default 100.
	DataBytes int
	// DeleteFraction deletes that fraction of the photos (every size, one
	// tombstone per photo) after the load; default none.
	DeleteFraction float64
	// Readers and ReadDuration shape the read phase after the restart:
	// Readers concurrent GETs of random images for ReadDuration; defaults
	// 16 and 10s.
	Readers      int
	ReadDuration time.Duration
	// Settle is how long to wait after each phase before sampling;
	// default 2s.
	Settle time.Duration
	// HTTPAddr and GRPCAddr are the store's listen addresses; defaults
	// 127.0.0.1:18280 and 127.0.0.1:18281.
	HTTPAddr, GRPCAddr string
	// Env is added to the store's environment (GOGC=..., GOMEMLIMIT=...).
	Env []string
	// Reuse measures the data an earlier run left in Dir/data (run with
	// the same Images, Volumes, PhotosPerWrite and DeleteFraction) instead
	// of loading: the empty store is measured on Dir/empty, then the
	// store is started on Dir/data and measured after open and with
	// reads.
	Reuse bool
	// Out receives progress and the results; default os.Stdout.
	Out io.Writer
}

func (c *StoreMemoryConfig) withDefaults() error {
	switch {
	case c.Binary == "":
		return errors.New("bench: store-memory: no haybale binary to start")
	case c.Dir == "":
		return errors.New("bench: store-memory: no work directory")
	case c.SecretFile == "" || c.SignWrite == nil:
		return errors.New("bench: store-memory: needs the cluster secret and a write signer")
	case c.DeleteFraction < 0 || c.DeleteFraction > 1:
		return fmt.Errorf("bench: store-memory: delete fraction %v is not between 0 and 1", c.DeleteFraction)
	case c.DeleteFraction > 0 && c.SignDelete == nil:
		return errors.New("bench: store-memory: deleting needs a delete signer")
	}
	if c.Images <= 0 {
		c.Images = 4_000_000
	}
	if c.Volumes <= 0 {
		c.Volumes = 4
	}
	if c.Writers <= 0 {
		c.Writers = 16
	}
	if c.PhotosPerWrite <= 0 {
		c.PhotosPerWrite = 4
	}
	if c.DataBytes <= 0 {
		c.DataBytes = 100
	}
	if c.Readers <= 0 {
		c.Readers = 16
	}
	if c.ReadDuration <= 0 {
		c.ReadDuration = 10 * time.Second
	}
	if c.Settle <= 0 {
		c.Settle = 2 * time.Second
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = "127.0.0.1:18280"
	}
	if c.GRPCAddr == "" {
		c.GRPCAddr = "127.0.0.1:18281"
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	return nil
}

// MemorySample is the memory of the store process at one moment.
type MemorySample struct {
	Phase  string
	Images int // live images the store holds
	// RSS, Anon and File are VmRSS, RssAnon and RssFile of
	// /proc/PID/status; SmapsAnon is the Anonymous line of
	// /proc/PID/smaps_rollup (the same pages counted another way).
	RSS, Anon, File, SmapsAnon int64
	// PeakRSS is the largest VmRSS seen since the previous sample.
	PeakRSS int64
	// HeapAlloc, HeapInuse and NextGC are the Go runtime's figures, from
	// the store's /metrics; IndexMapped is the volume indexes' memory
	// mapped outside the Go heap (haybale_store_index_mapped_bytes, 0
	// when the store does not report it).
	HeapAlloc, HeapInuse, NextGC, IndexMapped int64
	// HeapRetained is heap memory free but not returned to the system
	// (heap_idle - heap_released); StackInuse the goroutine stacks;
	// Goroutines their number.
	HeapRetained, StackInuse, Goroutines int64
}

// StoreMemoryResult is what RunStoreMemory measured: the empty store, then
// each phase.
type StoreMemoryResult struct {
	Empty   MemorySample
	Phases  []MemorySample
	Loaded  int           // images loaded
	Load    time.Duration // load time
	Open    time.Duration // restart: start to ready
	Reads   int64         // image GETs answered 200 during the read phase
	ReadErr int64         // the others
}

// RunStoreMemory starts a store on an empty data directory and measures
// its memory: empty, after loading cfg.Images images over gRPC, after a
// restart, and with reads running; it prints bytes per image above the
// empty store's.
func RunStoreMemory(ctx context.Context, cfg StoreMemoryConfig) (StoreMemoryResult, error) {
	var res StoreMemoryResult
	if err := cfg.withDefaults(); err != nil {
		return res, err
	}
	photos := (cfg.Images + 3) / 4
	fmt.Fprintf(cfg.Out, "store-memory: %d photos x 4 needles of %d bytes in %d volumes, %d writers, %d photos per Write; load average %s\n",
		photos, cfg.DataBytes, cfg.Volumes, cfg.Writers, cfg.PhotosPerWrite, loadAvg())

	dataDir, emptyDir := filepath.Join(cfg.Dir, "data"), filepath.Join(cfg.Dir, "data")
	if cfg.Reuse {
		emptyDir = filepath.Join(cfg.Dir, "empty")
		if err := os.RemoveAll(emptyDir); err != nil {
			return res, fmt.Errorf("bench: %w", err)
		}
	}
	st, err := startStore(ctx, &cfg, emptyDir)
	if err != nil {
		return res, err
	}
	defer st.kill()
	conn, err := rpc.Dial(rpc.Insecure(), cfg.GRPCAddr, []pki.Role{pki.RoleStore})
	if err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	defer conn.Close()
	client := storepb.NewStoreClient(conn)
	for vid := uint32(1); vid <= uint32(cfg.Volumes); vid++ {
		if _, err := client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: vid}); err != nil {
			return res, fmt.Errorf("bench: allocating volume %d: %w", vid, err)
		}
	}
	if res.Empty, err = st.sampleAfter(ctx, cfg.Settle, "empty", 0); err != nil {
		return res, err
	}
	fmt.Fprintf(cfg.Out, "empty store: RSS %.1f MiB (anon %.1f, file %.1f), heap %.1f MiB\n",
		mib(res.Empty.RSS), mib(res.Empty.Anon), mib(res.Empty.File), mib(res.Empty.HeapAlloc))

	ids := memPhotoIDs(photos, cfg.Volumes, cfg.PhotosPerWrite)
	res.Loaded = 4 * photos
	live := res.Loaded
	deleted := 0
	var s MemorySample
	if cfg.Reuse {
		for i := range ids {
			if memDeleted(i, deleteEvery(cfg.DeleteFraction)) {
				deleted++
			}
		}
		live -= 4 * deleted
		fmt.Fprintf(cfg.Out, "measuring the %d images (%d photos deleted) in %s\n", res.Loaded, deleted, dataDir)
	} else {
		start := time.Now()
		if err := memLoad(ctx, &cfg, client, ids); err != nil {
			return res, err
		}
		res.Load = time.Since(start)
		fmt.Fprintf(cfg.Out, "loaded %d images in %v (%.0f images/s)\n", res.Loaded, res.Load.Round(time.Millisecond), float64(res.Loaded)/res.Load.Seconds())
		if s, err = st.sampleAfter(ctx, cfg.Settle, "after load", live); err != nil {
			return res, err
		}
		res.Phases = append(res.Phases, s)
	}

	if cfg.DeleteFraction > 0 && !cfg.Reuse {
		if deleted, err = memDelete(ctx, &cfg, client, ids); err != nil {
			return res, err
		}
		live -= 4 * deleted
		if s, err = st.sampleAfter(ctx, cfg.Settle, fmt.Sprintf("after deleting %d photos", deleted), live); err != nil {
			return res, err
		}
		res.Phases = append(res.Phases, s)
	}

	if err := st.stop(); err != nil {
		return res, err
	}
	start := time.Now()
	if st, err = startStore(ctx, &cfg, dataDir); err != nil {
		return res, err
	}
	defer st.kill()
	res.Open = time.Since(start)
	fmt.Fprintf(cfg.Out, "restarted in %v\n", res.Open.Round(time.Millisecond))
	if s, err = st.sampleAfter(ctx, cfg.Settle, "after restart", live); err != nil {
		return res, err
	}
	res.Phases = append(res.Phases, s)

	// Reads of random live images; the sample is taken while they run.
	rctx, cancel := context.WithCancel(ctx)
	var reads, readErrs atomic.Int64
	var wg sync.WaitGroup
	for r := range cfg.Readers {
		wg.Go(func() { memRead(rctx, &cfg, ids, deleted, uint64(r), &reads, &readErrs) })
	}
	time.Sleep(cfg.ReadDuration)
	s, err = st.sample(fmt.Sprintf("reads running (%d readers)", cfg.Readers), live)
	cancel()
	wg.Wait()
	if err != nil {
		return res, err
	}
	res.Phases = append(res.Phases, s)
	res.Reads, res.ReadErr = reads.Load(), readErrs.Load()
	fmt.Fprintf(cfg.Out, "reads: %d answered 200 in %v (%.0f/s), %d failed\n", res.Reads, cfg.ReadDuration,
		float64(res.Reads)/cfg.ReadDuration.Seconds(), res.ReadErr)
	if err := st.stop(); err != nil {
		return res, err
	}
	PrintStoreMemory(cfg.Out, res)
	if res.ReadErr > 0 {
		return res, fmt.Errorf("bench: %d reads failed", res.ReadErr)
	}
	return res, nil
}

// PrintStoreMemory prints the samples as a Markdown table, per image above
// the empty store.
func PrintStoreMemory(w io.Writer, res StoreMemoryResult) {
	e := res.Empty
	fmt.Fprintf(w, "\nbytes per image above the empty store (RSS %.1f MiB, anon %.1f, file %.1f, heap_alloc %.1f MiB); load average %s\n\n",
		mib(e.RSS), mib(e.Anon), mib(e.File), mib(e.HeapAlloc), loadAvg())
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| phase\t images\t RSS MiB\t RSS B/image\t anon B/image\t file B/image\t peak RSS B/image\t heap_alloc B/image\t heap_inuse B/image\t index mapped B/image\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t---\t---\t---\t")
	for _, s := range res.Phases {
		per := func(v, base int64) string {
			// Per image loaded: deleted images stay counted, since their
			// tombstones and dead slots are what they cost.
			return fmt.Sprintf("%.2f", float64(v-base)/float64(res.Loaded))
		}
		fmt.Fprintf(tw, "| %s\t %d\t %.1f\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t\n", s.Phase, s.Images, mib(s.RSS),
			per(s.RSS, e.RSS), per(s.Anon, e.Anon), per(s.File, e.File), per(s.PeakRSS, e.RSS),
			per(s.HeapAlloc, e.HeapAlloc), per(s.HeapInuse, e.HeapInuse), per(s.IndexMapped, e.IndexMapped))
	}
	tw.Flush()
	fmt.Fprintf(w, "\nwhere the rest goes (MiB; empty store first)\n\n")
	tw = tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| phase\t RSS\t anon\t index mapped\t heap_inuse\t heap free, not returned\t stacks\t goroutines\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t---\t")
	for _, s := range append([]MemorySample{e}, res.Phases...) {
		fmt.Fprintf(tw, "| %s\t %.1f\t %.1f\t %.1f\t %.1f\t %.1f\t %.1f\t %d\t\n", s.Phase, mib(s.RSS), mib(s.Anon),
			mib(s.IndexMapped), mib(s.HeapInuse), mib(s.HeapRetained), mib(s.StackInuse), s.Goroutines)
	}
	tw.Flush()
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// memPhotoIDs returns the photos: key i+1 for photo i, in runs of
// perWrite consecutive keys per volume (one Write each), the volumes in
// turn; cookies from a fixed seed.
func memPhotoIDs(photos, volumes, perWrite int) []needle.PhotoID {
	r := rand.New(rand.NewPCG(7, 8))
	ids := make([]needle.PhotoID, photos)
	for i := range ids {
		ids[i] = needle.PhotoID{Vid: 1 + uint32(i/perWrite%volumes), Key: uint64(i + 1), Cookie: r.Uint64() | 1}
	}
	return ids
}

// memLoad writes the photos, cfg.PhotosPerWrite per Write, cfg.Writers
// Writes at a time.
func memLoad(ctx context.Context, cfg *StoreMemoryConfig, client storepb.StoreClient, ids []needle.PhotoID) error {
	data := make([]byte, cfg.DataBytes)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	writes := (len(ids) + cfg.PhotosPerWrite - 1) / cfg.PhotosPerWrite
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range cfg.Writers {
		g.Go(func() error {
			for {
				w := int(next.Add(1) - 1)
				if w >= writes {
					return nil
				}
				batch := ids[w*cfg.PhotosPerWrite : min(len(ids), (w+1)*cfg.PhotosPerWrite)]
				tok, err := cfg.SignWrite(batch[0].Vid, batch[0].Key, uint64(len(batch)))
				if err != nil {
					return fmt.Errorf("bench: signing: %w", err)
				}
				req := &storepb.WriteRequest{Vid: batch[0].Vid, WriteToken: tok, Needles: make([]*storepb.Needle, 0, 4*len(batch))}
				for _, id := range batch {
					for _, s := range needle.PhotoSizes {
						req.Needles = append(req.Needles, &storepb.Needle{
							Key: id.Key, Cookie: id.Cookie, SizeCode: uint32(s),
							ContentType: uint32(needle.TypeJPEG), Data: data,
						})
					}
				}
				if _, err := client.Write(gctx, req); err != nil {
					return fmt.Errorf("bench: writing photos %v..: %w", batch[0], err)
				}
			}
		})
	}
	return g.Wait()
}

// memDeleted reports whether photo i is one the delete phase removes:
// every k-th photo, k = round(1/fraction).
func memDeleted(i int, every int) bool { return every > 0 && i%every == 0 }

func deleteEvery(fraction float64) int {
	if fraction <= 0 {
		return 0
	}
	return max(1, int(1/fraction+0.5))
}

// memDelete deletes every photo memDeleted names and returns how many.
func memDelete(ctx context.Context, cfg *StoreMemoryConfig, client storepb.StoreClient, ids []needle.PhotoID) (int, error) {
	every := deleteEvery(cfg.DeleteFraction)
	var next, done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range cfg.Writers {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return nil
				}
				if !memDeleted(i, every) {
					continue
				}
				id := ids[i]
				tok, err := cfg.SignDelete(id.Vid, id.Key, id.Cookie)
				if err != nil {
					return fmt.Errorf("bench: signing: %w", err)
				}
				if _, err := client.Delete(gctx, &storepb.DeleteRequest{Vid: id.Vid, Key: id.Key, Cookie: id.Cookie,
					SizeCode: uint32(needle.SizeAll), WriteToken: tok}); err != nil {
					return fmt.Errorf("bench: deleting photo %v: %w", id, err)
				}
				done.Add(1)
			}
		})
	}
	err := g.Wait()
	return int(done.Load()), err
}

// memRead GETs random live images until ctx ends.
func memRead(ctx context.Context, cfg *StoreMemoryConfig, ids []needle.PhotoID, deleted int, seed uint64, ok, failed *atomic.Int64) {
	every := 0
	if deleted > 0 {
		every = deleteEvery(cfg.DeleteFraction)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	defer client.CloseIdleConnections()
	r := rand.New(rand.NewPCG(seed, 99))
	base := "http://" + cfg.HTTPAddr
	for ctx.Err() == nil {
		i := r.IntN(len(ids))
		if memDeleted(i, every) {
			continue
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+needle.ImagePath(ids[i], needle.PhotoSizes[r.IntN(4)], ""), nil)
		if err != nil {
			failed.Add(1)
			return
		}
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				failed.Add(1)
			}
			continue
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case err != nil && ctx.Err() != nil:
		case err != nil || resp.StatusCode != http.StatusOK || n != int64(cfg.DataBytes):
			failed.Add(1)
		default:
			ok.Add(1)
		}
	}
}

// memStore is a running store child process.
type memStore struct {
	cfg  *StoreMemoryConfig
	cmd  *exec.Cmd
	done chan error
	log  *os.File

	stopSampler chan struct{}
	peak        atomic.Int64 // largest VmRSS since the last sample
	samplerDone chan struct{}
}

// startStore starts `haybale store` on the data directory dir and waits
// until it is ready.
func startStore(ctx context.Context, cfg *StoreMemoryConfig, dir string) (*memStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	log, err := os.OpenFile(filepath.Join(cfg.Dir, "store.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	cmd := exec.Command(cfg.Binary, "store", "--insecure", "--secret-file", cfg.SecretFile,
		"--dir", dir, "--http", cfg.HTTPAddr, "--grpc", cfg.GRPCAddr, "--log-level", "warn")
	cmd.Env = append(os.Environ(), cfg.Env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("bench: starting the store: %w", err)
	}
	s := &memStore{cfg: cfg, cmd: cmd, done: make(chan error, 1), log: log,
		stopSampler: make(chan struct{}), samplerDone: make(chan struct{})}
	go func() { s.done <- cmd.Wait() }()
	go s.sampler()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		select {
		case err := <-s.done:
			s.done <- err
			s.kill()
			return nil, fmt.Errorf("bench: the store exited while starting (%v); see %s", err, log.Name())
		case <-ctx.Done():
			s.kill()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if resp, err := http.Get("http://" + cfg.HTTPAddr + "/readyz"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			s.kill()
			return nil, fmt.Errorf("bench: the store was not ready after 5 minutes; see %s", log.Name())
		}
	}
}

// sampler keeps the peak VmRSS, every 100 ms.
func (s *memStore) sampler() {
	defer close(s.samplerDone)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if st, err := procStatus(s.cmd.Process.Pid); err == nil {
			for {
				p := s.peak.Load()
				if st["VmRSS"] <= p || s.peak.CompareAndSwap(p, st["VmRSS"]) {
					break
				}
			}
		}
		select {
		case <-s.stopSampler:
			return
		case <-t.C:
		}
	}
}

// sampleAfter waits d, then samples.
func (s *memStore) sampleAfter(ctx context.Context, d time.Duration, phase string, images int) (MemorySample, error) {
	select {
	case <-ctx.Done():
		return MemorySample{}, ctx.Err()
	case <-time.After(d):
	}
	return s.sample(phase, images)
}

// sample reads the store's memory now.
func (s *memStore) sample(phase string, images int) (MemorySample, error) {
	pid := s.cmd.Process.Pid
	st, err := procStatus(pid)
	if err != nil {
		return MemorySample{}, err
	}
	smaps, err := procKV(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return MemorySample{}, err
	}
	m, err := scrapeMetrics("http://" + s.cfg.HTTPAddr + "/metrics")
	if err != nil {
		return MemorySample{}, err
	}
	out := MemorySample{
		Phase: phase, Images: images,
		RSS: st["VmRSS"], Anon: st["RssAnon"], File: st["RssFile"], SmapsAnon: smaps["Anonymous"],
		PeakRSS:      max(s.peak.Swap(0), st["VmRSS"]),
		HeapAlloc:    int64(m["go_memstats_heap_alloc_bytes"]),
		HeapInuse:    int64(m["go_memstats_heap_inuse_bytes"]),
		NextGC:       int64(m["go_memstats_next_gc_bytes"]),
		IndexMapped:  int64(m["haybale_store_index_mapped_bytes"]),
		HeapRetained: int64(m["go_memstats_heap_idle_bytes"] - m["go_memstats_heap_released_bytes"]),
		StackInuse:   int64(m["go_memstats_stack_inuse_bytes"]),
		Goroutines:   int64(m["go_goroutines"]),
	}
	return out, nil
}

// stop sends SIGTERM and waits for the store to exit.
func (s *memStore) stop() error {
	defer s.kill()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("bench: stopping the store: %w", err)
	}
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			return fmt.Errorf("bench: the store exited with %v; see %s", err, s.log.Name())
		}
		return nil
	case <-time.After(time.Minute):
		return errors.New("bench: the store did not stop within a minute of SIGTERM")
	}
}

// kill ends the process if it still runs and releases what s holds; it
// may be called more than once.
func (s *memStore) kill() {
	select {
	case <-s.stopSampler:
		return
	default:
	}
	close(s.stopSampler)
	<-s.samplerDone
	select {
	case err := <-s.done:
		s.done <- err
	default:
		s.cmd.Process.Kill()
		s.done <- <-s.done
	}
	s.log.Close()
}

// procStatus returns the kB fields of /proc/PID/status, in bytes.
func procStatus(pid int) (map[string]int64, error) {
	return procKV(fmt.Sprintf("/proc/%d/status", pid))
}

// procKV parses "Name:   123 kB" lines into bytes.
func procKV(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	out := map[string]int64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		f := strings.Fields(v)
		if !ok || len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		out[k] = n << 10
	}
	return out, nil
}

// scrapeMetrics returns the unlabelled samples of a Prometheus text page.
func scrapeMetrics(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: %s: HTTP %d", url, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' || bytes.IndexByte(line, '{') >= 0 {
			continue
		}
		name, val, ok := strings.Cut(string(line), " ")
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("bench: %s: %w", url, err)
	}
	return out, nil
}
