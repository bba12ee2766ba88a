package volume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/haybale/haybale/needle"
)

// On-disk format constants (see the package doc for the byte layouts).
// They are part of the format and never change.
const (
	// SuperblockSize is the size of the volume superblock; the first needle
	// starts right after it.
	SuperblockSize = 64
	// FormatVersion is the volume format version this package writes. It
	// reads versions 1 and 2; the version is also the needle format of
	// the volume's needles (see package needle).
	FormatVersion = needle.Version2
	// SecretSize is the size of a format-2 volume's needle secret.
	SecretSize = needle.SecretSize
	// MaxSize is the largest a volume may grow: offsets are uint32 counts
	// of 8-byte units.
	MaxSize = int64(1<<32) * 8
	// idxRecordSize is the size of the idx header and of each idx record.
	idxRecordSize = 24

	superMagic = "HAYBALEV"
	idxMagic   = "HAYIDX01"

	tombstoneBit = 1 << 31
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors about files that are not volumes or not of this version.
var (
	// ErrNotVolume is returned when a .dat file does not start with a valid
	// superblock.
	ErrNotVolume = errors.New("volume: not a haybale volume (bad superblock)")
	// ErrVersion is returned for a superblock of an unknown format version.
	ErrVersion = errors.New("volume: unsupported volume format version")
)

// Superblock is the decoded header of a volume file.
type Superblock struct {
	Version    uint32
	Vid        uint32
	Created    int64 // Unix nanoseconds
	Generation uint32
	// Secret is the needle secret of a format-2 volume (zero in format 1).
	// It is chosen once per logical volume, so every replica, compaction
	// and copy of the volume carries the same one; it is never served.
	Secret [SecretSize]byte
}

// Format returns the needle format of the volume's needles.
func (s *Superblock) Format() (needle.Format, error) {
	switch s.Version {
	case needle.Version1:
		return needle.Format1(), nil
	case needle.Version2:
		f, err := needle.NewFormat2(s.Secret[:])
		if err != nil {
			return f, fmt.Errorf("%w: %v", ErrNotVolume, err)
		}
		return f, nil
	}
	return needle.Format{}, fmt.Errorf("%w %d", ErrVersion, s.Version)
}

func (s *Superblock) encode() []byte {
	b := make([]byte, SuperblockSize)
	copy(b, superMagic)
	binary.LittleEndian.PutUint32(b[8:], s.Version)
	binary.LittleEndian.PutUint32(b[12:], s.Vid)
	binary.LittleEndian.PutUint64(b[16:], uint64(s.Created))
	binary.LittleEndian.PutUint32(b[24:], s.Generation)
	if s.Version >= needle.Version2 {
		copy(b[28:], s.Secret[:])
	}
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	return b
}

// DecodeSuperblock validates magic, then version, then checksum, then (for
// format 2) the secret, each with its own error.
func DecodeSuperblock(b []byte) (Superblock, error) {
	var s Superblock
	if len(b) < SuperblockSize || string(b[:8]) != superMagic {
		return s, ErrNotVolume
	}
	s.Version = binary.LittleEndian.Uint32(b[8:])
	if s.Version != needle.Version1 && s.Version != needle.Version2 {
		return s, fmt.Errorf("%w %d", ErrVersion, s.Version)
	}
	if crc32.Checksum(b[:60], castagnoli) != binary.LittleEndian.Uint32(b[60:]) {
		return s, fmt.Errorf("%w: checksum mismatch", ErrNotVolume)
	}
	s.Vid = binary.LittleEndian.Uint32(b[12:])
	s.Created = int64(binary.LittleEndian.Uint64(b[16:]))
	s.Generation = binary.LittleEndian.Uint32(b[24:])
	reserved := b[28:60]
	if s.Version >= needle.Version2 {
		copy(s.Secret[:], b[28:])
		if s.Secret == [SecretSize]byte{} {
			return s, fmt.Errorf("%w: format-2 superblock without a secret", ErrNotVolume)
		}
		reserved = b[36:60]
	}
	for _, c := range reserved {
		if c != 0 {
			return s, fmt.Errorf("%w: reserved bytes are not zero", ErrNotVolume)
		}
	}
	return s, nil
}

// idxEntry is one idx record: a needle's place in the volume.
type idxEntry struct {
	key       uint64
	size      uint32
	off       uint32 // 8-byte units
	length    uint32 // 8-byte units
	tombstone bool
}

func (e idxEntry) end() int64 { return (int64(e.off) + int64(e.length)) * 8 }

func appendIdxRecord(dst []byte, e idxEntry) []byte {
	var b [idxRecordSize]byte
	binary.LittleEndian.PutUint64(b[0:], e.key)
	binary.LittleEndian.PutUint32(b[8:], e.size)
	binary.LittleEndian.PutUint32(b[12:], e.off)
	l := e.length
	if e.tombstone {
		l |= tombstoneBit
	}
	binary.LittleEndian.PutUint32(b[16:], l)
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
	return append(dst, b[:]...)
}

// decodeIdxRecord decodes one idx record. It reports false for a record
// that is short, fails its CRC, or names an impossible place (length 0 or an
// offset inside the superblock).
func decodeIdxRecord(b []byte) (idxEntry, bool) {
	if len(b) < idxRecordSize {
		return idxEntry{}, false
	}
	if crc32.Checksum(b[:20], castagnoli) != binary.LittleEndian.Uint32(b[20:]) {
		return idxEntry{}, false
	}
	l := binary.LittleEndian.Uint32(b[16:])
	e := idxEntry{
		key:       binary.LittleEndian.Uint64(b[0:]),
		size:      binary.LittleEndian.Uint32(b[8:]),
		off:       binary.LittleEndian.Uint32(b[12:]),
		length:    l &^ tombstoneBit,
		tombstone: l&tombstoneBit != 0,
	}
	return e, e.length > 0 && e.off >= SuperblockSize/8
}

// encodeIdxHeader returns the idx header for a .dat of the given vid and
// compaction generation.
func encodeIdxHeader(vid, generation uint32) []byte {
	b := make([]byte, idxRecordSize)
	copy(b, idxMagic)
	binary.LittleEndian.PutUint32(b[8:], vid)
	binary.LittleEndian.PutUint32(b[12:], generation)
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
	return b
}

// decodeIdxHeader decodes an idx header; ok is false for one that is short,
// has the wrong magic, fails its CRC or has non-zero reserved bytes.
func decodeIdxHeader(b []byte) (vid, generation uint32, ok bool) {
	if len(b) < idxRecordSize || string(b[:8]) != idxMagic ||
		crc32.Checksum(b[:20], castagnoli) != binary.LittleEndian.Uint32(b[20:]) ||
		binary.LittleEndian.Uint32(b[16:]) != 0 {
		return 0, 0, false
	}
	return binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:]), true
}
