package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/reedsolomon"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// ShardReader reads byte ranges of the shards of EC volumes that are not
// held (or not readable) locally, for example from the stores that hold
// them. Implementations must be safe for concurrent use.
type ShardReader interface {
	// ReadShard fills p with the bytes at offset off of the data area of
	// shard (0..13) of EC volume vid (the shard header excluded). It
	// returns an error wrapping ErrShardUnavailable when it cannot.
	ReadShard(ctx context.Context, vid uint32, shard int, p []byte, off int64) error
}

// ECOptions configure an EC volume. The zero value is usable.
type ECOptions struct {
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// Peers reads the shards that are missing locally; nil reads local
	// shards only.
	Peers ShardReader
	// Direct, when set, reads needles of MapMin bytes or more whose
	// bytes on the local shards are not all in the page cache with
	// O_DIRECT, one aligned read per shard segment, under the policy of
	// plain volumes (see direct.go and Options.Direct); nil reads
	// through the page cache. Degraded reads (rebuilds) stay buffered.
	Direct *DirectReads
}

// ECVolume is one open EC volume: its ecx loaded into the packed in-RAM
// index, its journal applied, and the shards this directory holds. Reads of
// shards it does not hold go to ECOptions.Peers. It is safe for concurrent
// use.
type ECVolume struct {
	opts  ECOptions
	dir   string
	vid   uint32
	geo   ecGeometry
	coder reedsolomon.Encoder
	// format decodes the volume's needles: its magics derive from the
	// secret in the encoded .dat's superblock (format 2).
	format needle.Format
	// shards holds the local shard files whose header matched the ecx;
	// nil entries are not held here (or were unusable at open).
	shards [ECShards]vfs.File
	// shardErr says why a local shard is unusable (nil when missing).
	shardErr [ECShards]error
	// cold maps each local shard of the operating system's file system
	// (see mapDat): its descriptor, POSIX_FADV_RANDOM, is the one
	// needles are read from, so a read of a cold needle reads its pages
	// and no more (the shard file's own descriptor, which peers' range
	// reads use, keeps the kernel's readahead); with ECOptions.Direct the
	// mapping asks the page cache whether a needle's segments are
	// resident, and it holds the shard's O_DIRECT descriptor
	// (datMap.direct; nil where it could not be had, directOff says
	// why). nil where the shard is not held or could not be mapped.
	cold      [ECShards]*datMap
	directOff string

	mu struct {
		sync.RWMutex
		index  *index
		closed bool
	}
	// jmu serialises appends to the journal.
	jmu sync.Mutex
	// retired is set, under jmu, once a decode committed: deletes fail
	// with ErrClosed from then on (they belong to the decoded volume).
	retired bool
	ecj     vfs.File
	ecjSize int64 // guarded by jmu
	// journal is the set of the journal's records, guarded by jmu.
	journal journalSet
	// journalDamaged counts the damaged records dropped from the journal
	// when it was opened (see openJournal).
	journalDamaged int
	// pending makes reads wait for a journal sync (HoldUntilSynced).
	pending atomic.Bool
	// deletes and digestSum mirror journal.digest, for readers that do
	// not take jmu.
	deletes   atomic.Int64
	digestSum atomic.Uint64
	reads     atomic.Int64
	preads    atomic.Int64
	straddle  atomic.Int64
	degraded  atomic.Int64
	lost      atomic.Int64
	// directReads counts the reads that read their segments direct;
	// coldBuffered those of cold needles the policy read buffered.
	directReads  atomic.Int64
	coldBuffered atomic.Int64
}

// OpenEC opens EC volume vid in dir: it loads and checks the ecx, applies
// the journal (cutting a torn last record) and opens the local shards whose
// headers agree with the ecx. It fails when the ecx is missing or damaged
// (fetch it from another holder); missing or damaged shards are not errors:
// reads rebuild their bytes from the others.
func OpenEC(ctx context.Context, dir string, vid uint32, opts ECOptions) (*ECVolume, error) {
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	e := &ECVolume{opts: opts, dir: dir, vid: vid}
	var err error
	if e.coder, err = newECCoder(); err != nil {
		return nil, err
	}
	if e.geo, e.mu.index, err = loadECX(ctx, opts.FS, dir, vid); err != nil {
		return nil, err
	}
	sb, err := DecodeSuperblock(e.geo.super[:])
	if err != nil {
		return nil, fmt.Errorf("EC volume %d: %w", vid, err)
	}
	if e.format, err = sb.Format(); err != nil {
		return nil, fmt.Errorf("EC volume %d: %w", vid, err)
	}
	if err := e.openJournal(); err != nil {
		return nil, fmt.Errorf("EC volume %d: %w", vid, err)
	}
	for i := range e.shards {
		e.shards[i], e.shardErr[i] = openShard(opts.FS, dir, &e.geo, i)
		if e.shards[i] != nil {
			e.openCold(i)
		}
	}
	return e, nil
}

// openCold maps local shard i (see ECVolume.cold) and, with
// ECOptions.Direct, opens it for direct reads. A shard that cannot be
// mapped (not a file of the operating system's file system) is read
// through its own descriptor; with Direct, either failure leaves the
// shard read buffered, and directOff says why.
func (e *ECVolume) openCold(i int) {
	m, err := mapDat(e.shards[i], ECHeaderSize+e.geo.shardSize())
	if err != nil || m == nil {
		if e.opts.Direct != nil {
			e.directOff = fmt.Sprintf("shard %d cannot be mapped to ask the page cache what it holds", i)
		}
		return
	}
	e.cold[i] = m
	if e.opts.Direct == nil {
		return
	}
	d, err := openDirect(e.shards[i])
	if err != nil {
		e.directOff = fmt.Sprintf("shard %d: %v", i, err)
		return
	}
	m.direct = d
}

// loadECX reads, checks and indexes the ecx of vid.
func loadECX(ctx context.Context, fs vfs.FS, dir string, vid uint32) (ecGeometry, *index, error) {
	return loadECXPath(ctx, fs, ECIndexPath(dir, vid), vid)
}

// loadECXPath reads, checks and indexes the ecx of vid at path.
func loadECXPath(ctx context.Context, fs vfs.FS, path string, vid uint32) (ecGeometry, *index, error) {
	f, err := fs.Open(path)
	if err != nil {
		return ecGeometry{}, nil, fmt.Errorf("EC volume %d: %w", vid, err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return ecGeometry{}, nil, err
	}
	hdr := make([]byte, ECHeaderSize)
	if err := readFull(f, hdr, 0); err != nil {
		return ecGeometry{}, nil, fmt.Errorf("%s: %w: %v", path, ErrNotEC, err)
	}
	g, count, err := decodeECHeader(hdr, ecxMagic)
	if err != nil {
		return g, nil, fmt.Errorf("%s: %w", path, err)
	}
	if g.vid != vid {
		return g, nil, fmt.Errorf("%s: %w: holds volume %d", path, ErrNotEC, g.vid)
	}
	if want := ECHeaderSize + int64(count)*idxRecordSize; size != want {
		return g, nil, fmt.Errorf("%s: %w: %d bytes, %d records need %d", path, ErrNotEC, size, count, want)
	}
	ix := newIndex()
	buf := make([]byte, min(int64(count)*idxRecordSize, 4<<20))
	var prev idxEntry
	for i, pos := 0, int64(ECHeaderSize); i < int(count); {
		if err := ctx.Err(); err != nil {
			return g, nil, err
		}
		n := min(len(buf), (int(count)-i)*idxRecordSize)
		if err := readFull(f, buf[:n], pos); err != nil {
			return g, nil, fmt.Errorf("%s: %w", path, err)
		}
		for b := buf[:n]; len(b) > 0; b = b[idxRecordSize:] {
			rec, ok := decodeIdxRecord(b)
			switch {
			case !ok || rec.tombstone:
				return g, nil, needle.Corruptf("%s: record %d damaged", path, i)
			case i > 0 && (rec.key < prev.key || rec.key == prev.key && rec.size <= prev.size):
				return g, nil, needle.Corruptf("%s: record %d out of order", path, i)
			case rec.end() > g.dataSize:
				return g, nil, needle.Corruptf("%s: record %d ends at %d, past the data (%d)", path, i, rec.end(), g.dataSize)
			}
			ix.put(rec.key, rec.size, rec.off, rec.length)
			prev = rec
			i++
		}
		pos += int64(n)
	}
	return g, ix, nil
}

// openJournal opens the ecj (creating it when missing), applies its records
// and cuts a torn tail. A damaged record followed by intact ones is not a
// torn append but damage: the journal is rewritten atomically with its
// intact records only (a delete is never undone by keeping them), the
// dropped records are counted in Status().JournalDamaged for the store to
// report, and a sync with the other holders brings them back.
func (e *ECVolume) openJournal() error {
	fs := e.opts.FS
	path := ECJournalPath(e.dir, e.vid)
	if _, err := fs.Stat(path); err != nil {
		if err := vfs.WriteFileAtomic(fs, path, encodeECJHeader(e.vid, e.geo.generation)); err != nil {
			return fmt.Errorf("create journal: %w", err)
		}
	}
	recs, size, damaged, err := readJournal(fs, path, e.vid, e.geo.generation)
	if err != nil {
		return err
	}
	if damaged > 0 {
		b := encodeECJHeader(e.vid, e.geo.generation)
		for _, r := range recs {
			b = appendECJRecord(b, r)
		}
		if err := vfs.WriteFileAtomic(fs, path, b); err != nil {
			return fmt.Errorf("rewrite damaged journal: %w", err)
		}
		size = int64(len(b))
		e.journalDamaged = damaged
	}
	f, err := fs.OpenReadWrite(path)
	if err != nil {
		return err
	}
	if cur, err := f.Size(); err == nil && cur != size {
		err = f.Truncate(size)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("cut torn journal record: %w", err)
		}
	}
	for _, r := range recs {
		e.journal.add(r)
		e.mu.index.removeLive(r.key, r.size)
	}
	e.publishDigest()
	e.ecj, e.ecjSize = f, size
	return nil
}

// readJournal returns the intact records of the ecj at path, the size of
// the prefix that ends with the last intact record, and how many damaged
// records lie before it.
func readJournal(fs vfs.FS, path string, vid, generation uint32) ([]ecjRecord, int64, int, error) {
	f, err := fs.Open(path)
	if err != nil {
		return nil, 0, 0, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, 0, 0, err
	}
	b := make([]byte, size)
	if err := readFull(f, b, 0); err != nil {
		return nil, 0, 0, err
	}
	jv, jg, err := decodeECJHeader(b)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	if jv != vid || jg != generation {
		return nil, 0, 0, fmt.Errorf("%s: %w: journal of volume %d generation %d", path, ErrNotEC, jv, jg)
	}
	recs, end, damaged := parseJournalRecords(b[ecjRecordSize:])
	return recs, ecjRecordSize + end, damaged, nil
}

// openShard opens local shard i and checks its header and size against g.
// A missing shard returns (nil, nil).
func openShard(fs vfs.FS, dir string, g *ecGeometry, i int) (vfs.File, error) {
	path := ECShardPath(dir, g.vid, i)
	if _, err := fs.Stat(path); err != nil {
		return nil, nil
	}
	f, err := fs.Open(path)
	if err != nil {
		return nil, err
	}
	if err := checkShard(f, g, i); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// checkShard checks an open shard's header and size against g.
func checkShard(f vfs.File, g *ecGeometry, i int) error {
	hdr := make([]byte, ECHeaderSize)
	if err := readFull(f, hdr, 0); err != nil {
		return fmt.Errorf("%w: %v", ErrNotEC, err)
	}
	sg, idx, err := decodeECHeader(hdr, ecShardMagic)
	if err != nil {
		return err
	}
	if !sameGeometry(&sg, g) || idx != uint32(i) {
		return fmt.Errorf("%w: header of shard %d of volume %d generation %d does not match the ecx", ErrNotEC, idx, sg.vid, sg.generation)
	}
	size, err := f.Size()
	if err != nil {
		return err
	}
	if want := ECHeaderSize + g.shardSize(); size != want {
		return fmt.Errorf("%w: %d bytes, want %d", ErrNotEC, size, want)
	}
	return nil
}

// readFull reads len(p) bytes at off or fails.
func readFull(f io.ReaderAt, p []byte, off int64) error {
	got, err := f.ReadAt(p, off)
	if got < len(p) {
		if err == nil || errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: read %d of %d bytes at %d", io.ErrUnexpectedEOF, got, len(p), off)
		}
		return err
	}
	return nil
}

// Vid returns the volume's id.
func (e *ECVolume) Vid() uint32 { return e.vid }

// Superblock returns the superblock of the encoded .dat.
func (e *ECVolume) Superblock() Superblock {
	sb, _ := DecodeSuperblock(e.geo.super[:])
	return sb
}

// HoldsShard reports whether shard i is held here and was usable at open.
func (e *ECVolume) HoldsShard(i int) bool {
	return i >= 0 && i < ECShards && e.shards[i] != nil
}

// ReadShard fills p with bytes [off, off+len(p)) of the data area of local
// shard i. It is what a store serves to peers rebuilding a range.
func (e *ECVolume) ReadShard(ctx context.Context, i int, p []byte, off int64) error {
	if i < 0 || i >= ECShards {
		return fmt.Errorf("%w: shard %d out of range", ErrShardUnavailable, i)
	}
	if off < 0 || off+int64(len(p)) > e.geo.shardSize() {
		return fmt.Errorf("%w: range [%d, %d) outside the shard's %d bytes", ErrInvalid, off, off+int64(len(p)), e.geo.shardSize())
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.mu.closed {
		return ErrClosed
	}
	f := e.shards[i]
	if f == nil {
		return fmt.Errorf("%w: shard %d of volume %d is not held here", ErrShardUnavailable, i, e.vid)
	}
	if err := readFull(f, p, ECHeaderSize+off); err != nil {
		return fmt.Errorf("%w: shard %d of volume %d: %v", ErrShardUnavailable, i, e.vid, err)
	}
	return ctx.Err()
}

// How a needle's segments are read from the local shards (see
// readEntryLocked).
type shardRead uint8

const (
	readBuffered     shardRead = iota // through the page cache, without readahead: pread on the shard's mapping's descriptor (else the shard file)
	readColdBuffered                  // through the page cache, without readahead, waiting for the disk through the ring (the mapping's ReadAt): a cold needle the direct policy keeps buffered
	readDirect                        // with O_DIRECT (the shard's direct descriptor)
	readSequential                    // through the shard file, with the kernel's readahead (a stream of the whole volume)
)

// readShardLocked reads a range of shard i, locally (as how says, when
// the shard has the descriptors for it) or from the peers.
func (e *ECVolume) readShardLocked(ctx context.Context, i int, p []byte, off int64, how shardRead) error {
	var err error
	if f := e.shards[i]; f != nil {
		e.preads.Add(1)
		switch m := e.cold[i]; {
		case how == readDirect && m != nil && m.direct != nil:
			err = e.readDirect(m.direct, p, ECHeaderSize+off)
		case how == readColdBuffered && m != nil:
			err = readFull(m, p, ECHeaderSize+off)
		case how == readBuffered && m != nil:
			err = readFull(preadReader{m}, p, ECHeaderSize+off)
		default:
			err = readFull(f, p, ECHeaderSize+off)
		}
		if err == nil {
			return nil
		}
	}
	if e.opts.Peers != nil {
		if perr := e.opts.Peers.ReadShard(ctx, e.vid, i, p, off); perr == nil {
			return nil
		} else if err == nil {
			err = perr
		}
	}
	if err == nil {
		err = fmt.Errorf("%w: shard %d of volume %d", ErrShardUnavailable, i, e.vid)
	}
	return err
}

// rebuildLocked fills dst with the range of data shard seg.shard described
// by seg, rebuilt from the same range of 10 other shards of the row. Shards
// in skip are not used.
func (e *ECVolume) rebuildLocked(ctx context.Context, seg ecSegment, dst []byte, skip [ECShards]bool) error {
	cands := make([]int, 0, ECShards)
	for i := 0; i < ECShards; i++ {
		if i != seg.shard && !skip[i] {
			cands = append(cands, i)
		}
	}
	// Shards held locally first: they cost no network round trip.
	local := cands[:0:0]
	remote := cands[:0:0]
	for _, i := range cands {
		if e.shards[i] != nil {
			local = append(local, i)
		} else {
			remote = append(remote, i)
		}
	}
	cands = append(local, remote...)
	shards := make([][]byte, ECShards)
	// One allocation holds the ranges of all the shards read.
	pool := make([]byte, ECDataShards*len(dst))
	got, next := 0, 0
	var errs []error
	for got < ECDataShards && next < len(cands) {
		batch := cands[next:min(next+ECDataShards-got, len(cands))]
		next += len(batch)
		results := make([]error, len(batch))
		bufs := make([][]byte, len(batch))
		var wg sync.WaitGroup
		for k, i := range batch {
			bufs[k] = pool[(got+k)*len(dst) : (got+k+1)*len(dst)]
			if e.shards[i] != nil {
				// A local pread from the page cache costs less than a
				// goroutine; a miss falls back to the peers inside.
				results[k] = e.readShardLocked(ctx, i, bufs[k], seg.off, readBuffered)
				continue
			}
			wg.Go(func() { results[k] = e.readShardLocked(ctx, i, bufs[k], seg.off, readBuffered) })
		}
		wg.Wait()
		ok := 0
		for k, i := range batch {
			if results[k] != nil {
				errs = append(errs, results[k])
				continue
			}
			// Keep the successful reads packed at the front of the pool.
			slot := pool[(got+ok)*len(dst) : (got+ok+1)*len(dst)]
			if &slot[0] != &bufs[k][0] {
				copy(slot, bufs[k])
			}
			shards[i] = slot
			ok++
		}
		got += ok
	}
	if got < ECDataShards {
		return fmt.Errorf("%w: row %d of volume %d: %d shards readable: %w", ErrUnrecoverable, seg.row, e.vid, got, errors.Join(errs...))
	}
	shards[seg.shard] = dst[:0]
	required := make([]bool, ECShards)
	required[seg.shard] = true
	if err := e.coder.ReconstructSome(shards, required); err != nil {
		return fmt.Errorf("volume %d row %d: %w", e.vid, seg.row, err)
	}
	return nil
}

// readRangeLocked reads the stream range [off, off+len(dst)): one pread per
// block it touches on the data shard (read as how says), or a rebuild from
// other shards when that shard cannot be read or is in skip. Shards in
// skip are never read. It reports how many segments it rebuilt.
func (e *ECVolume) readRangeLocked(ctx context.Context, dst []byte, off int64, skip [ECShards]bool, how shardRead) (rebuilt int, err error) {
	var segBuf [4]ecSegment
	segs := e.geo.segments(off, len(dst), segBuf[:0])
	pos := 0
	for _, s := range segs {
		p := dst[pos : pos+s.n]
		pos += s.n
		if !skip[s.shard] {
			if err := e.readShardLocked(ctx, s.shard, p, s.off, how); err == nil {
				continue
			}
		}
		if err := e.rebuildLocked(ctx, s, p, skip); err != nil {
			return rebuilt, err
		}
		rebuilt++
	}
	return rebuilt, nil
}

// howToRead is how the needle (key, size) of n bytes, on segs, is read
// from the local shards: as a plain volume's (see direct.go), direct when
// it has MapMin bytes or more, a page of some segment is not in the page
// cache and the policy does not keep it; buffered without readahead when
// the policy keeps it; buffered otherwise (also without readahead where
// the shard is mapped). A needle with a segment on a shard not held here
// (or held without the descriptors of direct reads) is read buffered.
func (e *ECVolume) howToRead(key uint64, size needle.SizeCode, n int, segs []ecSegment) shardRead {
	how := e.coldHow(key, size, n, segs)
	switch how {
	case readDirect:
		e.directReads.Add(1)
	case readColdBuffered:
		e.coldBuffered.Add(1)
	}
	return how
}

// readDirect fills p with the bytes at off of d, a shard opened by
// vfs.OpenDirect, with one read of the range rounded out to
// vfs.DirectAlign: into a buffer of the policy's pool when one is free and
// large enough, else into an aligned buffer of its own; then copied into
// p. A short read fails (the shard is shorter than its geometry says).
func (e *ECVolume) readDirect(d vfs.File, p []byte, off int64) error {
	pool := e.opts.Direct.bufs
	lo, head, b, slot, _ := directSpan(pool, off, len(p), nil)
	if slot != nil {
		defer pool.put(slot)
	}
	got, err := d.ReadAt(b, lo)
	if err := shortDirectRead(got-head, len(p), off, err); err != nil {
		return err
	}
	copy(p, b[head:])
	return nil
}

// decodeVerified decodes buf in the volume's needle format and checks it
// is the needle (key, size).
func (e *ECVolume) decodeVerified(buf []byte, key uint64, size needle.SizeCode) (needle.Needle, error) {
	nd, err := e.format.Decode(buf)
	if err == nil {
		nd, err = verifyRead(nd, key, size)
	}
	return nd, err
}

// readEntryLocked reads and verifies the needle the index places at off
// (length units): healthy first, rebuilding what cannot be read; when the
// bytes fail verification, some shard that served them is damaged, and
// the needle is read again leaving out each shard in turn until it
// verifies (one damaged shard is always found this way; rebuilding
// tolerates it on top of up to three lost ones).
func (e *ECVolume) readEntryLocked(ctx context.Context, key uint64, size needle.SizeCode, off, length uint32, buf []byte) (needle.Needle, []byte, error) {
	n := int(length) * needle.Alignment
	buf = readBuffer(buf, n)
	e.reads.Add(1)
	start := int64(off) * needle.Alignment
	var segBuf [4]ecSegment
	segs := e.geo.segments(start, n, segBuf[:0])
	if len(segs) > 1 {
		e.straddle.Add(1)
	}
	rebuilt, err := e.readRangeLocked(ctx, buf, start, [ECShards]bool{}, e.howToRead(key, size, n, segs))
	if err != nil {
		e.lost.Add(1)
		return needle.Needle{}, buf, err
	}
	nd, derr := e.decodeVerified(buf, key, size)
	if derr != nil && needle.IsCorruption(derr) {
		var lastErr error
		for suspect := 0; suspect < ECShards && derr != nil; suspect++ {
			var skip [ECShards]bool
			skip[suspect] = true
			if _, err := e.readRangeLocked(ctx, buf, start, skip, readBuffered); err != nil {
				lastErr = err
				continue
			}
			if nd, err = e.decodeVerified(buf, key, size); err == nil {
				derr, rebuilt = nil, 1
			}
		}
		if derr != nil {
			e.lost.Add(1)
			if errors.Is(lastErr, ErrUnrecoverable) {
				return needle.Needle{}, buf, fmt.Errorf("%w (the bytes read fail verification: %v)", lastErr, derr)
			}
			return needle.Needle{}, buf, fmt.Errorf("%w (no single damaged shard explains it)", derr)
		}
	}
	if rebuilt > 0 {
		e.degraded.Add(1)
	}
	if derr != nil {
		return needle.Needle{}, buf, derr
	}
	return nd, buf, nil
}

// Read returns the live needle for (key, size) if its cookie matches, like
// Volume.Read: one pread on the data shard (two when the needle straddles a
// block boundary), or, when that shard is missing, unreadable or damaged, a
// rebuild of only the needle's byte range from 10 other shards, verified by
// the needle checksum. An error for which IsCorruption is true means the
// bytes are damaged beyond repair; ErrUnrecoverable means too few shards
// can be read.
func (e *ECVolume) Read(ctx context.Context, key, cookie uint64, size needle.SizeCode, buf []byte) (needle.Needle, []byte, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.mu.closed {
		return needle.Needle{}, buf, ErrClosed
	}
	if e.pending.Load() {
		return needle.Needle{}, buf, journalPendingError{e.vid}
	}
	off, length, ok := e.mu.index.get(key, uint32(size))
	if !ok {
		return needle.Needle{}, buf, ErrNotFound
	}
	n, buf, err := e.readEntryLocked(ctx, key, size, off, length, buf)
	if err != nil {
		return needle.Needle{}, buf, fmt.Errorf("EC volume %d: key %x size %v: %w", e.vid, key, size, err)
	}
	if n.Cookie != cookie {
		return needle.Needle{}, buf, ErrNotFound
	}
	return n, buf, nil
}

// Has reports whether a live needle exists for (key, size), without reading
// it or checking its cookie.
func (e *ECVolume) Has(key uint64, size needle.SizeCode) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	_, _, ok := e.mu.index.get(key, uint32(size))
	return ok && !e.mu.closed
}

// Locate returns where the live needle for (key, size) lies in the encoded
// .dat, without reading it or checking its cookie.
func (e *ECVolume) Locate(key uint64, size needle.SizeCode) (Entry, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	off, length, ok := e.mu.index.get(key, uint32(size))
	if !ok || e.mu.closed {
		return Entry{}, false
	}
	return Entry{Key: key, Size: size, Offset: int64(off) * needle.Alignment, Length: int(length) * needle.Alignment}, true
}

// Entries calls fn for every live needle in (key, size) order, under the
// volume's read lock: fn must not call back into the volume. Offsets are
// stream offsets (offsets in the encoded .dat).
func (e *ECVolume) Entries(fn func(Entry) bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	e.mu.index.ascend(func(key uint64, size, off, length uint32) bool {
		return fn(Entry{Key: key, Size: needle.SizeCode(size), Offset: int64(off) * 8, Length: int(length) * 8})
	})
}

// Delete journals the deletion of (key, size) — size needle.SizeAll
// deletes every size — and returns the bytes the deleted needles held, once
// the journal record is durable. A key with no live needle, or whose needle
// has another cookie, returns ErrNotFound and journals nothing. The bytes
// stay in the shards until the volume is decoded.
func (e *ECVolume) Delete(ctx context.Context, key, cookie uint64, size needle.SizeCode) (int64, error) {
	if !size.Valid() && size != needle.SizeAll {
		return 0, fmt.Errorf("%w: size code %d", ErrInvalid, size)
	}
	e.jmu.Lock()
	defer e.jmu.Unlock()
	if e.retired {
		return 0, fmt.Errorf("%w: EC volume %d was decoded into a plain volume", ErrClosed, e.vid)
	}
	e.mu.RLock()
	if e.mu.closed {
		e.mu.RUnlock()
		return 0, ErrClosed
	}
	var first [3]uint32
	found := false
	e.mu.index.sizesOf(key, func(s, off, length uint32) {
		if !found && (size == needle.SizeAll || s == uint32(size)) {
			first, found = [3]uint32{s, off, length}, true
		}
	})
	var n needle.Needle
	var err error
	if found {
		n, _, err = e.readEntryLocked(ctx, key, needle.SizeCode(first[0]), first[1], first[2], nil)
	}
	e.mu.RUnlock()
	if !found {
		return 0, ErrNotFound
	}
	// A needle that cannot be read cannot prove the cookie; deleting it is
	// still allowed, so an operator can remove what cannot be read.
	if err == nil && n.Cookie != cookie {
		return 0, ErrNotFound
	}
	if err != nil && !IsCorruption(err) && !errors.Is(err, ErrUnrecoverable) {
		return 0, fmt.Errorf("EC volume %d: %w", e.vid, err)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	rec := appendECJRecord(nil, ecjRecord{key: key, cookie: cookie, size: uint32(size)})
	if _, err := e.ecj.WriteAt(rec, e.ecjSize); err != nil {
		// Cut what may have landed, so a later append does not follow a
		// record that was never acknowledged.
		e.ecj.Truncate(e.ecjSize)
		return 0, fmt.Errorf("EC volume %d: journal delete: %w", e.vid, err)
	}
	if err := e.ecj.Sync(); err != nil {
		return 0, fmt.Errorf("EC volume %d: journal delete: %w", e.vid, err)
	}
	e.ecjSize += ecjRecordSize
	e.mu.Lock()
	e.journal.add(ecjRecord{key: key, cookie: cookie, size: uint32(size)})
	freed := e.mu.index.removeLive(key, uint32(size))
	e.mu.Unlock()
	e.publishDigest()
	return int64(freed) * needle.Alignment, nil
}

// ECStatus is a snapshot of an EC volume.
type ECStatus struct {
	Vid        uint32 `json:"vid"`
	Generation uint32 `json:"generation"`
	DataSize   int64  `json:"data_size"` // bytes of the encoded .dat
	ShardSize  int64  `json:"shard_size"`
	Images     int    `json:"images"`     // live (key, size) entries
	LiveBytes  int64  `json:"live_bytes"` // bytes of live needles
	Deletes    int64  `json:"deletes"`    // journaled deletes (distinct)
	// JournalDigest identifies the set of journaled deletes: holders
	// whose digests agree hold the same deletes.
	JournalDigest uint64 `json:"journal_digest"`
	// JournalDamaged counts the damaged journal records dropped when the
	// volume was opened: a sync with the other holders restores them.
	JournalDamaged int `json:"journal_damaged,omitempty"`
	// SyncPending is true while reads wait for the journal's first sync
	// with the other holders.
	SyncPending bool `json:"sync_pending,omitempty"`
	// Local lists the shards held here and readable at open; Damaged the
	// local shard files that were not usable, with the reason.
	Local   []int          `json:"local"`
	Damaged map[int]string `json:"damaged,omitempty"`
	// Reads counts needle reads; Preads the preads on local shards;
	// Straddling the reads whose needle crossed a block boundary;
	// Degraded the reads that rebuilt bytes; Unrecoverable the reads
	// that could not.
	Reads         int64 `json:"reads"`
	Preads        int64 `json:"preads"`
	Straddling    int64 `json:"straddling"`
	Degraded      int64 `json:"degraded"`
	Unrecoverable int64 `json:"unrecoverable"`
	// DirectReads counts the reads of cold needles whose segments were
	// read with O_DIRECT (each segment's pread counted in Preads);
	// ColdBufferedReads those of cold needles the policy read buffered
	// (see ECOptions.Direct). DirectOff says why some local shard is read
	// buffered when ECOptions.Direct asked for direct reads.
	DirectReads       int64  `json:"direct_reads,omitempty"`
	ColdBufferedReads int64  `json:"cold_buffered_reads,omitempty"`
	DirectOff         string `json:"direct_off,omitempty"`
}

// Status returns a snapshot of the volume.
func (e *ECVolume) Status() ECStatus {
	e.mu.RLock()
	images := e.mu.index.len()
	live := int64(e.mu.index.liveUnits()) * needle.Alignment
	e.mu.RUnlock()
	s := ECStatus{
		JournalDigest: e.digestSum.Load(), JournalDamaged: e.journalDamaged, SyncPending: e.pending.Load(),
		Vid: e.vid, Generation: e.geo.generation, DataSize: e.geo.dataSize,
		ShardSize: ECHeaderSize + e.geo.shardSize(), Images: images, LiveBytes: live,
		Deletes: e.deletes.Load(), Reads: e.reads.Load(), Preads: e.preads.Load(),
		Straddling: e.straddle.Load(), Degraded: e.degraded.Load(), Unrecoverable: e.lost.Load(),
		DirectReads: e.directReads.Load(), ColdBufferedReads: e.coldBuffered.Load(), DirectOff: e.directOff,
	}
	for i := range e.shards {
		if e.shards[i] != nil {
			s.Local = append(s.Local, i)
		}
		if e.shardErr[i] != nil {
			if s.Damaged == nil {
				s.Damaged = map[int]string{}
			}
			s.Damaged[i] = e.shardErr[i].Error()
		}
	}
	return s
}

// Close closes the files; reads in flight finish first.
func (e *ECVolume) Close() error {
	e.jmu.Lock()
	defer e.jmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.closed {
		return nil
	}
	e.mu.closed = true
	var err error
	for i, m := range e.cold {
		if m != nil {
			m.release()
			e.cold[i] = nil
		}
	}
	for _, f := range e.shards {
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	if cerr := e.ecj.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("EC volume %d: close: %w", e.vid, err)
	}
	return nil
}
