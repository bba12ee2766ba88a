package volume

import (
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// Cold reads of EC volumes made by the caller (see coldread.go for plain
// volumes).
//
// ECVolume.Read waits for the disk, which an event loop must not do.
// StartColdRead plans the reads of a needle whose segments (one, or two
// when it crosses a block boundary) lie on local shards, as Read would
// make them: one aligned read per segment, buffered through the shard's
// POSIX_FADV_RANDOM descriptor, or direct under ECOptions.Direct's policy
// (see howToRead). The caller submits them to its own io_uring and
// ECColdRead.Finish verifies the needle, joined, as Read does. Anything
// else (a needle over more than ECColdReadMax segments, a segment on a
// shard not held here or not mapped, a journal sync pending, a read that
// fails, comes back short or does not verify) is left to Read, which
// makes the same reads and, where a shard fails, rebuilds the range from
// the others.

// ECColdReadMax is the most reads an ECColdRead makes: a needle over more
// segments (only in the small-block rows, for a needle larger than a
// small block) is left to Read.
const ECColdReadMax = 2

// ECShardRead is one read of an ECColdRead: the len(Buf) bytes at Off of
// the descriptor FD, into Buf.
type ECShardRead struct {
	FD  int
	Off int64
	Buf []byte
}

// ReadResult is what one read of an ECColdRead returned, as pread(2)
// gives it: the count read, or the read's error.
type ReadResult struct {
	N   int
	Err error
}

// ECColdRead is the reads of an EC needle's shard segments that its
// caller makes (Reads: one per segment, in the needle's order), and then
// Finish, or Abandon when the reads were not made. Until then it holds
// the shards' descriptors open.
type ECColdRead struct {
	e      *ECVolume
	key    uint64
	cookie uint64
	size   needle.SizeCode
	n      int // the needle's bytes
	how    shardRead
	buf    []byte // the caller's buffer (the reads' own, when buffered)
	nparts int
	reads  [ECColdReadMax]ECShardRead // Reads'
	parts  [ECColdReadMax]ecColdPart
}

// ecColdPart is what an ECColdRead keeps of the read of one segment
// (reads[i] for parts[i]).
type ecColdPart struct {
	m    *datMap // the segment's shard, acquired
	head int     // the segment's first byte in the read's Buf
	n    int     // the segment's bytes
	slot []byte  // the direct-read pool's buffer the read's Buf is in, if any
}

// Reads returns the reads to make, one per segment of the needle, in its
// order (a slice of c). The caller must not touch their buffers until
// they are done.
func (c *ECColdRead) Reads() []ECShardRead { return c.reads[:c.nparts:c.nparts] }

// StartColdRead plans the reads from the disk of the live needle for
// (key, size), for a caller that makes them without waiting and then
// calls Finish: one read per segment of the needle (two when it crosses a
// block boundary), each on its local shard, read as Read reads them
// (direct into a buffer of the policy's pool, or one rounded out for
// itself, when ECOptions.Direct sends the needle direct; else buffered
// into buf, grown when too small and returned, each segment at its place
// in the needle). ok is false, having taken nothing, when Read must read
// it instead: the needle lies on more than ECColdReadMax segments, one of
// its shards is not held here or not mapped, a direct descriptor is not
// the system's, or reads wait for a journal sync. Errors are those of
// Read (ErrNotFound, ErrClosed).
func (e *ECVolume) StartColdRead(key, cookie uint64, size needle.SizeCode, buf []byte) (c ECColdRead, out []byte, ok bool, err error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.mu.closed {
		return ECColdRead{}, buf, false, ErrClosed
	}
	if e.pending.Load() {
		return ECColdRead{}, buf, false, nil
	}
	off, length, found := e.mu.index.get(key, uint32(size))
	if !found {
		return ECColdRead{}, buf, false, ErrNotFound
	}
	start, n := int64(off)*needle.Alignment, int(length)*needle.Alignment
	var segBuf [4]ecSegment
	segs := e.geo.segments(start, n, segBuf[:0])
	if len(segs) > ECColdReadMax {
		return ECColdRead{}, buf, false, nil
	}
	var fds [ECColdReadMax]int
	for i, s := range segs {
		m := e.cold[s.shard]
		if m == nil {
			return ECColdRead{}, buf, false, nil
		}
		fds[i] = m.fd
		if m.direct != nil {
			var isDirect bool
			if fds[i], isDirect = vfs.DirectFD(m.direct); !isDirect {
				return ECColdRead{}, buf, false, nil
			}
		}
	}
	c = ECColdRead{e: e, key: key, cookie: cookie, size: size, n: n, nparts: len(segs)}
	c.how = e.coldHow(key, size, n, segs)
	if c.how != readDirect {
		buf = readBuffer(buf, n)
	}
	pos := 0
	for i, s := range segs {
		p, r := &c.parts[i], &c.reads[i]
		p.m, p.n = e.cold[s.shard], s.n
		at := ECHeaderSize + s.off
		if c.how == readDirect {
			// As readDirect: the segment's range rounded out to
			// vfs.DirectAlign, into a buffer of the pool when one is
			// free; else the first into buf, the second into one of
			// its own (buf holds the needle joined in the end).
			var b []byte
			if i == 0 {
				r.Off, p.head, b, p.slot, buf = directSpan(e.opts.Direct.bufs, at, s.n, buf)
			} else {
				r.Off, p.head, b, p.slot, _ = directSpan(e.opts.Direct.bufs, at, s.n, nil)
			}
			r.FD, r.Buf = fds[i], b
		} else {
			*r = ECShardRead{FD: p.m.fd, Off: at, Buf: buf[pos : pos+s.n]}
		}
		pos += s.n
		p.m.acquire()
	}
	c.buf = buf
	return c, buf, true, nil
}

// coldHow is howToRead without counting the answer (the loop's Finish
// counts the reads it made). Asking the policy records the needle: reads
// not made after all take the answer back (undoPolicy).
func (e *ECVolume) coldHow(key uint64, size needle.SizeCode, n int, segs []ecSegment) shardRead {
	if e.opts.Direct == nil || n < MapMin {
		return readBuffered
	}
	cold := false
	for _, s := range segs {
		m := e.cold[s.shard]
		if m == nil || m.direct == nil {
			return readBuffered
		}
		if !cold && !m.resident(ECHeaderSize+s.off, s.n) {
			cold = true
		}
	}
	switch {
	case !cold:
		return readBuffered
	case e.opts.Direct.direct(e.vid, key, size):
		return readDirect
	default:
		return readColdBuffered
	}
}

// Finish turns the reads' results (one per read of Reads, in its order,
// as pread(2) gives them) into Read's answer for the needle, joined and
// verified: the needle and the caller's buffer (grown, as by Read), the
// needle's Data in it. A read that failed, came back short or whose bytes
// do not verify returns ErrWouldBlock, having kept nothing, as does a
// read the caller's ring refused to make (its error in its result, or no
// result for it): the caller reads the needle with Read, which finds the
// damaged or unreadable shard and rebuilds the range. A needle whose
// cookie does not match is ErrNotFound. The ECColdRead is spent.
func (c *ECColdRead) Finish(res []ReadResult) (needle.Needle, []byte, error) {
	e, buf := c.e, c.buf
	defer c.release()
	for i := range c.nparts {
		p := &c.parts[i]
		if i >= len(res) || res[i].Err != nil || res[i].N-p.head < p.n {
			c.undoPolicy()
			return needle.Needle{}, buf, ErrWouldBlock
		}
	}
	if c.how == readDirect {
		// Join the segments in buf, the first first: it may lie in buf
		// itself, ahead of where it goes (copy moves it), and the second
		// never does.
		buf = readBuffer(buf, c.n)
		pos := 0
		for i := range c.nparts {
			p := &c.parts[i]
			pos += copy(buf[pos:], c.reads[i].Buf[p.head:p.head+p.n])
		}
	}
	nd, derr := e.decodeVerified(buf[:c.n], c.key, c.size)
	if derr != nil {
		c.undoPolicy()
		return needle.Needle{}, buf, ErrWouldBlock
	}
	e.reads.Add(1)
	e.preads.Add(int64(c.nparts))
	if c.nparts > 1 {
		e.straddle.Add(1)
	}
	switch c.how {
	case readDirect:
		e.directReads.Add(1)
	case readColdBuffered:
		e.coldBuffered.Add(1)
	}
	if nd.Cookie != c.cookie {
		return needle.Needle{}, buf, ErrNotFound
	}
	return nd, buf, nil
}

// Abandon ends an ECColdRead whose reads were not made (the caller's ring
// was full, or refused them at submission): it gives back what the reads
// held. The caller then reads the needle with Read.
func (c *ECColdRead) Abandon() {
	c.undoPolicy()
	c.release()
}

// undoPolicy takes back the direct-read policy's answer for reads not
// made (or whose bytes Read must read again), so that Read, reading the
// needle instead, gets the same answer.
func (c *ECColdRead) undoPolicy() {
	if c.how == readDirect || c.how == readColdBuffered {
		c.e.opts.Direct.undo(c.e.vid, c.key, c.size, c.how == readDirect)
		c.how = readBuffered
	}
}

// release gives back the pool's buffers the reads went into and the
// shards' descriptors.
func (c *ECColdRead) release() {
	for i := range c.nparts {
		p := &c.parts[i]
		if p.slot != nil {
			c.e.opts.Direct.bufs.put(p.slot)
			p.slot = nil
		}
		if p.m != nil {
			p.m.release()
			p.m = nil
		}
	}
}
