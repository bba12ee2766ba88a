package volume

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// Errors returned by volume operations.
var (
	// ErrNotFound is returned when no live needle matches the key, size
	// code and cookie: never written, deleted, or a wrong cookie.
	ErrNotFound = errors.New("volume: image not found")
	// ErrReadOnly is returned by writes to a volume that is not writable
	// (full, marked read-only, sealed or failed).
	ErrReadOnly = errors.New("volume: volume is read-only")
	// ErrFull is returned by a write that does not fit under the size
	// limit; the volume turns read-only. It wraps ErrReadOnly.
	ErrFull = fmt.Errorf("%w: volume is full", ErrReadOnly)
	// ErrClosed is returned by operations on a closed volume.
	ErrClosed = errors.New("volume: volume is closed")
	// ErrExists is returned by Create when the volume's file exists.
	ErrExists = errors.New("volume: volume already exists")
	// ErrInvalid is returned for a write the format cannot hold: key 0, an
	// unknown size code, an empty batch, a tombstone passed to Write.
	ErrInvalid = errors.New("volume: invalid needle")
)

// IsCorruption reports whether err says stored bytes are damaged.
func IsCorruption(err error) bool { return needle.IsCorruption(err) }

// State is a volume's lifecycle state.
type State int32

// Volume states.
const (
	// StateWritable volumes accept writes.
	StateWritable State = iota
	// StateReadOnly volumes are full or were marked read-only.
	StateReadOnly
	// StateSealed volumes are read-only and compacted, eligible for EC.
	StateSealed
	// StateFailed volumes hit an I/O error they cannot vouch for; they
	// serve what was acknowledged before and refuse writes until reopened.
	StateFailed
)

func (s State) String() string {
	switch s {
	case StateWritable:
		return "writable"
	case StateReadOnly:
		return "read-only"
	case StateSealed:
		return "sealed"
	case StateFailed:
		return "failed"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Options configure a volume. The zero value is usable.
type Options struct {
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// SizeLimit is the size at which the volume turns read-only; default
	// and maximum MaxSize (32 GiB).
	SizeLimit int64
	// Now returns the time stamped on appended needles; default time.Now.
	Now func() time.Time
	// Secret is the needle secret Create writes into a new volume's
	// superblock: SecretSize bytes, not all zero, the same for every
	// replica of the volume. Nil makes Create pick a random one. Open
	// ignores it (the secret is read from the superblock).
	Secret []byte
	// Pins, when set, keeps verified mappings of the volume's large
	// needles, so that ReadRef answers a needle whose verified pages are
	// still mapped without hashing it again, and without copying it (a
	// Mapped Ref, whose bytes StillVerified proves; see pins_linux.go).
	// Nil verifies every read, and ReadRef reads every needle into the
	// caller's buffer (never Mapped). One Pins may serve many volumes.
	Pins *Pins
	// Direct, when set, makes ReadRef and Read (and EC volumes' reads
	// of their local shards, see ec_volume.go) read needles of MapMin
	// bytes or more that are not in the page cache with O_DIRECT, leaving the page
	// cache as it was, except a needle read cold again soon, which is read
	// buffered and stays (see direct.go).
	// Nil reads every needle through the page cache. It needs the
	// volume's mapping (Status.Mapped) and a file system that takes
	// O_DIRECT; without them reads are buffered (Status.Direct is false,
	// DirectOff says why). One DirectReads may serve many volumes.
	Direct *DirectReads
}

func (o Options) withDefaults() Options {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.SizeLimit <= 0 || o.SizeLimit > MaxSize {
		o.SizeLimit = MaxSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Volume is one open volume. It is safe for concurrent use.
type Volume struct {
	opts    Options
	dir     string
	vid     uint32
	super   Superblock
	format  needle.Format // the needle format named by super
	dat     vfs.File
	idxPath string

	// commit serialises appends: see commit.go.
	commit commitQueue

	// mu guards the index and closing; readers hold it shared across their
	// pread so Close cannot close the file under them.
	mu struct {
		sync.RWMutex
		index  *index
		closed bool
		// dmap maps the current .dat for ReadRef; nil where the file
		// system cannot map (then reads use pread). See mapped_linux.go.
		dmap *datMap
	}

	// markMu serialises writes of the read-only marker file and the state
	// changes that go with them (they share one temporary file name).
	markMu sync.Mutex

	state      atomic.Int32
	reason     atomic.Pointer[string]
	tail       atomic.Int64 // end of the last durable needle
	needles    atomic.Int64 // needles ever appended, including tombstones
	corrupt    atomic.Int64 // bytes skipped as corrupt by recovery
	syncs      atomic.Int64 // group commits made durable
	compacting atomic.Bool
	idxBytes   int64    // owned by the syncer, or by lead's holder
	idx        vfs.File // owned by the syncer, or by lead's holder
	idxErr     error    // owned by the syncer, or by lead's holder

	preads       atomic.Int64 // image reads that read the .dat (Read, ReadRef)
	mappedReads  atomic.Int64 // image reads ReadRef served from the mapping
	directReads  atomic.Int64 // preads of ReadRef that bypassed the page cache
	coldBuffered atomic.Int64 // preads of ReadRef of cold needles kept buffered by the policy
	// directOff says why a volume asked to read direct does not (the
	// error of the last attempt to open the direct descriptor); nil when
	// it does or was not asked to.
	directOff atomic.Pointer[string]

	// retired is set once an EC encode that replaces the volume committed:
	// appends (deletes too) fail with ErrClosed from then on, so none lands
	// behind the encoded snapshot.
	retired atomic.Bool
}

// DatPath returns the path of volume vid's .dat file in dir.
func DatPath(dir string, vid uint32) string {
	return filepath.Join(dir, strconv.FormatUint(uint64(vid), 10)+".dat")
}

// IdxPath returns the path of volume vid's .idx file in dir.
func IdxPath(dir string, vid uint32) string {
	return filepath.Join(dir, strconv.FormatUint(uint64(vid), 10)+".idx")
}

// readOnlyPath is the marker file that keeps an operator's read-only mark
// across restarts; it holds the reason.
func readOnlyPath(dir string, vid uint32) string {
	return filepath.Join(dir, strconv.FormatUint(uint64(vid), 10)+".readonly")
}

// Create creates a new, empty, writable volume vid in dir and makes its
// files durable.
func Create(ctx context.Context, dir string, vid uint32, opts Options) (*Volume, error) {
	opts = opts.withDefaults()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := DatPath(dir, vid)
	if _, err := opts.FS.Stat(path); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrExists, path)
	}
	sb := Superblock{Version: FormatVersion, Vid: vid, Created: opts.Now().UnixNano()}
	switch {
	case opts.Secret == nil:
		if _, err := rand.Read(sb.Secret[:]); err != nil {
			return nil, fmt.Errorf("volume %d: create: secret: %w", vid, err)
		}
	case len(opts.Secret) != SecretSize || [SecretSize]byte(opts.Secret) == [SecretSize]byte{}:
		return nil, fmt.Errorf("%w: volume secret of %d bytes, want %d not all zero", ErrInvalid, len(opts.Secret), SecretSize)
	default:
		sb.Secret = [SecretSize]byte(opts.Secret)
	}
	if err := vfs.WriteFileAtomic(opts.FS, path, sb.encode()); err != nil {
		return nil, fmt.Errorf("volume %d: create: %w", vid, err)
	}
	return Open(ctx, dir, vid, opts)
}

// Open opens volume vid in dir and recovers it: it loads the idx hint,
// scans and indexes the volume after the last indexed needle, and moves a
// torn tail aside before it cuts it off. See the package doc.
func Open(ctx context.Context, dir string, vid uint32, opts Options) (*Volume, error) {
	opts = opts.withDefaults()
	v := &Volume{opts: opts, dir: dir, vid: vid, idxPath: IdxPath(dir, vid)}
	v.mu.index = newIndex()
	// Stat first: OpenReadWrite would create a missing file.
	if _, err := opts.FS.Stat(DatPath(dir, vid)); err != nil {
		return nil, fmt.Errorf("volume %d: %w", vid, err)
	}
	var err error
	v.dat, err = opts.FS.OpenReadWrite(DatPath(dir, vid))
	if err != nil {
		return nil, fmt.Errorf("volume %d: %w", vid, err)
	}
	if err := v.recover(ctx); err != nil {
		v.dat.Close()
		if v.idx != nil {
			v.idx.Close()
		}
		return nil, fmt.Errorf("volume %d: %w", vid, err)
	}
	v.mu.dmap = v.mapCurrent(v.dat, v.tail.Load())
	v.setState(StateWritable, "")
	if reason, err := readMarker(opts.FS, readOnlyPath(dir, vid)); err == nil {
		if reason == sealedReason {
			v.setState(StateSealed, reason)
		} else {
			v.setState(StateReadOnly, reason)
		}
	}
	if v.tail.Load() >= opts.SizeLimit {
		v.setState(StateReadOnly, "full")
	}
	if s, _ := v.State(); s == StateWritable && v.super.Version < FormatVersion {
		v.setState(StateReadOnly, formatReadOnlyReason)
	}
	v.startCommitter()
	return v, nil
}

// formatReadOnlyReason is why a format-1 volume takes no images (see the
// package doc).
const formatReadOnlyReason = "volume format 1: reads and deletes only"

func readMarker(fs vfs.FS, path string) (string, error) {
	f, err := fs.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := make([]byte, 1024)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return string(b[:n]), nil
}

// Vid returns the volume's id.
func (v *Volume) Vid() uint32 { return v.vid }

// Superblock returns the volume's decoded superblock (compaction replaces
// it with one of the next generation).
func (v *Volume) Superblock() Superblock {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.super
}

// State returns the volume's state and, when not writable, why.
func (v *Volume) State() (State, string) {
	r := ""
	if p := v.reason.Load(); p != nil {
		r = *p
	}
	return State(v.state.Load()), r
}

func (v *Volume) setState(s State, reason string) {
	v.reason.Store(&reason)
	v.state.Store(int32(s))
}

// fail turns the volume read-only after an I/O error it cannot vouch for.
func (v *Volume) fail(err error) {
	v.setState(StateFailed, "I/O failure: "+err.Error())
}

// MarkReadOnly stops writes to the volume. The mark is kept in a marker
// file, so it survives restarts. Marking a failed volume keeps it failed;
// marking a sealed one changes nothing (it stays sealed). It is safe to
// call concurrently.
func (v *Volume) MarkReadOnly(ctx context.Context, reason string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if reason == "" {
		reason = "marked read-only"
	}
	v.markMu.Lock()
	defer v.markMu.Unlock()
	if s, _ := v.State(); s == StateSealed {
		return nil
	}
	if err := vfs.WriteFileAtomic(v.opts.FS, readOnlyPath(v.dir, v.vid), []byte(reason)); err != nil {
		return fmt.Errorf("volume %d: mark read-only: %w", v.vid, err)
	}
	if s, _ := v.State(); s == StateWritable {
		v.setState(StateReadOnly, reason)
	}
	return nil
}

// Status is a snapshot of a volume's size and contents.
type Status struct {
	Vid        uint32
	State      State
	Reason     string // why the volume is not writable
	Size       int64  // bytes in the .dat, superblock included
	SizeLimit  int64
	Images     int   // live (key, size) entries
	LiveBytes  int64 // bytes of live needles
	Deleted    int64 // bytes compaction reclaims (not TombstoneBytes)
	Generation uint32
	Created    time.Time
	// Needles counts needles appended since open or found at open,
	// tombstones included; Syncs counts the group commits (fdatasyncs)
	// that made the appends since open durable.
	Needles int64
	Syncs   int64
	// CorruptBytes counts bytes recovery skipped as damaged.
	CorruptBytes int64

	// TombstoneBytes counts the bytes of the tombstones in force, which
	// compaction keeps (tombstones are permanent); Deleted leaves them out.
	TombstoneBytes int64

	// Preads counts the image reads since open that read the .dat with a
	// pread (one each); MappedReads those ReadRef served from the page
	// cache through the mapping, without one.
	Preads      int64
	MappedReads int64

	// Mapped reports whether the volume file is mapped for ReadRef, which
	// then, with Options.Pins, serves needles in the page cache without a
	// pread; it is false on file systems that cannot map (and if mapping
	// failed).
	Mapped bool

	// DirectReads counts the image reads since open that read a needle
	// not in the page cache with O_DIRECT (one pread each, counted in
	// Preads too); ColdBufferedReads those of needles not in the page
	// cache that the policy read buffered, to keep them there (see
	// Options.Direct).
	DirectReads       int64
	ColdBufferedReads int64

	// Direct reports whether the volume reads cold needles direct;
	// DirectOff says why not when Options.Direct asked for it.
	Direct    bool
	DirectOff string
}

// Status returns a snapshot of the volume's state and size.
func (v *Volume) Status() Status {
	v.mu.RLock()
	images := v.mu.index.len()
	live := int64(v.mu.index.liveUnits()) * needle.Alignment
	tombs := int64(v.mu.index.tombs.units) * needle.Alignment
	super := v.super
	mapped := v.mu.dmap != nil
	direct := mapped && v.mu.dmap.direct != nil
	v.mu.RUnlock()
	s, reason := v.State()
	size := v.tail.Load()
	st := Status{
		Vid:          v.vid,
		State:        s,
		Reason:       reason,
		Size:         size,
		SizeLimit:    v.opts.SizeLimit,
		Images:       images,
		LiveBytes:    live,
		Deleted:      max(size-SuperblockSize-live-tombs, 0),
		Generation:   super.Generation,
		Created:      time.Unix(0, super.Created),
		Needles:      v.needles.Load(),
		Syncs:        v.syncs.Load(),
		CorruptBytes: v.corrupt.Load(),
	}
	st.TombstoneBytes = tombs
	st.Mapped = mapped
	st.Preads = v.preads.Load()
	st.MappedReads = v.mappedReads.Load()
	st.DirectReads = v.directReads.Load()
	st.ColdBufferedReads = v.coldBuffered.Load()
	st.Direct = direct
	if p := v.directOff.Load(); p != nil && !direct {
		st.DirectOff = *p
	}
	return st
}

// Close waits for writes in flight, syncs the idx and closes the files.
// Reads and writes after Close return ErrClosed.
func (v *Volume) Close() error {
	v.stopCommitter()
	// The idx file and its state belong to whoever holds the round lock
	// (a compaction's swap, Sync): wait for them.
	v.commit.round.Lock()
	defer v.commit.round.Unlock()

	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mu.closed {
		return nil
	}
	v.mu.closed = true
	// No reader holds the index now (they hold the read lock), and every
	// later one sees closed, or an empty index.
	v.mu.index.release()
	var err error
	if v.idx != nil {
		if v.idxErr == nil {
			err = v.idx.Sync()
		}
		if cerr := v.idx.Close(); err == nil {
			err = cerr
		}
	}
	if v.mu.dmap != nil {
		// Answers still being written from the mapping keep it (and its
		// own descriptor) until they release their Refs; the verified
		// mappings of its needles go now (no read holds one: reads hold
		// v.mu).
		v.opts.Pins.dropMap(v.mu.dmap)
		v.mu.dmap.release()
		v.mu.dmap = nil
	}
	if cerr := v.dat.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("volume %d: close: %w", v.vid, err)
	}
	return nil
}

// Retire stops the volume taking writes and deletes (what is already queued
// is committed first; later calls get ErrClosed), returns its tombstones (see
// Tombstones) and closes it. A store replacing a copy of a volume carries
// these tombstones over to the new copy, so no delete the old copy
// acknowledged is lost. The volume is closed even when an error is
// returned.
func (v *Volume) Retire(ctx context.Context) ([]needle.Needle, error) {
	v.stopCommitter()
	ts, err := v.Tombstones(ctx)
	if cerr := v.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("volume %d: retire: %w", v.vid, err)
	}
	return ts, nil
}

// ReadBufferClass is the granularity of the buffers reads allocate. A read
// whose needle does not fit in the caller's buffer allocates one of the
// needle's length rounded up to a multiple of ReadBufferClass and returns
// it, so that a caller pooling buffers (one pool per kind of image) soon
// holds buffers that fit every needle of its kind: needles of nearby
// lengths share a class, and a buffer is replaced only when a needle of a
// larger class than any before comes. Callers need no buffer up front.
const ReadBufferClass = 4 << 10

// readBuffer returns buf resliced to n bytes, or a new buffer of n bytes
// and a capacity of n rounded up to ReadBufferClass when buf is too small.
func readBuffer(buf []byte, n int) []byte {
	if cap(buf) >= n {
		return buf[:n]
	}
	return make([]byte, n, (n+ReadBufferClass-1)/ReadBufferClass*ReadBufferClass)
}

// Read returns the live needle for (key, size) if its cookie matches. It
// costs exactly one pread. buf is used for the needle's bytes when large
// enough, so callers can pool buffers; otherwise a new one is allocated
// (see ReadBufferClass) and returned. The returned needle's Data aliases
// the returned buffer. A damaged needle returns an error for which
// IsCorruption is true, never its bytes.
//
// With Options.Direct, a needle of MapMin bytes or more not wholly in the
// page cache is read as ReadRef reads it (O_DIRECT, unless the policy
// keeps it; see direct.go), then copied into buf: Read has no Release to
// lend a buffer of the pool until. Its residency costs one mincore(2)
// call, which only reads of such needles pay.
func (v *Volume) Read(key, cookie uint64, size needle.SizeCode, buf []byte) (needle.Needle, []byte, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.mu.closed {
		return needle.Needle{}, buf, ErrClosed
	}
	off, length, ok := v.mu.index.get(key, uint32(size))
	if !ok {
		return needle.Needle{}, buf, ErrNotFound
	}
	v.preads.Add(1)
	var n needle.Needle
	var err error
	if m := v.mu.dmap; m != nil && m.direct != nil && int(length)*needle.Alignment >= MapMin &&
		m.covers(int64(off)*needle.Alignment, int(length)*needle.Alignment) &&
		!m.resident(int64(off)*needle.Alignment, int(length)*needle.Alignment) {
		if v.opts.Direct.direct(v.vid, key, size) {
			v.directReads.Add(1)
			n, buf, _, err = v.readDirectLocked(m.direct, off, length, buf, false)
		} else {
			v.coldBuffered.Add(1)
			n, buf, err = v.readFromLocked(m, off, length, buf) // no readahead around it
		}
	} else {
		n, buf, err = v.readAtLocked(off, length, buf)
	}
	if err != nil {
		return needle.Needle{}, buf, fmt.Errorf("volume %d: key %x size %v: %w", v.vid, key, size, err)
	}
	if n, err = verifyRead(n, key, size); err != nil {
		return needle.Needle{}, buf, fmt.Errorf("volume %d at offset %d: %w", v.vid, int64(off)*8, err)
	}
	if n.Cookie != cookie {
		return needle.Needle{}, buf, ErrNotFound
	}
	return n, buf, nil
}

// readAtLocked reads the needle at off (8-byte units) with one pread.
func (v *Volume) readAtLocked(off, length uint32, buf []byte) (needle.Needle, []byte, error) {
	return v.readFromLocked(v.dat, off, length, buf)
}

// readFromLocked reads the needle at off (8-byte units) from r, one of the
// current .dat's descriptors, with one pread.
func (v *Volume) readFromLocked(r io.ReaderAt, off, length uint32, buf []byte) (needle.Needle, []byte, error) {
	size := int(length) * needle.Alignment
	buf = readBuffer(buf, size)
	got, err := r.ReadAt(buf, int64(off)*needle.Alignment)
	if got < size {
		if err == nil || errors.Is(err, io.EOF) {
			return needle.Needle{}, buf, needle.Corruptf("needle at %d: read %d of %d bytes", int64(off)*8, got, size)
		}
		return needle.Needle{}, buf, err
	}
	n, derr := v.format.Decode(buf)
	return n, buf, derr
}

// verifyRead checks a decoded needle against what the index promised.
func verifyRead(n needle.Needle, key uint64, size needle.SizeCode) (needle.Needle, error) {
	if n.Key != key || n.Size != size || n.IsTombstone() {
		return needle.Needle{}, fmt.Errorf("%w: want key %x size %v, found key %x size %v tombstone %v",
			needle.ErrMismatch, key, size, n.Key, n.Size, n.IsTombstone())
	}
	return n, nil
}

// Has reports whether a live needle exists for (key, size), without reading
// it or checking its cookie.
func (v *Volume) Has(key uint64, size needle.SizeCode) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	_, _, ok := v.mu.index.get(key, uint32(size))
	return ok && !v.mu.closed
}

// Locate returns where the live needle for (key, size) lies, without
// reading it or checking its cookie.
func (v *Volume) Locate(key uint64, size needle.SizeCode) (Entry, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	off, length, ok := v.mu.index.get(key, uint32(size))
	if !ok || v.mu.closed {
		return Entry{}, false
	}
	return Entry{Key: key, Size: size, Offset: int64(off) * needle.Alignment, Length: int(length) * needle.Alignment}, true
}

// Entry is one live needle's place in the volume.
type Entry struct {
	Key    uint64
	Size   needle.SizeCode
	Offset int64 // bytes
	Length int   // bytes, padded
}

// Entries calls fn for every live needle in (key, size) order, under the
// volume's read lock: fn must not call back into the volume.
func (v *Volume) Entries(fn func(Entry) bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	v.mu.index.ascend(func(key uint64, size, off, length uint32) bool {
		return fn(Entry{Key: key, Size: needle.SizeCode(size), Offset: int64(off) * 8, Length: int(length) * 8})
	})
}

// Written says where Write put one needle.
type Written struct {
	Offset   int64  // byte offset in the .dat
	Length   int    // padded length in bytes
	Checksum uint64 // the needle's checksum
}

// Write appends the needles as one batch and returns once they are durable;
// they land whole or not at all. The writer normally chooses AppendTime,
// one for all the replicas of a write, so that they are byte-identical; it
// is set to the store's clock where zero, and a negative one or one more
// than MaxAppendTimeAhead ahead of the store's clock is refused
// (ErrInvalid). The batch flags and BatchStart are set here. A batch naming
// a (key, size) that a tombstone has deleted is refused with ErrDeleted.
// ctx is honoured until the batch is queued; after that Write waits for the
// outcome, because the bytes may already be on their way to the disk.
func (v *Volume) Write(ctx context.Context, needles []*needle.Needle) ([]Written, error) {
	if len(needles) == 0 {
		return nil, fmt.Errorf("%w: empty batch", ErrInvalid)
	}
	clock := v.opts.Now()
	now := clock.UnixNano()
	total := 0
	for _, n := range needles {
		switch {
		case n.Key == 0:
			return nil, fmt.Errorf("%w: key 0", ErrInvalid)
		case !n.Size.Valid():
			return nil, fmt.Errorf("%w: size code %d", ErrInvalid, n.Size)
		case n.IsTombstone():
			return nil, fmt.Errorf("%w: tombstones are written by Delete", ErrInvalid)
		}
		if n.AppendTime != 0 {
			if err := checkAppendTime(n.AppendTime, clock); err != nil {
				return nil, err
			}
		}
		total += needle.EncodedLen(len(n.Data))
	}
	p := &pending{buf: make([]byte, 0, total), ops: make([]idxEntry, len(needles))}
	written := make([]Written, len(needles))
	for i, n := range needles {
		if n.AppendTime == 0 {
			n.AppendTime = now
		}
		n.Flags &^= needle.FlagBatchContinues
		if i < len(needles)-1 {
			n.Flags |= needle.FlagBatchContinues
		}
		n.BatchStart = i == 0
		start := len(p.buf)
		var err error
		if p.buf, err = v.format.Append(p.buf, n); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		p.ops[i] = idxEntry{key: n.Key, size: uint32(n.Size), off: uint32(start / 8), length: uint32((len(p.buf) - start) / 8)}
		written[i] = Written{Offset: int64(start), Length: len(p.buf) - start, Checksum: n.Checksum}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	base, err := v.submit(p)
	if err != nil {
		return nil, fmt.Errorf("volume %d: %w", v.vid, err)
	}
	for i := range written {
		written[i].Offset += base
	}
	return written, nil
}

// Delete appends a tombstone for (key, size) — size needle.SizeAll deletes
// every size — stamped with the store's clock; see DeleteAt.
func (v *Volume) Delete(ctx context.Context, key, cookie uint64, size needle.SizeCode) (int64, error) {
	return v.DeleteAt(ctx, key, cookie, size, 0)
}

// DeleteAt appends a tombstone for (key, size) — size needle.SizeAll deletes
// every size — with the given append time (0 for the store's clock; the
// writer of a delete chooses one for all replicas, as for writes), and
// returns the bytes the deleted needles held, once the tombstone is durable.
//
// Tombstones are permanent (see Tombstones): a key with no live needle still
// gets its tombstone, so a write of it that lands later stays deleted. A
// (key, size) that a tombstone already covers writes nothing and returns 0,
// so retries do not grow the volume. A live needle whose cookie differs
// from cookie returns ErrNotFound and writes nothing.
func (v *Volume) DeleteAt(ctx context.Context, key, cookie uint64, size needle.SizeCode, appendTime int64) (int64, error) {
	if !size.Valid() && size != needle.SizeAll {
		return 0, fmt.Errorf("%w: size code %d", ErrInvalid, size)
	}
	if key == 0 {
		return 0, fmt.Errorf("%w: key 0", ErrInvalid)
	}
	// Check the cookie against one stored needle of the photo.
	v.mu.RLock()
	if v.mu.closed {
		v.mu.RUnlock()
		return 0, ErrClosed
	}
	if v.mu.index.deleted(key, uint32(size)) {
		v.mu.RUnlock()
		return 0, nil
	}
	var first [2]uint32
	found := false
	v.mu.index.sizesOf(key, func(s, off, length uint32) {
		if !found && (size == needle.SizeAll || s == uint32(size)) {
			first, found = [2]uint32{off, length}, true
		}
	})
	var n needle.Needle
	var err error
	if found {
		n, _, err = v.readAtLocked(first[0], first[1], nil)
	}
	v.mu.RUnlock()
	if found {
		// A damaged needle cannot prove the cookie; deleting it is still
		// allowed, so an operator can remove what cannot be read.
		if err == nil && n.Cookie != cookie {
			return 0, ErrNotFound
		}
		if err != nil && !IsCorruption(err) {
			return 0, fmt.Errorf("volume %d: %w", v.vid, err)
		}
	}
	p, err := v.tombstone(key, cookie, size, appendTime)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if _, err := v.submit(p); err != nil {
		return 0, fmt.Errorf("volume %d: %w", v.vid, err)
	}
	return int64(p.freed) * needle.Alignment, nil
}

// Sync flushes the idx hint; the .dat is always synced before a write
// returns.
func (v *Volume) Sync() error {
	if err := v.lead(); err != nil {
		return err
	}
	defer v.commit.release()
	if v.idx == nil || v.idxErr != nil {
		return v.idxErr
	}
	return v.idx.Sync()
}
