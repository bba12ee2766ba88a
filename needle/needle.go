// Package needle owns haybale's on-disk needle format: encoding, decoding and
// verifying one stored image (or tombstone), and the identifiers that name
// images (size codes, content types, photo IDs and image paths).
//
// A needle is one image of one size of one photo, appended to a volume file.
// All integers are little-endian; needles start at 8-byte-aligned offsets in
// the volume and are padded to a multiple of 8 bytes.
//
//	offset  size  field
//	0       4     header magic (see Formats below)
//	4       8     cookie
//	12      8     key
//	20      4     size code (the alternate key)
//	24      1     flags: bit 0 = tombstone, bit 1 = batch continues (see below)
//	25      1     content type: 0 unknown, 1 JPEG, 2 PNG, 3 GIF, 4 WebP
//	26      2     reserved, zero
//	28      8     append time, Unix nanoseconds
//	36      4     data size N
//	40      N     data
//	40+N    4     footer magic (see Formats below)
//	44+N    8     checksum: xxhash64 of bytes [4, 40+N)
//	52+N    0..7  zero padding to the next multiple of 8
//
// The checksum covers every header field after the magic and the data, so a
// needle whose key, cookie, size code, flags or length were damaged fails
// verification just like one whose pixels were. It is also the image's
// public ETag; it does not cover the magics, so it means the same in both
// formats and is equal on every replica.
//
// Flag bit 1 ("batch continues") groups the needles of one write request: it
// is set on every needle of a batch but the last. Recovery treats a batch
// whose last needle is missing as torn and drops all of it, so a
// multi-needle write lands whole or not at all. Unknown flag bits are
// rejected, so a future format change cannot be misread silently.
//
// A tombstone is a needle with the tombstone flag, no data, and the key and
// cookie of what it deletes. Size code SizeAll deletes every size of a photo.
// A tombstone is always a batch of its own.
//
// # Formats
//
// The layout above is shared by both needle formats; they differ only in the
// magics, which are outside the checksum. A volume's superblock names its
// format (see package store/volume), and every needle of the volume uses it.
//
// Format 1 uses fixed magics: header "HAYN" (HeaderMagic), footer "NEND"
// (FooterMagic). Anyone can write bytes that look like a format-1 needle, so
// image data that holds such bytes could be taken for needles by a recovery
// that searches for the next needle after damage. Format 1 is read (and
// takes tombstones) but new volumes do not use it.
//
// Format 2 derives three magics from an 8-byte per-volume secret kept in the
// volume's superblock and never served. For counter = 0, 1, ... the 32-byte
// HMAC-SHA256, keyed with the secret, of "haybale needle magics 2" followed
// by the counter (4 bytes, little-endian) is cut into eight little-endian
// 32-bit words, and the first three words that are non-zero and differ from
// each other and from the format-1 magics become, in order,
//
//	magic        where
//	first        header magic of the first needle of each batch
//	next         header magic of every other needle of a batch
//	footer       footer magic of every needle
//
// Stored bytes therefore cannot pass for a needle of the volume unless their
// writer knows the magics (a blind guess of a header and footer magic pair
// succeeds once in 2^63 tries): recovery never indexes bytes inside another
// needle's data, whatever they contain. Raw needle bytes show the magics, so
// they, like whole volume copies, must not leave the storage tier. The two header magics also mark
// where each batch starts, so recovery can tell, after a damaged needle,
// whether the next intact needle begins a new batch or finishes the damaged
// one (Needle.BatchStart). Replicas of one volume share its secret, so their
// bytes stay identical.
//
// Decoding never panics: every length is checked before it is used, and every
// malformed input is rejected with an error for which IsCorruption is true.
package needle

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// Format constants. These are part of the on-disk format and must never
// change.
const (
	// HeaderMagic starts every format-1 needle ("HAYN" in little-endian
	// byte order).
	HeaderMagic uint32 = 0x4e594148
	// FooterMagic follows every format-1 needle's data ("NEND").
	FooterMagic uint32 = 0x444e454e
	// Version1 and Version2 are the needle format versions (see the
	// package doc); a volume's superblock carries the same number.
	Version1 = 1
	Version2 = 2
	// SecretSize is the size of a format-2 volume secret.
	SecretSize = 8
	// HeaderSize is the number of bytes before the data.
	HeaderSize = 40
	// FooterSize is the footer magic plus the checksum.
	FooterSize = 12
	// Overhead is the unpadded size of a needle with no data.
	Overhead = HeaderSize + FooterSize
	// Alignment is the alignment of needles in a volume and the unit of
	// needle offsets and lengths in the in-RAM index.
	Alignment = 8
	// MaxDataSize is the largest data a needle may hold (64 MiB). It keeps
	// a needle's padded length inside 24 bits of 8-byte units and bounds
	// the memory one read can ask for.
	MaxDataSize = 64 << 20
)

// Flag bits.
const (
	// FlagTombstone marks a needle that deletes the image(s) it names.
	FlagTombstone uint8 = 1 << 0
	// FlagBatchContinues marks every needle of a batch but the last.
	FlagBatchContinues uint8 = 1 << 1

	knownFlags = FlagTombstone | FlagBatchContinues
)

// Errors returned by decoding and verification. All of them satisfy
// IsCorruption except ErrTooLarge, which is returned when encoding.
var (
	// ErrShort is returned when the bytes end before the needle does.
	ErrShort = errors.New("needle: short needle")
	// ErrMagic is returned when the header or footer magic is wrong.
	ErrMagic = errors.New("needle: bad magic")
	// ErrChecksum is returned when the stored checksum does not match the
	// bytes.
	ErrChecksum = errors.New("needle: checksum mismatch")
	// ErrHeader is returned for a header with unknown flags, a non-zero
	// reserved field, an unknown content type, or an impossible length.
	ErrHeader = errors.New("needle: malformed header")
	// ErrMismatch is returned by Verify when an intact needle holds a
	// different key or size code than the one asked for: the index points
	// at the wrong place.
	ErrMismatch = errors.New("needle: key or size code mismatch")
	// ErrTooLarge is returned when encoding data over MaxDataSize.
	ErrTooLarge = errors.New("needle: data too large")
	// ErrSecret is returned by NewFormat2 for a secret that is not
	// SecretSize bytes or is all zeros.
	ErrSecret = errors.New("needle: bad volume secret")
)

// IsCorruption reports whether err says that stored bytes are damaged or
// are not what the index promised, whichever layer found it.
func IsCorruption(err error) bool {
	return errors.Is(err, ErrShort) || errors.Is(err, ErrMagic) ||
		errors.Is(err, ErrChecksum) || errors.Is(err, ErrHeader) ||
		errors.Is(err, ErrMismatch) || errors.Is(err, errCorruptMarker)
}

// errCorruptMarker lets other packages mark their own errors as corruption
// with Corruptf.
var errCorruptMarker = errors.New("corrupt")

// Corruptf formats an error for which IsCorruption is true.
func Corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errCorruptMarker}, args...)...)
}

// Needle is one decoded needle. Data aliases the buffer it was decoded from.
type Needle struct {
	Cookie      uint64
	Key         uint64
	Size        SizeCode
	Flags       uint8
	ContentType ContentType
	// AppendTime is when the needle was appended, in Unix nanoseconds.
	AppendTime int64
	Data       []byte
	// Checksum is the stored checksum; set by Decode and by Append.
	Checksum uint64
	// BatchStart marks the first needle of a batch. Format 2 records it
	// in the header magic (outside the checksum); format 1 does not record
	// it, and its decoder leaves it false.
	BatchStart bool
}

// IsTombstone reports whether the needle deletes rather than stores.
func (n *Needle) IsTombstone() bool { return n.Flags&FlagTombstone != 0 }

// Header is the part of a needle that precedes its data.
type Header struct {
	Cookie      uint64
	Key         uint64
	Size        SizeCode
	Flags       uint8
	ContentType ContentType
	AppendTime  int64
	DataSize    uint32
	// BatchStart: see Needle.BatchStart.
	BatchStart bool
}

// EncodedLen returns the padded length in bytes of a needle holding
// dataLen bytes of data.
func EncodedLen(dataLen int) int {
	return (Overhead + dataLen + Alignment - 1) &^ (Alignment - 1)
}

// Len returns the padded length of the needle described by h.
func (h *Header) Len() int { return EncodedLen(int(h.DataSize)) }

// Format frames the needles of one volume: it knows the magics that start
// and end them (see the package doc). A Format is a small value, safe to
// copy and to use concurrently. The zero Format is not usable: use Format1
// or NewFormat2.
type Format struct {
	version uint32
	first   uint32 // header magic of a batch's first needle (every needle in format 1)
	next    uint32 // header magic of the other needles (= first in format 1)
	footer  uint32
}

// Format1 returns the fixed-magic format of version-1 volumes.
func Format1() Format {
	return Format{version: Version1, first: HeaderMagic, next: HeaderMagic, footer: FooterMagic}
}

// format2Label is the HMAC message prefix the format-2 magics are derived
// from. It is part of the on-disk format.
const format2Label = "haybale needle magics 2"

// NewFormat2 returns the format of a version-2 volume whose superblock holds
// secret (SecretSize bytes, not all zero).
func NewFormat2(secret []byte) (Format, error) {
	if len(secret) != SecretSize {
		return Format{}, fmt.Errorf("%w: %d bytes, want %d", ErrSecret, len(secret), SecretSize)
	}
	if allZero(secret) {
		return Format{}, fmt.Errorf("%w: all zeros", ErrSecret)
	}
	var picked []uint32
	for counter := uint32(0); len(picked) < 3; counter++ {
		mac := hmac.New(sha256.New, secret)
		mac.Write([]byte(format2Label))
		mac.Write(binary.LittleEndian.AppendUint32(nil, counter))
		sum := mac.Sum(nil)
		for i := 0; i+4 <= len(sum) && len(picked) < 3; i += 4 {
			w := binary.LittleEndian.Uint32(sum[i:])
			if w != 0 && w != HeaderMagic && w != FooterMagic && !contains(picked, w) {
				picked = append(picked, w)
			}
		}
	}
	return Format{version: Version2, first: picked[0], next: picked[1], footer: picked[2]}, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func contains(ws []uint32, w uint32) bool {
	for _, x := range ws {
		if x == w {
			return true
		}
	}
	return false
}

// Version returns the format version, Version1 or Version2 (0 for the zero
// Format).
func (f Format) Version() int { return int(f.version) }

// MarksBatchStart reports whether the format records which needle starts
// each batch (format 2 does, format 1 does not).
func (f Format) MarksBatchStart() bool { return f.first != f.next }

// IsHeaderMagic reports whether b starts with one of the format's header
// magics.
func (f Format) IsHeaderMagic(b []byte) bool {
	if len(b) < 4 || f.version == 0 {
		return false
	}
	m := binary.LittleEndian.Uint32(b)
	return m == f.first || m == f.next
}

// SetBatchStart rewrites the header magic of the encoded needle at the
// start of b to say whether it starts a batch, as when a copy places it
// first in a batch. The checksum does not cover the magic, so the needle
// stays valid and its checksum unchanged. It does nothing in format 1 (or
// to fewer than 4 bytes).
func (f Format) SetBatchStart(b []byte, start bool) {
	if !f.MarksBatchStart() || len(b) < 4 {
		return
	}
	m := f.next
	if start {
		m = f.first
	}
	binary.LittleEndian.PutUint32(b, m)
}

// Append encodes n, padded, at the end of dst in format 1 and returns the
// extended slice. It is Format1().Append.
func Append(dst []byte, n *Needle) ([]byte, error) { return Format1().Append(dst, n) }

// DecodeHeader decodes a format-1 needle header. It is
// Format1().DecodeHeader.
func DecodeHeader(b []byte) (Header, error) { return Format1().DecodeHeader(b) }

// Decode decodes and verifies a format-1 needle. It is Format1().Decode.
func Decode(b []byte) (Needle, error) { return Format1().Decode(b) }

// Verify decodes a format-1 needle and checks its key and size code. It is
// Format1().Verify.
func Verify(b []byte, key uint64, size SizeCode) (Needle, error) {
	return Format1().Verify(b, key, size)
}

// errZeroFormat is returned by the methods of the zero Format.
var errZeroFormat = errors.New("needle: zero Format (use Format1 or NewFormat2)")

// Append encodes n, padded, at the end of dst and returns the extended
// slice. It sets n.Checksum. In format 2, n.BatchStart picks the header
// magic. It fails only for data over MaxDataSize or an unknown content type
// or flag.
func (f Format) Append(dst []byte, n *Needle) ([]byte, error) {
	if f.version == 0 {
		return dst, errZeroFormat
	}
	if len(n.Data) > MaxDataSize {
		return dst, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(n.Data), MaxDataSize)
	}
	if n.Flags&^knownFlags != 0 {
		return dst, fmt.Errorf("%w: unknown flags %#x", ErrHeader, n.Flags)
	}
	if !n.ContentType.Valid() {
		return dst, fmt.Errorf("%w: unknown content type %d", ErrHeader, n.ContentType)
	}
	start := len(dst)
	total := EncodedLen(len(n.Data))
	dst = grow(dst, total)
	b := dst[start : start+total]
	magic := f.next
	if n.BatchStart {
		magic = f.first
	}
	binary.LittleEndian.PutUint32(b[0:], magic)
	binary.LittleEndian.PutUint64(b[4:], n.Cookie)
	binary.LittleEndian.PutUint64(b[12:], n.Key)
	binary.LittleEndian.PutUint32(b[20:], uint32(n.Size))
	b[24] = n.Flags
	b[25] = uint8(n.ContentType)
	b[26], b[27] = 0, 0
	binary.LittleEndian.PutUint64(b[28:], uint64(n.AppendTime))
	binary.LittleEndian.PutUint32(b[36:], uint32(len(n.Data)))
	copy(b[HeaderSize:], n.Data)
	end := HeaderSize + len(n.Data)
	binary.LittleEndian.PutUint32(b[end:], f.footer)
	n.Checksum = xxhash.Sum64(b[4:end])
	binary.LittleEndian.PutUint64(b[end+4:], n.Checksum)
	clear(b[end+FooterSize:])
	return dst, nil
}

// grow extends b by n bytes, reallocating at most once.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}

// DecodeHeader decodes and sanity-checks the fixed header at the start of b.
// It checks the magic, flags, reserved bytes, content type and data size,
// but not the checksum (which needs the whole needle).
func (f Format) DecodeHeader(b []byte) (Header, error) {
	var h Header
	if f.version == 0 {
		return h, errZeroFormat
	}
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: %d bytes, header needs %d", ErrShort, len(b), HeaderSize)
	}
	m := binary.LittleEndian.Uint32(b[0:])
	if m != f.first && m != f.next {
		return h, fmt.Errorf("%w: header magic %#08x", ErrMagic, m)
	}
	h.BatchStart = m == f.first && f.first != f.next
	h.Cookie = binary.LittleEndian.Uint64(b[4:])
	h.Key = binary.LittleEndian.Uint64(b[12:])
	h.Size = SizeCode(binary.LittleEndian.Uint32(b[20:]))
	h.Flags = b[24]
	h.ContentType = ContentType(b[25])
	h.AppendTime = int64(binary.LittleEndian.Uint64(b[28:]))
	h.DataSize = binary.LittleEndian.Uint32(b[36:])
	switch {
	case h.Flags&^knownFlags != 0:
		return h, fmt.Errorf("%w: unknown flags %#x", ErrHeader, h.Flags)
	case b[26] != 0 || b[27] != 0:
		return h, fmt.Errorf("%w: reserved bytes are not zero", ErrHeader)
	case !h.ContentType.Valid():
		return h, fmt.Errorf("%w: unknown content type %d", ErrHeader, h.ContentType)
	case h.DataSize > MaxDataSize:
		return h, fmt.Errorf("%w: data size %d over the %d limit", ErrHeader, h.DataSize, MaxDataSize)
	case h.Flags&FlagTombstone != 0 && h.DataSize != 0:
		return h, fmt.Errorf("%w: tombstone with %d bytes of data", ErrHeader, h.DataSize)
	}
	return h, nil
}

// Decode decodes and verifies the needle at the start of b: magics, header
// fields and checksum. b may be longer than the needle. The returned
// needle's Data aliases b. Padding bytes are not checked: they are outside
// the checksum and never served.
func (f Format) Decode(b []byte) (Needle, error) {
	h, err := f.DecodeHeader(b)
	if err != nil {
		return Needle{}, err
	}
	end := HeaderSize + int(h.DataSize)
	if len(b) < end+FooterSize {
		return Needle{}, fmt.Errorf("%w: %d bytes, needle needs %d", ErrShort, len(b), end+FooterSize)
	}
	if m := binary.LittleEndian.Uint32(b[end:]); m != f.footer {
		return Needle{}, fmt.Errorf("%w: footer magic %#08x", ErrMagic, m)
	}
	sum := binary.LittleEndian.Uint64(b[end+4:])
	if got := xxhash.Sum64(b[4:end]); got != sum {
		return Needle{}, fmt.Errorf("%w: stored %016x, computed %016x", ErrChecksum, sum, got)
	}
	return Needle{
		Cookie:      h.Cookie,
		Key:         h.Key,
		Size:        h.Size,
		Flags:       h.Flags,
		ContentType: h.ContentType,
		AppendTime:  h.AppendTime,
		Data:        b[HeaderSize:end:end],
		Checksum:    sum,
		BatchStart:  h.BatchStart,
	}, nil
}

// Verify decodes b (see Decode) and checks that it is the needle for key
// and size. It does not check the cookie: a wrong cookie is not corruption,
// and callers answer it exactly like a missing image.
func (f Format) Verify(b []byte, key uint64, size SizeCode) (Needle, error) {
	n, err := f.Decode(b)
	if err != nil {
		return n, err
	}
	if n.Key != key || n.Size != size {
		return Needle{}, fmt.Errorf("%w: want key %x size %d, found key %x size %d",
			ErrMismatch, key, size, n.Key, n.Size)
	}
	return n, nil
}
