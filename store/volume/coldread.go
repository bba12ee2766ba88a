package volume

import (
	"errors"
	"os"
	"syscall"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// Cold reads made by the caller.
//
// ReadRef waits for the disk itself, which an event loop must not do: the
// loop's TryReadRef refuses a cold needle, and the request goes to a
// goroutine that reads it with ReadRefCold. StartColdRead lets the loop
// make the read itself without waiting: it plans the read (the descriptor,
// offset and buffer the needle's range is read into: buffered through the
// mapping's descriptor, or direct into a buffer of the direct-read pool
// under the same policy as ReadRef), the loop submits it to its own
// io_uring (vfs.LoopRing), and when the completion comes, ColdRead.Finish
// verifies the needle as ReadRef does (magics, key, size, cookie,
// checksum) and answers the same Ref. Still one disk read per image.

// ColdRead is a read of a needle from the disk that its caller makes: the
// len(Buf) bytes at Off of the descriptor FD, into Buf, which the caller
// must not touch until the read is done; then Finish, or Abandon when the
// read was not made. Until then it holds the volume file open (a
// compaction's swap or Close waits for it as for a Ref).
type ColdRead struct {
	FD  int
	Off int64
	Buf []byte

	v      *Volume
	m      *datMap
	key    uint64
	cookie uint64
	size   needle.SizeCode
	start  int64 // the needle's offset in the file
	n      int   // its bytes
	head   int   // its offset in Buf
	direct bool  // read with O_DIRECT
	kept   bool  // cold, of MapMin bytes or more, read buffered by the policy
	asked  bool  // the policy was asked (direct or kept says its answer)
	slot   []byte
	buf    []byte // the caller's buffer (Buf, when buffered)
}

// StartColdRead plans the read from the disk of the live needle for (key,
// size), for a caller that makes it without waiting and then calls
// Finish: a needle of MapMin bytes or more that the policy of
// Options.Direct sends direct is read with O_DIRECT into a buffer of the
// policy's pool (or, none free, into buf, rounded out as by ReadRef);
// any other is read through the page cache into buf, grown when too
// small and returned. ok is false when the volume cannot be read so (a
// file system of no real files, or a direct file whose descriptor is not
// the system's): the caller reads with ReadRef. Errors are those of
// ReadRef (ErrNotFound, ErrClosed).
func (v *Volume) StartColdRead(key, cookie uint64, size needle.SizeCode, buf []byte) (c ColdRead, out []byte, ok bool, err error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.mu.closed {
		return ColdRead{}, buf, false, ErrClosed
	}
	off, length, found := v.mu.index.get(key, uint32(size))
	if !found {
		return ColdRead{}, buf, false, ErrNotFound
	}
	m := v.mu.dmap
	if m == nil {
		return ColdRead{}, buf, false, nil
	}
	start, n := int64(off)*needle.Alignment, int(length)*needle.Alignment
	c = ColdRead{v: v, m: m, key: key, cookie: cookie, size: size, start: start, n: n}
	if d := v.opts.Direct; d != nil && m.direct != nil && n >= MapMin && m.covers(start, n) {
		fd, isDirect := vfs.DirectFD(m.direct)
		if !isDirect {
			return ColdRead{}, buf, false, nil
		}
		c.asked = true
		if !d.direct(v.vid, key, size) {
			c.kept = true
		} else {
			c.FD, c.direct = fd, true
			c.Off, c.head, c.Buf, c.slot, buf = directSpan(d.bufs, start, n, buf)
			c.buf = buf
			m.acquire()
			return c, buf, true, nil
		}
	}
	buf = readBuffer(buf, n)
	c.FD, c.Off, c.Buf, c.buf = m.fd, start, buf, buf
	m.acquire()
	return c, buf, true, nil
}

// Finish turns the read's result (the count read, or its error, as
// pread(2) gives them) into ReadRef's answer for the needle, verified:
// the Ref and the caller's buffer (grown, as by ReadRef). A damaged needle
// returns an error for which IsCorruption is true, never its bytes. A
// read the caller's ring refused to make (EINVAL, EOPNOTSUPP, EAGAIN, as
// vfs.RingPread declines them), or
// a buffered read that came back short of the end of the file, returns
// ErrWouldBlock, having kept nothing: the caller reads the needle with
// ReadRefCold. The ColdRead is spent.
func (c *ColdRead) Finish(got int, err error) (Ref, []byte, error) {
	v, buf := c.v, c.buf
	defer c.m.release()
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EAGAIN) {
		c.giveSlotBack()
		c.undoPolicy()
		return Ref{}, buf, ErrWouldBlock
	}
	if !c.direct && err == nil && got > 0 && got < c.n {
		c.undoPolicy()
		return Ref{}, buf, ErrWouldBlock // the rest is ReadRefCold's to read
	}
	v.preads.Add(1)
	if !c.direct {
		var nd needle.Needle
		switch {
		case err != nil:
			err = &os.PathError{Op: "pread", Path: "volume file", Err: err}
		case got < c.n:
			err = needle.Corruptf("needle at %d: read %d of %d bytes", c.start, got, c.n)
		default:
			nd, err = v.format.Decode(c.Buf[:c.n])
		}
		if c.kept {
			v.coldBuffered.Add(1)
		}
		return v.checkRead(nd, buf, err, c.key, c.cookie, c.size, c.start)
	}
	v.directReads.Add(1)
	if err != nil {
		err = &os.PathError{Op: "pread", Path: "volume file", Err: err}
	} else {
		err = shortDirectRead(got-c.head, c.n, c.start, nil)
	}
	if err != nil {
		c.giveSlotBack()
		return v.checkRead(needle.Needle{}, buf, err, c.key, c.cookie, c.size, c.start)
	}
	b := c.Buf[c.head : c.head+c.n : c.head+c.n]
	d := v.opts.Direct
	var slot []byte
	switch {
	case c.slot == nil:
	case d.bufs.lend():
		slot = c.slot
	default:
		buf = readBuffer(buf, c.n)
		copy(buf, b)
		b = buf
		d.bufs.put(c.slot)
	}
	c.slot = nil
	nd, err := v.format.Decode(b)
	ref, buf, err := v.checkRead(nd, buf, err, c.key, c.cookie, c.size, c.start)
	d.lendTo(&ref, slot, err)
	return ref, buf, err
}

// Abandon ends a ColdRead whose read was not made (the caller's ring was
// full, or refused it at submission): it gives back what the read held.
// The caller then reads the needle some other way (ReadRefCold).
func (c *ColdRead) Abandon() {
	c.giveSlotBack()
	c.undoPolicy()
	c.m.release()
}

// undoPolicy takes back the policy's answer for a read not made, so that
// ReadRefCold, reading the needle instead, gets the same answer.
func (c *ColdRead) undoPolicy() {
	if c.asked {
		c.v.opts.Direct.undo(c.v.vid, c.key, c.size, c.direct)
		c.asked = false
	}
}

// giveSlotBack returns the pool's buffer the read was to go into.
func (c *ColdRead) giveSlotBack() {
	if c.slot != nil {
		c.v.opts.Direct.bufs.put(c.slot)
		c.slot = nil
	}
}
