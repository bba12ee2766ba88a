package volume

import (
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// Cold reads of EC volumes made by the caller (see coldread.go for plain
// volumes).
//
// ECVolume.Read waits for the disk, which an event loop must not do.
// StartColdRead plans the one read of a needle that lies in one segment
// of a local shard, as Read would make it (buffered through the shard's
// POSIX_FADV_RANDOM descriptor, or direct under ECOptions.Direct's
// policy, see howToRead); the caller submits it to its own io_uring and
// ECColdRead.Finish verifies the needle as Read does. Anything else (a
// needle straddling two segments, a shard not held here or not mapped, a
// journal sync pending, a read that fails, comes back short or does not
// verify) is left to Read, which makes the same reads and, where a shard
// fails, rebuilds the range from the others.

// ECColdRead is a read of an EC needle's one shard segment that its caller
// makes: the len(Buf) bytes at Off of the descriptor FD, into Buf, which
// the caller must not touch until the read is done; then Finish, or
// Abandon when the read was not made. Until then it holds the shard's
// descriptors open.
type ECColdRead struct {
	FD  int
	Off int64
	Buf []byte

	e      *ECVolume
	m      *datMap
	key    uint64
	cookie uint64
	size   needle.SizeCode
	start  int64 // the needle's offset in the encoded volume
	n      int   // its bytes
	head   int   // its offset in Buf
	how    shardRead
	slot   []byte // the direct-read pool's buffer Buf is in, if any
	buf    []byte // the caller's buffer (Buf, when buffered)
}

// StartColdRead plans the read from the disk of the live needle for (key,
// size), for a caller that makes it without waiting and then calls
// Finish: the needle's bytes on its one local shard segment, read as Read
// reads them (direct into a buffer of the policy's pool, or into buf
// rounded out, when ECOptions.Direct sends it direct; else buffered into
// buf, grown when too small and returned). ok is false, having taken
// nothing, when Read must read it instead: the needle straddles two
// segments (two reads), its shard is not held here or not mapped, a
// direct descriptor is not the system's, or reads wait for a journal
// sync. Errors are those of Read (ErrNotFound, ErrClosed).
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
	if len(segs) != 1 {
		return ECColdRead{}, buf, false, nil
	}
	s := segs[0]
	m := e.cold[s.shard]
	if m == nil {
		return ECColdRead{}, buf, false, nil
	}
	c = ECColdRead{e: e, m: m, key: key, cookie: cookie, size: size, start: start, n: n}
	at := ECHeaderSize + s.off
	fd := -1
	if m.direct != nil {
		var isDirect bool
		if fd, isDirect = vfs.DirectFD(m.direct); !isDirect {
			return ECColdRead{}, buf, false, nil
		}
	}
	c.how = e.coldHow(key, size, n, s)
	if c.how == readDirect {
		c.FD = fd
		c.Off, c.head, c.Buf, c.slot, buf = directSpan(e.opts.Direct.bufs, at, n, buf)
		c.buf = buf
		m.acquire()
		return c, buf, true, nil
	}
	buf = readBuffer(buf, n)
	c.FD, c.Off, c.Buf, c.buf = m.fd, at, buf, buf
	m.acquire()
	return c, buf, true, nil
}

// coldHow is howToRead for a needle of n bytes on the one segment s of a
// mapped local shard, deciding without counting (Finish counts the read
// it made). Asking the policy records the needle: a read not made after
// all takes the answer back (undoPolicy).
func (e *ECVolume) coldHow(key uint64, size needle.SizeCode, n int, s ecSegment) shardRead {
	m := e.cold[s.shard]
	switch {
	case e.opts.Direct == nil || n < MapMin || m.direct == nil || m.resident(ECHeaderSize+s.off, s.n):
		return readBuffered
	case e.opts.Direct.direct(e.vid, key, size):
		return readDirect
	default:
		return readColdBuffered
	}
}

// Finish turns the read's result (the count read, or its error, as
// pread(2) gives them) into Read's answer for the needle, verified: the
// needle and the caller's buffer (grown, as by Read), the needle's Data
// in it. A read that failed, came back short or whose bytes do not verify
// returns ErrWouldBlock, having kept nothing, as does a read the caller's
// ring refused to make: the caller reads the needle with Read, which
// finds the damaged or unreadable shard and rebuilds the range. A needle
// whose cookie does not match is ErrNotFound. The ECColdRead is spent.
func (c *ECColdRead) Finish(got int, err error) (needle.Needle, []byte, error) {
	e, buf := c.e, c.buf
	defer c.m.release()
	defer c.giveSlotBack()
	if err != nil || got-c.head < c.n {
		c.undoPolicy()
		return needle.Needle{}, buf, ErrWouldBlock
	}
	b := c.Buf[c.head : c.head+c.n]
	if c.how == readDirect {
		buf = readBuffer(buf, c.n)
		copy(buf, b)
		b = buf
	}
	nd, derr := e.decodeVerified(b, c.key, c.size)
	if derr != nil {
		c.undoPolicy()
		return needle.Needle{}, buf, ErrWouldBlock
	}
	e.reads.Add(1)
	e.preads.Add(1)
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

// Abandon ends an ECColdRead whose read was not made (the caller's ring
// was full, or refused it at submission): it gives back what the read
// held. The caller then reads the needle with Read.
func (c *ECColdRead) Abandon() {
	c.giveSlotBack()
	c.undoPolicy()
	c.m.release()
}

// undoPolicy takes back the direct-read policy's answer for a read not
// made (or whose bytes Read must read again), so that Read, reading the
// needle instead, gets the same answer.
func (c *ECColdRead) undoPolicy() {
	if c.how == readDirect || c.how == readColdBuffered {
		c.e.opts.Direct.undo(c.e.vid, c.key, c.size, c.how == readDirect)
		c.how = readBuffered
	}
}

// giveSlotBack returns the pool's buffer the read was to go into.
func (c *ECColdRead) giveSlotBack() {
	if c.slot != nil {
		c.e.opts.Direct.bufs.put(c.slot)
		c.slot = nil
	}
}
