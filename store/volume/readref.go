package volume

import (
	"errors"
	"fmt"
	"io"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// The zero-copy read path.
//
// Read copies a needle out of the page cache into the caller's buffer (one
// pread), hashes it there, and the server copies it once more into the
// socket. ReadRef, with Options.Pins (verified mappings, Linux only),
// serves a needle of PinMin bytes or more whose pages are all in the page
// cache from a read-only mapping of the .dat instead: it verifies the
// needle (magics, key, size, cookie, checksum) where it lies in the page
// cache, through a mapping of that needle's own pages (its verified
// mapping, see pins_linux.go), and hands back the needle's place in the
// file, from which a server sends it with sendfile(2) or writes it
// straight from the volume's mapping. A later read of the needle is
// answered without hashing while every page of its verified mapping is
// still present.
//
// A Mapped Ref always carries that proof: it holds the verified mapping it
// was answered from, and Ref.StillVerified says, at any later moment,
// whether the page cache still holds the very pages that were verified
// (a server asks it before every send of the bytes that does not follow
// the read at once: after a full socket, behind earlier answers, or off
// the goroutine that read). The kernel reads the file's pages again when
// it sends them; were they reclaimed and read again from the disk in
// between, the bytes that left would be unverified.
//
// Every other read is one pread into the caller's buffer, verified there:
// a needle not wholly resident (that reads exactly its pages in one
// request, where faults on the mapping would read it a page at a time;
// the mapping is MADV_RANDOM, see mapDat), one under PinMin (or under
// MapMin while the verified mappings are full, see Pins.hasRoom), one
// whose verified mapping another read is verifying at the moment, one
// that could not be given a mapping (vm.max_map_count, or as many
// verified mappings mapped as Pins allows, most of them held by answers
// not yet sent, see liveCap), and every needle
// of a volume without Options.Pins (turned off, /proc/self/pagemap
// unusable, or not Linux): such a volume never serves from its mapping,
// and its answers are written from memory, never with sendfile. Either
// way a read costs at most one disk read.

// MapMin is the smallest needle (header, data and footer, padded) read
// with O_DIRECT when it is not in the page cache (Options.Direct); ReadRef
// asks whether a needle of MapMin bytes or more is resident (mincore) for
// that policy. With Options.Pins a needle under MapMin takes a verified
// mapping only while the cache has room (see Pins.hasRoom).
const MapMin = 32 << 10

// PinMin is the smallest needle that ReadRef serves from the mapping with
// Options.Pins (through a verified mapping of its own); smaller ones, and
// every needle without Options.Pins, cost one pread. A needle under MapMin
// not all in the page cache is read with a buffered pread.
const PinMin = 4 << 10

// mapMin is the smallest needle whose residency v asks about: PinMin with
// verified mappings (which serve it from the mapping when resident),
// MapMin without (which only the direct-read policy asks about).
func (v *Volume) mapMin() int {
	if v.opts.Pins != nil {
		return PinMin
	}
	return MapMin
}

// Ref is a verified needle returned by ReadRef. When Mapped is true its
// Data aliases the volume's file mapping and stays valid until Release,
// and the Ref holds the verified mapping (see pins_linux.go) that proves
// those bytes, which StillVerified asks; when Lent is true it aliases a
// buffer of the direct-read pool, also valid until Release; otherwise it
// aliases the buffer ReadRef returned. Release must be called once the
// needle's bytes are no longer used (it is a no-op for a needle read into
// the caller's buffer); a Ref must not be copied after use begins.
type Ref struct {
	Needle needle.Needle
	m      *datMap
	off    int64 // offset of Needle.Data in the file, when mapped

	// pin is the verified mapping a Mapped Ref was answered from, held
	// (its holders counts the Ref) until Release, and seq the even value
	// of its seq at which its present pages were the verified ones.
	pins *Pins
	pin  *pin
	seq  uint64

	// slot is the direct-read buffer Needle.Data lies in, lent by the
	// pool of direct (which the Ref keeps alive: the pool is unmapped
	// when its DirectReads is collected), when Lent.
	slot   []byte
	direct *DirectReads
}

// Mapped reports whether the needle's bytes are those of the file mapping
// (and the page cache) rather than a copy in the caller's buffer. A
// Mapped Ref always holds a verified mapping (only a volume with
// Options.Pins returns one).
func (r *Ref) Mapped() bool { return r.m != nil }

// StillVerified reports whether the needle's bytes, as a send would read
// them now, are still those ReadRef verified. A Ref whose bytes are in
// memory (read into the caller's buffer, or Lent) always is. A Mapped
// Ref is when the seq of its verified mapping is still the one at which
// ReadRef found (or made) its pages verified, and /proc/self/pagemap
// reports every page of that mapping present (an error asking is false):
// a page of the page cache mapped there cannot leave the page cache
// without first being unmapped from it, and comes back only through a
// fault on that mapping, which only a verification makes (and which
// changes seq), so those pages, which the file's mapping and sendfile
// read, are still the ones hashed. False means the pages may have been
// read again from the disk since: the bytes must not be sent. It never
// waits for the disk and costs one PAGEMAP_SCAN ioctl (a pread of
// /proc/self/pagemap on kernels before 6.7) for a Mapped Ref, nothing
// otherwise. It must not be asked after Release; it is safe to ask from
// any goroutine while the Ref is held.
//
// Its limit: true speaks of the moment it was asked. A send asks it
// first, then the kernel reads the pages; a page reclaimed and read again
// from the disk in between (the time of one system call) goes out
// unproven. CopyOut proves after its copy, and has no such window. And a
// verification trusts a page that the kernel's fault-around mapped again
// after the hash had passed it (see "What the proof does not cover" in
// pins_linux.go).
func (r *Ref) StillVerified() bool {
	if r.m == nil {
		return true
	}
	return r.pin != nil && r.pin.stillVerified(r.seq)
}

// CopyOut copies the data of a Mapped Ref from the file's mapping into
// buf (grown when too small, see ReadBufferClass, and returned), then
// asks StillVerified, and ends the Ref's use of the mapping: the Ref
// then holds its bytes in memory (Mapped is false, Needle.Data aliases
// the returned buffer). It is for a server that writes the bytes later
// than it can prove them (fasthttp writes a body after its handler
// returns). The proof follows the copy: every page of the verified
// mapping present after the copy, with no verification between, means
// that none of them left the page cache while it was copied, so the
// copy holds the verified bytes, which once in memory cannot change and
// need no hash. (Asked before the copy instead, a page could leave
// between the question and the copy, which would read it again from the
// disk.) A Ref that is not Mapped is left as it is and buf returned. An
// error (the pages are no longer the verified ones, or a fault paging
// them in) releases the Ref; its bytes must not be served.
func (r *Ref) CopyOut(buf []byte) ([]byte, error) {
	if r.m == nil {
		return buf, nil
	}
	buf = readBuffer(buf, len(r.Needle.Data))
	if err := copyMapped(buf, r.Needle.Data, r.off); err != nil {
		r.Release()
		r.Needle.Data = nil
		return buf, fmt.Errorf("volume: copy of a mapped needle: %w", err)
	}
	if afterCopyOut != nil {
		afterCopyOut(r)
	}
	if !r.StillVerified() {
		r.Release()
		r.Needle.Data = nil
		return buf, errNotVerified
	}
	r.Release()
	r.Needle.Data = buf
	return buf, nil
}

// afterCopyOut, when set, is called by CopyOut between its copy and its
// proof. It is for tests only (nil otherwise), which take a verified
// mapping's pages away there to check that the proof follows the copy.
var afterCopyOut func(*Ref)

// errNotVerified is CopyOut's error for a Ref whose pages may have been
// read again from the disk since they were verified.
var errNotVerified = errors.New("volume: the mapped needle's pages are no longer those verified")

// Source returns the descriptor and offset of the needle's data in the
// volume file, for sendfile(2); ok is false when the needle was read into
// a buffer. The descriptor belongs to the Ref: it stays open until Release
// and must not be closed or have its file offset used (it is shared with
// other readers; use positional calls only). Before every send that does
// not follow the read at once, ask StillVerified.
func (r *Ref) Source() (fd int, off int64, ok bool) {
	if r.m == nil {
		return -1, 0, false
	}
	return r.m.fd, r.off, true
}

// Lent reports whether the needle's bytes lie in a buffer of the volume's
// direct-read pool (a cold needle read with O_DIRECT and not copied out),
// which Release gives back.
func (r *Ref) Lent() bool { return r.slot != nil }

// Release ends the Ref's use of the volume file's mapping and of its
// verified mapping, or gives back the direct-read buffer it was lent.
// Calling it again, or on a Ref read into the caller's buffer, does
// nothing.
func (r *Ref) Release() {
	if r.pin != nil {
		r.pins.release(r.pin)
		r.pins, r.pin = nil, nil
	}
	if r.m != nil {
		r.m.release()
		r.m = nil
	}
	if r.slot != nil {
		r.direct.bufs.giveBack(r.slot)
		r.slot, r.direct = nil, nil
	}
}

// ReadRef returns the live needle for (key, size) if its cookie matches,
// verified as by Read (or, with Options.Pins, verified before and not
// reloaded from the disk since). With Options.Pins, a needle of PinMin
// bytes or more wholly in the page cache costs no pread and no copy
// (Mapped is true, and StillVerified proves its bytes until Release); any
// other costs exactly one pread into buf (grown when too small and
// returned, as by Read). With Options.Direct, a needle of MapMin bytes or
// more not wholly in the page cache is read with O_DIRECT instead,
// unless the policy keeps it (see direct.go): into a buffer of the
// policy's pool, where it is verified and which the Ref is lent (Lent is
// true, buf is returned as it was given) or, with half the pool lent,
// from which it is copied into buf, as by Read; or, with no buffer of the
// pool free, into buf, which then holds the needle's range rounded out to
// vfs.DirectAlign, with Data inside it. A damaged
// needle returns an error for which IsCorruption is true, never its bytes.
func (v *Volume) ReadRef(key, cookie uint64, size needle.SizeCode, buf []byte) (Ref, []byte, error) {
	return v.readRef(key, cookie, size, buf, modeWait)
}

// ErrWouldBlock is returned by TryReadRef for a needle it cannot read
// without waiting for the disk.
var ErrWouldBlock = errors.New("volume: the read would wait for the disk")

// TryReadRef is ReadRef for a caller that must not wait for the disk (an
// event loop): it returns ErrWouldBlock, having read nothing, where
// ReadRef would wait for a page not in the page cache, or read with
// O_DIRECT. A needle in the page cache is read as by ReadRef: from the
// mapping, or with one pread that asks the kernel not to wait
// (preadv2(2) with RWF_NOWAIT); when that pread finds a page missing,
// the kernel starts reading the needle's pages, which the caller's read
// after the refusal (ReadRefCold, or its own through StartColdRead) then
// waits for, so the needle is still read from the disk once.
// A volume on a file system of no real files (which never waits) reads as
// by ReadRef.
func (v *Volume) TryReadRef(key, cookie uint64, size needle.SizeCode, buf []byte) (Ref, []byte, error) {
	return v.readRef(key, cookie, size, buf, modeTry)
}

// ReadRefCold is ReadRef for a caller whose TryReadRef of the same needle
// has just returned ErrWouldBlock (an event loop that hands the request
// to a goroutine): a buffered read then waits for the disk at once, where
// ReadRef would first try once more without waiting (preadv2 with
// RWF_NOWAIT), a system call that would only be refused again. The
// needle is still read from the disk once, and verified as by ReadRef;
// found in the page cache after all, it is read as by ReadRef.
func (v *Volume) ReadRefCold(key, cookie uint64, size needle.SizeCode, buf []byte) (Ref, []byte, error) {
	return v.readRef(key, cookie, size, buf, modeCold)
}

// readMode is how readRef may read a needle not in the page cache.
type readMode uint8

const (
	modeWait readMode = iota // ReadRef: wait for the disk
	modeTry                  // TryReadRef: never wait; ErrWouldBlock
	modeCold                 // ReadRefCold: wait, without trying not to first
)

// readRef is ReadRef, TryReadRef or ReadRefCold, by mode.
func (v *Volume) readRef(key, cookie uint64, size needle.SizeCode, buf []byte, mode readMode) (Ref, []byte, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.mu.closed {
		return Ref{}, buf, ErrClosed
	}
	off, length, ok := v.mu.index.get(key, uint32(size))
	if !ok {
		return Ref{}, buf, ErrNotFound
	}
	start, n := int64(off)*needle.Alignment, int(length)*needle.Alignment
	m := v.mu.dmap
	// cold: the page cache, asked about the needle, lacks a page of it.
	cold := false
	if m != nil && n >= v.mapMin() && m.covers(start, n) {
		if ps := v.opts.Pins; ps != nil {
			ref, ok, notAll, err := v.readPinned(ps, m, key, cookie, size, start, n)
			if ok {
				return ref, buf, err
			}
			// One pread, into buf: of a needle not all resident (or,
			// rarely, a fault: an I/O error paging the range in, which a
			// read reports as an error), direct or buffered (buffered
			// under MapMin); or, buffered, of one resident that has no
			// verified mapping to answer from.
			cold = notAll && n >= MapMin
		} else {
			// Without verified mappings every needle is read into buf
			// (a Ref is Mapped only with a verified mapping's proof);
			// the page cache is asked only whether it is cold, for the
			// direct-read policy and to skip the RWF_NOWAIT try.
			cold = !m.resident(start, n)
		}
	}
	if mode == modeTry {
		switch {
		case cold && m.direct != nil:
			return Ref{}, buf, ErrWouldBlock
		case m != nil:
			nd, got, err := v.readFromLocked(nowaitReader{m}, off, length, buf)
			if errors.Is(err, ErrWouldBlock) {
				return Ref{}, got, err
			}
			v.preads.Add(1)
			return v.checkRead(nd, got, err, key, cookie, size, start)
		default:
			if _, ok := vfs.OSFile(v.dat); ok {
				return Ref{}, buf, ErrWouldBlock // a file that could not be mapped
			}
		}
	}
	v.preads.Add(1)
	if cold && m.direct != nil {
		if d := v.opts.Direct; d.direct(v.vid, key, size) {
			v.directReads.Add(1)
			nd, buf, slot, err := v.readDirectLocked(m.direct, off, length, buf, true)
			ref, buf, err := v.checkRead(nd, buf, err, key, cookie, size, start)
			d.lendTo(&ref, slot, err)
			return ref, buf, err
		}
		v.coldBuffered.Add(1)
	}
	nd, buf, err := v.readFromLocked(v.bufferedReader(m, cold || mode == modeCold), off, length, buf)
	return v.checkRead(nd, buf, err, key, cookie, size, start)
}

// bufferedReader is what readRef reads a needle through the page cache
// with: the mapping's descriptor, which reads no more than the needle's
// pages (see mapDat), or the volume's own file where there is no mapping.
// With cold (mincore found a page missing, or the caller's own try was
// just refused) the read goes to the disk without a RWF_NOWAIT try first
// (see coldReader).
func (v *Volume) bufferedReader(m *datMap, cold bool) io.ReaderAt {
	switch {
	case m == nil:
		return v.dat
	case cold:
		return coldReader{m}
	}
	return m
}

// checkRead turns what a pread of the needle for (key, size) at start
// decoded into ReadRef's answer. The caller holds v.mu shared.
func (v *Volume) checkRead(nd needle.Needle, buf []byte, err error, key, cookie uint64, size needle.SizeCode, start int64) (Ref, []byte, error) {
	if err != nil {
		return Ref{}, buf, fmt.Errorf("volume %d: key %x size %v: %w", v.vid, key, size, err)
	}
	if nd, err = verifyRead(nd, key, size); err != nil {
		return Ref{}, buf, fmt.Errorf("volume %d at offset %d: %w", v.vid, start, err)
	}
	if nd.Cookie != cookie {
		return Ref{}, buf, ErrNotFound
	}
	return Ref{Needle: nd}, buf, nil
}

// mapCurrent maps dat, a .dat of tail bytes, for ReadRef, or returns nil
// when it cannot be mapped (a file system of no real files, or a failed
// mmap): the volume then reads with pread, which is correct, only slower.
func (v *Volume) mapCurrent(dat vfs.File, tail int64) *datMap {
	m, err := mapDat(dat, max(v.opts.SizeLimit, tail))
	if err != nil || m == nil {
		if v.opts.Direct != nil {
			why := "the volume file cannot be mapped to ask the page cache what it holds"
			v.directOff.Store(&why)
		}
		return nil
	}
	if v.opts.Direct != nil {
		d, err := openDirect(dat)
		if err != nil {
			why := err.Error()
			v.directOff.Store(&why)
		} else {
			m.direct = d
			v.directOff.Store(nil)
		}
	}
	return m
}

// openDirect opens a .dat for direct reads; a variable so that tests can
// make a file system refuse them.
var openDirect = vfs.OpenDirect
