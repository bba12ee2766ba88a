package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/haybale/haybale/internal/dirconn"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/store/volume"
)

// StoreIDFile is the file in the data directory that holds the store's
// stable id.
const StoreIDFile = "store.id"

// maxCorruptQueued bounds the corrupt reports kept between heartbeats;
// beyond it new ones are dropped (they are logged and counted anyway).
const maxCorruptQueued = 1024

// HeartbeaterOptions configure a Heartbeater. Zero values take the
// documented defaults.
type HeartbeaterOptions struct {
	// DirectoryAddr is the directory's gRPC address, host:port, or the
	// comma-separated addresses of the nodes of a directory cluster: the
	// heartbeater reports to whichever leads. Required.
	DirectoryAddr string
	// StoreID is the store's stable id, kept in the data directory's
	// StoreIDFile. Empty: the id in that file, generated on first use.
	// Set (on a TLS plane, the name in the store's certificate): the file
	// must hold this id, or not exist yet and is then created with it, so
	// a data folder never changes hands between store identities.
	StoreID string
	// Credentials secure the connection to the directory, which must
	// present a directory certificate. nil means rpc.Insecure().
	Credentials *rpc.Credentials
	// GRPCAddr and HTTPAddr are the addresses under which the directory,
	// the other roles and the caches reach this store's servers (not
	// wildcard listen addresses). Required.
	GRPCAddr, HTTPAddr string
	// PublicURL is the base URL under which clients outside the cluster
	// reach the HTTP server; empty to use HTTPAddr.
	PublicURL string
	// Rack is the store's rack label; empty for none.
	Rack string
	// Interval between heartbeats until the directory asks for another;
	// default 5s.
	Interval time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts, which doubles from MinBackoff up to MaxBackoff with random
	// jitter; defaults 200ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
}

// Heartbeater is the store's side of the directory's Heartbeat stream: it
// sends a full report of the store (addresses, free space, every volume,
// corrupt reads since the last report) every interval, carries out the
// commands in the answers, and reconnects with exponential backoff and
// jitter when the stream breaks. With a directory cluster the stream goes
// to the leader (internal/dirconn): a follower's not-leader answer sends
// the next attempt to the leader it names at once, and an unreachable
// node to the next one, so a failover needs no restart. It is safe for
// concurrent use; Run is called once.
type Heartbeater struct {
	opts  HeartbeaterOptions
	store *Store
	// compactions tracks the compactions the directory asked for; Run
	// waits for them before it returns.
	compactions sync.WaitGroup

	mu struct {
		sync.Mutex
		interval time.Duration
		corrupt  []*directorypb.CorruptReport
		dropped  int
	}
}

// NewHeartbeater returns a Heartbeater for st. It reads or creates the
// store id when opts.StoreID is empty.
func NewHeartbeater(st *Store, opts HeartbeaterOptions) (*Heartbeater, error) {
	if st == nil {
		return nil, errors.New("store: NewHeartbeater: nil Store")
	}
	if opts.DirectoryAddr == "" || opts.GRPCAddr == "" || opts.HTTPAddr == "" {
		return nil, errors.New("store: NewHeartbeater: the directory, gRPC and HTTP addresses are required")
	}
	if _, err := dirconn.SplitAddrs(opts.DirectoryAddr); err != nil {
		return nil, fmt.Errorf("store: NewHeartbeater: %w", err)
	}
	id, err := LoadOrCreateStoreID(st.FS(), st.Dir(), opts.StoreID)
	if err != nil {
		return nil, err
	}
	if opts.StoreID != "" && id != opts.StoreID {
		return nil, fmt.Errorf("store: the data directory %s belongs to store %q, not %q (issue this store's certificate with --name %s)",
			st.Dir(), id, opts.StoreID, id)
	}
	opts.StoreID = id
	opts.Credentials = rpc.OrInsecure(opts.Credentials)
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(30*time.Second, opts.MinBackoff)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	h := &Heartbeater{opts: opts, store: st}
	h.mu.interval = opts.Interval
	return h, nil
}

// StoreID returns the id the store registers with.
func (h *Heartbeater) StoreID() string { return h.opts.StoreID }

// ReportCorrupt queues a corrupt read for the next heartbeat. It never
// blocks, so it can serve as ServerOptions.OnCorrupt.
func (h *Heartbeater) ReportCorrupt(vid uint32, key uint64, size needle.SizeCode, err error) {
	detail := "corrupt"
	if err != nil {
		detail = err.Error()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.mu.corrupt) >= maxCorruptQueued {
		h.mu.dropped++
		return
	}
	h.mu.corrupt = append(h.mu.corrupt, &directorypb.CorruptReport{
		Vid: vid, Key: key, SizeCode: uint32(size), Detail: detail, DetectedUnixNano: time.Now().UnixNano(),
	})
}

// Run heartbeats until ctx is cancelled; it returns nil then. Failures are
// logged and retried.
func (h *Heartbeater) Run(ctx context.Context) error {
	conn, err := dirconn.New(dirconn.Options{Addrs: []string{h.opts.DirectoryAddr}, Credentials: h.opts.Credentials,
		MinBackoff: h.opts.MinBackoff, MaxBackoff: h.opts.MaxBackoff, Logger: h.opts.Logger})
	if err != nil {
		return fmt.Errorf("store: directory %s: %w", h.opts.DirectoryAddr, err)
	}
	defer conn.Close()
	defer h.compactions.Wait()
	backoff := h.opts.MinBackoff
	for ctx.Err() == nil {
		answered, err := h.session(ctx, conn)
		if ctx.Err() != nil {
			break
		}
		if answered {
			backoff = h.opts.MinBackoff
		}
		// Full jitter over the upper half: [backoff/2, backoff).
		wait := backoff/2 + time.Duration(mrand.Int64N(int64(backoff/2)+1))
		if leader, ok := dirconn.NotLeader(err); ok && leader != "" {
			// A follower named the leader: go there without growing the
			// pause.
			h.opts.Logger.Info("directory node does not lead; following the leader", "leader", leader)
			wait = h.opts.MinBackoff / 2
			backoff = h.opts.MinBackoff / 2
		} else {
			h.opts.Logger.Warn("directory heartbeat failed; retrying", "directory", conn.Current(), "err", err, "retry_in", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		backoff = min(2*backoff, h.opts.MaxBackoff)
	}
	return nil
}

// session runs one Heartbeat stream until it fails; answered reports
// whether the directory answered at least once.
func (h *Heartbeater) session(ctx context.Context, conn *dirconn.Conn) (answered bool, err error) {
	client := directorypb.NewDirectoryClient(conn)
	current := conn.Current()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Heartbeat(ctx)
	if err != nil {
		return false, err
	}
	// A directory that stops answering is treated like a broken stream.
	watchdog := time.AfterFunc(h.answerTimeout(), cancel)
	defer watchdog.Stop()
	for {
		req, corrupt := h.report()
		if err := stream.Send(req); err != nil {
			h.requeue(corrupt)
			_, rerr := stream.Recv() // the stream's own error says why
			return answered, cmpErr(rerr, err)
		}
		resp, err := stream.Recv()
		if err != nil {
			h.requeue(corrupt)
			return answered, err
		}
		watchdog.Reset(h.answerTimeout())
		if !answered {
			h.opts.Logger.Info("registered with the directory", "directory", current, "store", h.opts.StoreID)
		}
		answered = true
		interval := h.opts.Interval
		if ms := resp.GetIntervalMs(); ms > 0 {
			interval = time.Duration(ms) * time.Millisecond
		}
		h.mu.Lock()
		h.mu.interval = interval
		h.mu.Unlock()
		h.apply(ctx, resp.GetCommands())
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			stream.CloseSend()
			return answered, ctx.Err()
		case <-t.C:
		}
	}
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// answerTimeout is how long to wait for an answer before reconnecting.
func (h *Heartbeater) answerTimeout() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return max(3*h.mu.interval, 10*time.Second)
}

// report builds a full report, taking the queued corrupt reports.
func (h *Heartbeater) report() (*directorypb.HeartbeatRequest, []*directorypb.CorruptReport) {
	h.mu.Lock()
	corrupt := h.mu.corrupt
	h.mu.corrupt = nil
	if h.mu.dropped > 0 {
		h.opts.Logger.Warn("corrupt reports dropped: too many between heartbeats", "dropped", h.mu.dropped)
		h.mu.dropped = 0
	}
	h.mu.Unlock()
	req := &directorypb.HeartbeatRequest{
		StoreId:   h.opts.StoreID,
		GrpcAddr:  h.opts.GRPCAddr,
		HttpAddr:  h.opts.HTTPAddr,
		PublicUrl: h.opts.PublicURL,
		Rack:      h.opts.Rack,
		Corrupt:   corrupt,
	}
	// Stamped before the volumes are read: see Store.ReportStamp.
	req.BuiltUnixNano = h.store.ReportStamp()
	if free, err := freeBytes(h.store.Dir()); err == nil {
		req.FreeBytes = free
	} else {
		h.opts.Logger.Warn("cannot read free disk space", "dir", h.store.Dir(), "err", err)
	}
	for _, v := range h.store.Volumes() {
		info := volumeInfo(v.Status())
		info.LastAppendUnixNano = h.store.lastAppend(info.GetVid())
		req.Volumes = append(req.Volumes, info)
	}
	for _, e := range h.store.ECVolumes() {
		req.Volumes = append(req.Volumes, ecVolumeInfo(e))
	}
	for vid, err := range h.store.Failed() {
		req.Volumes = append(req.Volumes, failedInfo(vid, err))
	}
	sortInfos(req.Volumes)
	return req, corrupt
}

// requeue puts back corrupt reports whose heartbeat was not answered.
func (h *Heartbeater) requeue(corrupt []*directorypb.CorruptReport) {
	if len(corrupt) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	room := max(0, maxCorruptQueued-len(h.mu.corrupt))
	if len(corrupt) > room {
		h.mu.dropped += len(corrupt) - room
		corrupt = corrupt[:room]
	}
	h.mu.corrupt = append(corrupt, h.mu.corrupt...)
}

// apply carries out the directory's commands in order; the outcome shows in
// the next report.
func (h *Heartbeater) apply(ctx context.Context, cmds []*directorypb.StoreCommand) {
	for _, c := range cmds {
		switch {
		case c.GetAllocateVolume() != nil:
			vid := c.GetAllocateVolume().GetVid()
			if vid == 0 {
				continue
			}
			secret := c.GetAllocateVolume().GetVolumeSecret()
			if len(secret) == 0 {
				secret = nil
			}
			if _, err := h.store.CreateVolumeWithSecret(ctx, vid, secret); err != nil {
				h.opts.Logger.Error("directory command failed: allocate volume", "vid", vid, "err", err)
			}
		case c.GetMarkReadOnly() != nil:
			vid := c.GetMarkReadOnly().GetVid()
			v, err := h.store.Volume(vid)
			if err != nil {
				h.opts.Logger.Warn("directory command for a volume not here: mark read-only", "vid", vid, "err", err)
				continue
			}
			reason := "directory"
			if r := c.GetMarkReadOnly().GetReason(); r != "" {
				reason += ": " + r
			}
			if err := v.MarkReadOnly(ctx, reason); err != nil {
				h.opts.Logger.Error("directory command failed: mark read-only", "vid", vid, "err", err)
				continue
			}
			h.opts.Logger.Info("volume marked read-only by the directory", "vid", vid, "reason", reason)
		case c.GetCompact() != nil:
			vid := c.GetCompact().GetVid()
			v, err := h.store.Volume(vid)
			if err != nil {
				h.opts.Logger.Warn("directory command for a volume not here: compact", "vid", vid, "err", err)
				continue
			}
			// Compaction runs in the background, one per volume (the
			// volume refuses a second); the next reports show its result.
			h.compactions.Add(1)
			go func() {
				defer h.compactions.Done()
				res, err := v.Compact(ctx, volume.CompactOptions{})
				if err != nil {
					if !errors.Is(err, volume.ErrCompacting) && ctx.Err() == nil {
						h.opts.Logger.Error("compaction asked by the directory failed", "vid", vid, "err", err)
					}
					return
				}
				h.opts.Logger.Info("volume compacted at the directory's request", "vid", vid,
					"reclaimed", res.Reclaimed, "generation", res.Generation, "took", res.Duration)
			}()
		default:
			h.opts.Logger.Warn("unknown directory command ignored", "command", c.String())
		}
	}
}

// freeBytes returns the space available to this process on dir's file
// system.
func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}

// LoadOrCreateStoreID returns the store id kept in dir/StoreIDFile on
// fsys. When the file does not exist it durably writes preferred there, or
// when preferred is empty a generated id ("st-" and 16 random hex digits),
// and returns it. The file holds the id and a newline.
func LoadOrCreateStoreID(fsys vfs.FS, dir, preferred string) (string, error) {
	path := filepath.Join(dir, StoreIDFile)
	id, err := readStoreID(fsys, path)
	if err == nil {
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	id = preferred
	if id == "" {
		var raw [8]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return "", fmt.Errorf("store: generate store id: %w", err)
		}
		id = "st-" + hex.EncodeToString(raw[:])
	}
	if !validStoreID(id) {
		return "", fmt.Errorf("store: invalid store id %q", id)
	}
	if err := vfs.WriteFileAtomic(fsys, path, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("store: write %s: %w", path, err)
	}
	return id, nil
}

// maxStoreIDFile bounds the store id file read.
const maxStoreIDFile = 256

func readStoreID(fsys vfs.FS, path string) (string, error) {
	f, err := fsys.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return "", fmt.Errorf("store: %s: %w", path, err)
	}
	if size > maxStoreIDFile {
		return "", fmt.Errorf("store: %s holds no valid store id (%d bytes)", path, size)
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("store: %s: %w", path, err)
	}
	id := strings.TrimSpace(string(b))
	if !validStoreID(id) {
		return "", fmt.Errorf("store: %s holds no valid store id", path)
	}
	return id, nil
}

// validStoreID reports whether id is 1 to 128 printable characters
// without spaces (the rule the directory applies).
func validStoreID(id string) bool {
	return id != "" && len(id) <= 128 && !strings.ContainsFunc(id, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) })
}

// lastAppend returns when the data file of plain volume vid last changed
// (an append of needles or tombstones, or a compaction's rewrite), Unix
// nanoseconds, or 0 when it cannot be told. It is the modification time
// of the .dat, which every append's write sets, so it survives restarts
// without a record of its own; the directory's erasure-coding policy
// reads it as the volume's last append.
func (s *Store) lastAppend(vid uint32) int64 {
	fi, err := s.opts.FS.Stat(volume.DatPath(s.opts.Dir, vid))
	if err != nil {
		return 0
	}
	return fi.ModTime().UnixNano()
}
