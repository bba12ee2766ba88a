package volume

import (
	"errors"
	"fmt"
	"io"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// scanChunk is how much of the volume a Scanner reads at a time.
const scanChunk = 4 << 20

// Scanner reads the needles of a volume file in order, with large
// sequential reads. It is what recovery, idx rebuilds, verification and
// compaction use; the read path never does.
//
// A Scanner is not safe for concurrent use.
type Scanner struct {
	f        vfs.File
	format   needle.Format
	end      int64
	buf      []byte // holds file bytes [bufOff, bufOff+len(buf))
	bufOff   int64
	pos      int64
	needle   needle.Needle
	length   int
	needleAt int64
}

// NewScanner returns a scanner of f's needles, framed in format, from
// offset start (which must be 8-byte aligned) up to end.
func NewScanner(f vfs.File, format needle.Format, start, end int64) *Scanner {
	return &Scanner{f: f, format: format, end: end, pos: start, bufOff: start}
}

// window returns file bytes [off, off+n), or fewer when the region ends
// first. It fails only on an I/O error.
func (s *Scanner) window(off int64, n int) ([]byte, error) {
	if off+int64(n) > s.end {
		n = int(max(s.end-off, 0))
	}
	if off >= s.bufOff && off+int64(n) <= s.bufOff+int64(len(s.buf)) {
		return s.buf[off-s.bufOff : off-s.bufOff+int64(n)], nil
	}
	want := max(n, scanChunk)
	if off+int64(want) > s.end {
		want = int(s.end - off)
	}
	if cap(s.buf) < want {
		s.buf = make([]byte, want)
	}
	s.buf = s.buf[:want]
	got, err := s.f.ReadAt(s.buf, off)
	s.buf = s.buf[:got]
	s.bufOff = off
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if got < n {
		n = got
	}
	return s.buf[:n], nil
}

// Next decodes the needle at the current position. It returns io.EOF at the
// end of the region, an error for which needle.IsCorruption is true for a
// damaged, torn or foreign needle (the position does not move), and other
// errors for I/O failures.
func (s *Scanner) Next() (needle.Needle, error) {
	if s.pos >= s.end {
		return needle.Needle{}, io.EOF
	}
	hdr, err := s.window(s.pos, needle.HeaderSize)
	if err != nil {
		return needle.Needle{}, err
	}
	h, err := s.format.DecodeHeader(hdr)
	if err != nil {
		return needle.Needle{}, err
	}
	length := h.Len()
	b, err := s.window(s.pos, length)
	if err != nil {
		return needle.Needle{}, err
	}
	if len(b) < length {
		return needle.Needle{}, fmt.Errorf("%w: needle at %d needs %d bytes, %d remain", needle.ErrShort, s.pos, length, len(b))
	}
	n, err := s.format.Decode(b)
	if err != nil {
		return needle.Needle{}, err
	}
	s.needle, s.length, s.needleAt = n, length, s.pos
	s.pos += int64(length)
	return n, nil
}

// Offset returns the offset of the needle Next returned last.
func (s *Scanner) Offset() int64 { return s.needleAt }

// Len returns the padded length of the needle Next returned last.
func (s *Scanner) Len() int { return s.length }

// Pos returns the offset Next will decode from.
func (s *Scanner) Pos() int64 { return s.pos }

// headerChainEnd follows needle headers from off as long as they decode,
// without checking checksums, and returns the offset where the chain
// reaches to and the flags of its last header. It stops at limit, at the
// first header that does not decode, or after maxHeaders headers; ok is
// false when no header decoded.
func (s *Scanner) headerChainEnd(off, limit int64) (end int64, flags uint8, ok bool, err error) {
	const maxHeaders = 1 << 16
	end = off
	for i := 0; i < maxHeaders && end < limit; i++ {
		b, err := s.window(end, needle.HeaderSize)
		if err != nil {
			return end, flags, ok, err
		}
		h, herr := s.format.DecodeHeader(b)
		if herr != nil {
			break
		}
		end += int64(h.Len())
		flags, ok = h.Flags, true
	}
	return end, flags, ok, nil
}

// Resync searches forward from the current position (skipping at least 8
// bytes) for the next offset where a whole, valid needle starts, and moves
// there. It reports false, leaving the position unchanged, when no valid
// needle follows before the end of the region. In a format-2 volume only
// the store can write bytes that pass for a needle (see package needle), so
// Resync never lands inside another needle's data.
func (s *Scanner) Resync() (bool, error) {
	start := s.pos
	for off := start + needle.Alignment; off+needle.Overhead <= s.end; off += needle.Alignment {
		b, err := s.window(off, 4)
		if err != nil {
			return false, err
		}
		if !s.format.IsHeaderMagic(b) {
			continue
		}
		s.pos = off
		if _, err := s.Next(); err == nil {
			s.pos = off
			return true, nil
		} else if !needle.IsCorruption(err) {
			s.pos = start
			return false, err
		}
	}
	s.pos = start
	return false, nil
}
