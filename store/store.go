// Package store is the store process: it owns the volumes of one data
// directory, opening them in parallel at start-up and creating new ones on
// request, and serves them: Server answers image reads over HTTP (the
// CDN-origin surface) and writes and administration over gRPC.
//
// # HTTP
//
// GET and HEAD /p/<photo ID>/<size>[.<ext>] cost at most one disk read: a
// plain GET or HEAD of a needle of volume.PinMin bytes or more that is
// all in the page cache is verified through a verified mapping of its own
// (Options.VerifiedMappings) and sent from the page cache, with
// sendfile from 64 KiB (store/fast.go, store/loop.go); a send that does
// not follow the read at once first proves that the pages are still the
// verified ones, and the connection ends, the answer short, when they are
// not (haybale_store_http_unverified_answers_total). Any other read costs
// one pread into a buffer pooled per size code. 200 answers carry Content-Type (from the needle),
// Content-Length, ETag (the quoted 16-digit hex checksum), Last-Modified
// (the append time), Cache-Control: public, max-age=31536000, immutable
// and Accept-Ranges: bytes. Preconditions follow RFC 9110 (If-Match,
// If-Unmodified-Since: 412; If-None-Match, If-Modified-Since: 304); a
// single byte range gives 206, an unsatisfiable or malformed one 416, and
// several ranges the whole body. Every error answer has a JSON body
// {"error": "..."}: a missing image (unknown key, wrong cookie, deleted)
// is one identical 404 cached for 60 s; a malformed path is 400; a vid
// this store does not hold is 404 with X-Haybale-Error: volume-not-here,
// and a volume that failed to open (or a store shutting down) is 503 with
// X-Haybale-Error: volume-unavailable, neither cacheable; damaged bytes
// are never served: 500 with X-Haybale-Error: corrupt (or read-error for a
// disk read error). /healthz, /readyz and /metrics (Prometheus, in the
// server's own registry) complete the surface.
//
// The HTTP listener is served by fasthttp (fast.go): a plain GET or HEAD
// of an image, with no conditional or Range header, is read, verified and
// answered there without a per-request allocation, the body written from
// the pooled read buffer with the headers in one write (one writev for an
// image larger than the connection's 16 KiB write buffer). Every other
// request is handed to the net/http handler (http.go) through fasthttp's
// adaptor, which answers as above; both paths give the same answers.
//
// # gRPC
//
// The storepb Store service, with the status codes store.proto lists,
// served by internal/rpc: with TLS credentials every caller presents a
// certificate of the cluster CA and each method is allowed only to the
// roles of Policy. Write checks a write token and Delete a delete token
// (vid, key and cookie) with the WriteAuthorizer they are given; without
// one, every Write and Delete is refused. ReplicateVolume pulls only from
// a source presenting a store certificate. Messages are at most
// MaxMessageSize.
//
// A data directory holds, per volume, <vid>.dat (the needles), <vid>.idx
// (the index hint) and, when an operator marked it read-only,
// <vid>.readonly, and the store's ID in StoreIDFile ("store.id": the ID
// and a newline); an erasure-coded volume is held as <vid>.ecx (its index),
// <vid>.ecj (its deletion journal) and the shards <vid>.ec00..ec13 this
// store holds (see package volume). Files ending in .tmp are leftovers of
// an interrupted atomic write and are removed at start-up. Files
// <vid>.dat.torn-* hold the torn tail recovery moved out of a volume (see
// volume.TornPath); the store ignores them and leaves them for an operator.
//
// # EC volumes
//
// An EC volume is served on the same image paths with the same headers and
// ETags as before it was encoded. A read costs one pread on the needle's
// data shard when this store holds it, else (or when that shard is
// damaged) the needle's byte range is rebuilt from 10 other shards, read
// locally or from peers through Options.ShardPeers (the EcShardRead RPC).
// Too few readable shards answer 503 with X-Haybale-Error:
// volume-unavailable, so caches fail over. Deletes go to the journal.
// Every holder syncs its index and journal of each EC volume with the other
// holders (ec_sync.go): at start-up, when it mounts shards, every
// Options.ECSyncInterval and on EcIndexSync; until the first sync after it
// opened or mounted the volume, reads answer 503 volume-unavailable, so a
// holder back from downtime never serves a photo deleted meanwhile.
package store

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/store/volume"
)

// LockFile is the file in a data directory that a running store (or an
// offline tool) holds an exclusive lock on.
const LockFile = volume.DirLockFile

// ErrVolumeNotHere is returned for a vid this store does not hold.
var ErrVolumeNotHere = errors.New("store: volume not on this store")

// Options configure a Store.
type Options struct {
	// Dir is the data directory; it is created if missing. Required.
	Dir string
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// VolumeSizeLimit is the size at which volumes turn read-only;
	// default and maximum volume.MaxSize (32 GiB).
	VolumeSizeLimit int64
	// OpenParallelism bounds how many volumes are recovered at once;
	// default 2 x GOMAXPROCS.
	OpenParallelism int
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// ShardPeers reads the shards of EC volumes that this store does not
	// hold (or cannot read), for degraded reads; nil reads local shards
	// only. See ShardPeers in ec.go for one over gRPC.
	ShardPeers volume.ShardReader
	// ECHolders names the other holders of each EC volume, for the sync of
	// their indexes and deletion journals (see ec_sync.go); when nil and
	// ShardPeers implements ECHolderFinder (DirectoryShardPeers does), it
	// is used. Without one, EC volumes are not synced.
	ECHolders ECHolderFinder
	// ECSyncInterval is how often Server.Serve syncs every EC volume with
	// its other holders; default 1 minute.
	ECSyncInterval time.Duration
	// VerifiedMappings bounds how many needles (of volume.PinMin bytes or
	// more), once verified, keep a mapping of their own so that later
	// reads of them skip the checksum while their pages have not left
	// memory (see volume.Pins), and so that their answers are sent from
	// the page cache without a copy (sendfile, or written from the
	// volume's mapping), proven by that mapping before every later send.
	// An answer holds its mapping until it is written, out of the cache
	// when every cached one was held: at most the bound and an eighth
	// (at least one) more exist at once, cached or held; a read that
	// finds that many is one pread into memory. Each takes two mappings of
	// the process, counted against vm.max_map_count: Open fails when
	// those of the bound and its eighth are more than half of it.
	// Zero means volume.DefaultVerifiedMappings; a negative value turns
	// them off: every read hashes, and every image is read into memory
	// with one pread and written from there (no zero-copy), as it is
	// where verified mappings cannot be had (not Linux, or a
	// /proc/self/pagemap that does not report present pages).
	VerifiedMappings int
	// DirectReads reads the needles of plain and EC volumes of
	// volume.MapMin bytes or more that are not in the page cache with
	// O_DIRECT, leaving
	// the page cache to the needles read more than once (see
	// volume.Options.Direct). DirectWindow is the
	// policy's window: a needle read cold again within about that many
	// cold reads is read buffered and stays in memory; zero means
	// volume.DefaultDirectWindow. The table takes 4 bytes a slot for the
	// whole store, not per image.
	DirectReads  bool
	DirectWindow int
}

// Store holds the volumes of one data directory. It is safe for concurrent
// use.
type Store struct {
	opts  Options
	ready atomic.Bool
	lock  io.Closer // the data directory's lock, held while open
	// pins keeps the verified mappings of every plain volume's large
	// needles; nil when they are off (or the system has none).
	pins *volume.Pins
	// direct is the policy of direct reads of cold needles, shared by
	// every plain volume; nil when off. directOnce logs, once, that a
	// volume cannot read direct.
	direct     *volume.DirectReads
	directOnce sync.Once
	// createMu serialises volume creations and replica swaps.
	createMu sync.Mutex
	// reportClock is the last stamp ReportStamp returned.
	reportClock atomic.Int64

	mu struct {
		sync.RWMutex
		volumes map[uint32]*volume.Volume
		ec      map[uint32]*volume.ECVolume // erasure-coded volumes
		failed  map[uint32]error            // volumes that could not be opened
		// ecRepair holds the EC volumes whose index is lost or damaged
		// while other files of theirs remain: the EC sync restores it.
		ecRepair map[uint32]bool
		closed   bool
	}
}

// Open opens every volume in opts.Dir, in parallel. A volume that cannot be
// opened (for example a damaged superblock) is logged and reported by
// Failed; the others are served. Open fails only when the directory itself
// cannot be used.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("store: no data directory")
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.OpenParallelism <= 0 {
		opts.OpenParallelism = 2 * runtime.GOMAXPROCS(0)
	}
	if opts.ECHolders == nil {
		if f, ok := opts.ShardPeers.(ECHolderFinder); ok {
			opts.ECHolders = f
		}
	}
	if opts.ECSyncInterval <= 0 {
		opts.ECSyncInterval = time.Minute
	}
	s := &Store{opts: opts}
	switch n := opts.VerifiedMappings; {
	case n > 0:
		// Asked for: a bound the system cannot give is an error.
		pins, err := volume.NewPins(n)
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		s.pins = pins
	case n == 0:
		pins, err := volume.NewPins(volume.DefaultVerifiedMappings)
		if err != nil {
			opts.Logger.Info("large needles are verified on every read", "reason", err)
		}
		s.pins = pins
	}
	if opts.DirectReads {
		s.direct = volume.NewDirectReads(opts.DirectWindow)
	}
	s.mu.volumes = map[uint32]*volume.Volume{}
	s.mu.ec = map[uint32]*volume.ECVolume{}
	s.mu.failed = map[uint32]error{}
	s.mu.ecRepair = map[uint32]bool{}
	if err := opts.FS.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	// A data directory created just now must survive a power cut too.
	if err := opts.FS.SyncDir(filepath.Dir(filepath.Clean(opts.Dir))); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	// One process per data directory: a second store, or an offline tool
	// compacting a volume under a running store, would lose writes.
	lock, err := opts.FS.Lock(filepath.Join(opts.Dir, LockFile))
	if err != nil {
		if errors.Is(err, vfs.ErrLocked) {
			return nil, fmt.Errorf("store: data directory %s is in use by another process (a running store or tool): %w", opts.Dir, err)
		}
		return nil, fmt.Errorf("store: %w", err)
	}
	s.lock = lock
	names, err := opts.FS.List(opts.Dir)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	var vids []uint32
	for _, name := range names {
		if strings.HasSuffix(name, ".tmp") {
			if err := volume.RemoveLeftover(opts.FS, filepath.Join(opts.Dir, name)); err != nil {
				opts.Logger.Warn("cannot remove leftover temporary file", "file", name, "err", err)
			}
			continue
		}
		base, ok := strings.CutSuffix(name, ".dat")
		if !ok {
			continue
		}
		vid, err := strconv.ParseUint(base, 10, 32)
		if err != nil || strconv.FormatUint(vid, 10) != base {
			continue
		}
		vids = append(vids, uint32(vid))
	}
	// Settle the volumes a crash left in both plain and EC form, and open
	// the EC volumes.
	if vids, err = s.openECVolumes(ctx, vids); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: %w", err)
	}

	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.OpenParallelism)
	for _, vid := range vids {
		g.Go(func() error {
			v, err := volume.Open(gctx, opts.Dir, vid, s.volumeOptions())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if ctxErr := gctx.Err(); ctxErr != nil {
					return ctxErr
				}
				opts.Logger.Error("volume failed to open", "vid", vid, "err", err)
				s.mu.failed[vid] = err
				return nil
			}
			st := v.Status()
			opts.Logger.Info("volume opened", "vid", vid, "state", st.State.String(), "images", st.Images, "bytes", st.Size)
			s.noteDirect(vid, st)
			s.mu.volumes[vid] = v
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	// Loading the volumes left garbage (read buffers, index arrays that
	// grew or were merged); the indexes themselves live outside the heap.
	// Collect it and give the memory back to the system now, rather than
	// carry it for the life of the process.
	debug.FreeOSMemory()
	s.ready.Store(true)
	return s, nil
}

func (s *Store) volumeOptions() volume.Options {
	return volume.Options{FS: s.opts.FS, SizeLimit: s.opts.VolumeSizeLimit, Pins: s.pins, Direct: s.direct}
}

// noteDirect logs, the first time only, that a volume asked to read cold
// needles direct reads them through the page cache, and why (a file
// system that refuses O_DIRECT, or one that cannot be mapped).
func (s *Store) noteDirect(vid uint32, st volume.Status) {
	if s.direct == nil || st.Direct {
		return
	}
	s.directOnce.Do(func() {
		s.opts.Logger.Warn("cold images are read through the page cache, not direct", "vid", vid, "reason", st.DirectOff)
	})
}

// VerifiedMappings returns the counters of the store's verified mappings
// (all zero when they are off).
func (s *Store) VerifiedMappings() volume.PinStats { return s.pins.Stats() }

// Ready reports whether every volume has been loaded.
func (s *Store) Ready() bool { return s.ready.Load() }

// Dir returns the data directory.
func (s *Store) Dir() string { return s.opts.Dir }

// FS returns the file system the store keeps its files in.
func (s *Store) FS() vfs.FS { return s.opts.FS }

// Volume returns the open volume vid.
func (s *Store) Volume(vid uint32) (*volume.Volume, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if v, ok := s.mu.volumes[vid]; ok {
		return v, nil
	}
	if err, ok := s.mu.failed[vid]; ok {
		return nil, fmt.Errorf("store: volume %d failed to open: %w", vid, err)
	}
	return nil, fmt.Errorf("%w: %d", ErrVolumeNotHere, vid)
}

// ReportStamp returns the store's report clock: the time in Unix
// nanoseconds, made strictly increasing over the calls of this process
// (a wall clock stepping back does not make it repeat or go back). The
// heartbeat stamps each report with it before reading the volumes, and
// AllocateVolume answers with it once the new volume is listed, so a
// report with a larger stamp than an allocation's was built after it and
// lists the volume.
func (s *Store) ReportStamp() int64 {
	for {
		last := s.reportClock.Load()
		next := max(time.Now().UnixNano(), last+1)
		if s.reportClock.CompareAndSwap(last, next) {
			return next
		}
	}
}

// Volumes returns the open volumes ordered by vid.
func (s *Store) Volumes() []*volume.Volume {
	s.mu.RLock()
	vs := make([]*volume.Volume, 0, len(s.mu.volumes))
	for _, v := range s.mu.volumes {
		vs = append(vs, v)
	}
	s.mu.RUnlock()
	slices.SortFunc(vs, func(a, b *volume.Volume) int { return cmp.Compare(a.Vid(), b.Vid()) })
	return vs
}

// Failed returns the volumes that could not be opened, with why.
func (s *Store) Failed() map[uint32]error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := make(map[uint32]error, len(s.mu.failed))
	for vid, err := range s.mu.failed {
		m[vid] = err
	}
	return m
}

// CreateVolume creates volume vid with a needle secret of its own (see
// CreateVolumeWithSecret). Creating a volume the store already holds
// returns it unchanged, so a retried allocation is harmless.
func (s *Store) CreateVolume(ctx context.Context, vid uint32) (*volume.Volume, error) {
	return s.CreateVolumeWithSecret(ctx, vid, nil)
}

// CreateVolumeWithSecret creates volume vid whose needle magics derive
// from secret (volume.SecretSize bytes; nil draws a random one). Every
// replica of a volume must get the same secret, so that the replicas stay
// byte-identical. Creating a volume the store already holds returns it
// unchanged, unless it has another secret than the one asked for.
func (s *Store) CreateVolumeWithSecret(ctx context.Context, vid uint32, secret []byte) (*volume.Volume, error) {
	// Creations are serialised among themselves, but the files are made
	// (two fsyncs and a directory sync) outside s.mu, so reads of the
	// other volumes go on meanwhile.
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.RLock()
	closed := s.mu.closed
	v, exists := s.mu.volumes[vid]
	failedErr, failed := s.mu.failed[vid]
	s.mu.RUnlock()
	switch {
	case closed:
		return nil, volume.ErrClosed
	case exists:
		if sb := v.Superblock(); secret != nil && !bytes.Equal(sb.Secret[:], secret) {
			return nil, fmt.Errorf("store: %w: volume %d exists with another needle secret", volume.ErrExists, vid)
		}
		return v, nil
	case failed:
		return nil, fmt.Errorf("store: volume %d exists but failed to open: %w", vid, failedErr)
	}
	opts := s.volumeOptions()
	opts.Secret = secret
	v, err := volume.Create(ctx, s.opts.Dir, vid, opts)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		v.Close()
		return nil, volume.ErrClosed
	}
	s.mu.volumes[vid] = v
	s.opts.Logger.Info("volume created", "vid", vid)
	s.noteDirect(vid, v.Status())
	return v, nil
}

// Close closes every volume, waiting for writes in flight.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil
	}
	s.mu.closed = true
	var errs []error
	for _, v := range s.mu.volumes {
		if err := v.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range s.mu.ec {
		if err := e.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	return errors.Join(errs...)
}
