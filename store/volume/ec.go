package volume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/haybale/haybale/internal/vfs"
)

// EC format constants. They are part of EC format version 1.
const (
	// ECDataShards is the number of data shards of an EC volume.
	ECDataShards = 10
	// ECParityShards is the number of parity shards of an EC volume.
	ECParityShards = 4
	// ECShards is the number of shard files of an EC volume.
	ECShards = ECDataShards + ECParityShards
	// ECFormatVersion is the EC format version this package writes.
	ECFormatVersion = 1
	// ECHeaderSize is the size of the header of shard files and the ecx.
	ECHeaderSize = 128
	// DefaultECLargeBlock is the default large block size (1 GiB).
	DefaultECLargeBlock = 1 << 30
	// DefaultECSmallBlock is the default small block size (1 MiB).
	DefaultECSmallBlock = 1 << 20

	ecjRecordSize   = 24
	ecShardMagic    = "HAYECSHD"
	ecxMagic        = "HAYECIDX"
	ecjMagic        = "HAYECJNL"
	maxECBlock      = 1 << 40
	ecTmpSuffix     = ".tmp"
	ecDecodeTmpName = ".ecdecode.tmp"
)

// Errors about EC files.
var (
	// ErrNotEC is returned for a shard, ecx or ecj file whose header is not
	// a valid EC header of this vid, or whose geometry disagrees with the
	// ecx.
	ErrNotEC = errors.New("volume: not a valid EC file")
	// ErrUnrecoverable is returned when a byte range cannot be read from
	// its data shard nor rebuilt, because fewer than 10 other shards of its
	// row can be read.
	ErrUnrecoverable = errors.New("volume: EC data unrecoverable (fewer than 10 shards readable)")
	// ErrShardUnavailable is returned by a ShardReader for a shard it
	// cannot read.
	ErrShardUnavailable = errors.New("volume: EC shard unavailable")
)

// ECShardPath returns the path of shard i of EC volume vid in dir.
func ECShardPath(dir string, vid uint32, i int) string {
	return filepath.Join(dir, fmt.Sprintf("%d.ec%02d", vid, i))
}

// ECIndexPath returns the path of EC volume vid's .ecx file in dir.
func ECIndexPath(dir string, vid uint32) string {
	return filepath.Join(dir, strconv.FormatUint(uint64(vid), 10)+".ecx")
}

// ECJournalPath returns the path of EC volume vid's .ecj file in dir.
func ECJournalPath(dir string, vid uint32) string {
	return filepath.Join(dir, strconv.FormatUint(uint64(vid), 10)+".ecj")
}

// ecGeometry is what the shard and ecx headers record: which volume was
// encoded and how its stream is cut into rows.
type ecGeometry struct {
	vid        uint32
	generation uint32
	dataSize   int64 // D
	large      int64 // L
	small      int64 // S
	super      [SuperblockSize]byte
}

func (g *ecGeometry) largeRows() int64 { return g.dataSize / (ECDataShards * g.large) }

func (g *ecGeometry) smallRows() int64 {
	rest := g.dataSize - g.largeRows()*ECDataShards*g.large
	return (rest + ECDataShards*g.small - 1) / (ECDataShards * g.small)
}

// rows returns the number of rows.
func (g *ecGeometry) rows() int64 { return g.largeRows() + g.smallRows() }

// shardSize returns the size of a shard's data area.
func (g *ecGeometry) shardSize() int64 { return g.largeRows()*g.large + g.smallRows()*g.small }

// row returns the block size of row r, the stream offset of its first block
// and its offset in every shard's data area.
func (g *ecGeometry) row(r int64) (block, streamOff, shardOff int64) {
	nl := g.largeRows()
	if r < nl {
		return g.large, r * ECDataShards * g.large, r * g.large
	}
	s := r - nl
	return g.small, nl*ECDataShards*g.large + s*ECDataShards*g.small, nl*g.large + s*g.small
}

// ecSegment is the part of a stream range that lies in one data block.
type ecSegment struct {
	row   int64
	shard int   // data shard 0..9
	off   int64 // offset in the shard's data area
	n     int
}

// segments splits the stream range [off, off+n) into its per-block parts.
func (g *ecGeometry) segments(off int64, n int, dst []ecSegment) []ecSegment {
	nl := g.largeRows()
	largeEnd := nl * ECDataShards * g.large
	for n > 0 {
		var r, block, rowStream, rowShard int64
		if off < largeEnd {
			r = off / (ECDataShards * g.large)
		} else {
			r = nl + (off-largeEnd)/(ECDataShards*g.small)
		}
		block, rowStream, rowShard = g.row(r)
		in := off - rowStream
		i := in / block
		inBlock := in - i*block
		take := int(min(int64(n), block-inBlock))
		dst = append(dst, ecSegment{row: r, shard: int(i), off: rowShard + inBlock, n: take})
		off += int64(take)
		n -= take
	}
	return dst
}

// encodeECHeader encodes the header of a shard (field = shard index) or of
// the ecx (field = record count).
func encodeECHeader(magic string, g *ecGeometry, field uint32) []byte {
	b := make([]byte, ECHeaderSize)
	copy(b, magic)
	binary.LittleEndian.PutUint32(b[8:], ECFormatVersion)
	binary.LittleEndian.PutUint32(b[12:], g.vid)
	binary.LittleEndian.PutUint32(b[16:], g.generation)
	binary.LittleEndian.PutUint32(b[20:], field)
	binary.LittleEndian.PutUint64(b[24:], uint64(g.dataSize))
	binary.LittleEndian.PutUint64(b[32:], uint64(g.large))
	binary.LittleEndian.PutUint64(b[40:], uint64(g.small))
	b[48] = ECDataShards
	b[49] = ECParityShards
	copy(b[60:], g.super[:])
	binary.LittleEndian.PutUint32(b[124:], crc32.Checksum(b[:124], castagnoli))
	return b
}

// decodeECHeader validates magic, then version, then checksum, then the
// geometry, each with its own error.
func decodeECHeader(b []byte, magic string) (ecGeometry, uint32, error) {
	var g ecGeometry
	if len(b) < ECHeaderSize || string(b[:8]) != magic {
		return g, 0, fmt.Errorf("%w: bad magic", ErrNotEC)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != ECFormatVersion {
		return g, 0, fmt.Errorf("%w: EC format version %d", ErrVersion, v)
	}
	if crc32.Checksum(b[:124], castagnoli) != binary.LittleEndian.Uint32(b[124:]) {
		return g, 0, fmt.Errorf("%w: header checksum mismatch", ErrNotEC)
	}
	g.vid = binary.LittleEndian.Uint32(b[12:])
	g.generation = binary.LittleEndian.Uint32(b[16:])
	field := binary.LittleEndian.Uint32(b[20:])
	g.dataSize = int64(binary.LittleEndian.Uint64(b[24:]))
	g.large = int64(binary.LittleEndian.Uint64(b[32:]))
	g.small = int64(binary.LittleEndian.Uint64(b[40:]))
	copy(g.super[:], b[60:124])
	switch {
	case string(b[50:60]) != string(make([]byte, 10)):
		return g, 0, fmt.Errorf("%w: reserved bytes are not zero", ErrNotEC)
	case b[48] != ECDataShards || b[49] != ECParityShards:
		return g, 0, fmt.Errorf("%w: %d+%d shards, want %d+%d", ErrNotEC, b[48], b[49], ECDataShards, ECParityShards)
	case g.small <= 0 || g.large < g.small || g.large > maxECBlock:
		return g, 0, fmt.Errorf("%w: block sizes %d and %d", ErrNotEC, g.large, g.small)
	case g.dataSize < SuperblockSize || g.dataSize > MaxSize:
		return g, 0, fmt.Errorf("%w: data size %d", ErrNotEC, g.dataSize)
	}
	sb, err := DecodeSuperblock(g.super[:])
	if err != nil {
		return g, 0, fmt.Errorf("%w: superblock copy: %v", ErrNotEC, err)
	}
	if sb.Vid != g.vid || sb.Generation != g.generation {
		return g, 0, fmt.Errorf("%w: superblock copy names volume %d generation %d", ErrNotEC, sb.Vid, sb.Generation)
	}
	return g, field, nil
}

// sameGeometry reports whether two headers describe the same shard set.
func sameGeometry(a, b *ecGeometry) bool {
	return a.vid == b.vid && a.generation == b.generation && a.dataSize == b.dataSize &&
		a.large == b.large && a.small == b.small && a.super == b.super
}

func encodeECJHeader(vid, generation uint32) []byte {
	b := make([]byte, ecjRecordSize)
	copy(b, ecjMagic)
	binary.LittleEndian.PutUint32(b[8:], ECFormatVersion)
	binary.LittleEndian.PutUint32(b[12:], vid)
	binary.LittleEndian.PutUint32(b[16:], generation)
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
	return b
}

func decodeECJHeader(b []byte) (vid, generation uint32, err error) {
	if len(b) < ecjRecordSize || string(b[:8]) != ecjMagic {
		return 0, 0, fmt.Errorf("%w: journal: bad magic", ErrNotEC)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != ECFormatVersion {
		return 0, 0, fmt.Errorf("%w: journal: EC format version %d", ErrVersion, v)
	}
	if crc32.Checksum(b[:20], castagnoli) != binary.LittleEndian.Uint32(b[20:]) {
		return 0, 0, fmt.Errorf("%w: journal: header checksum mismatch", ErrNotEC)
	}
	return binary.LittleEndian.Uint32(b[12:]), binary.LittleEndian.Uint32(b[16:]), nil
}

// ecjRecord is one journaled delete.
type ecjRecord struct {
	key    uint64
	cookie uint64
	size   uint32
}

func appendECJRecord(dst []byte, r ecjRecord) []byte {
	var b [ecjRecordSize]byte
	binary.LittleEndian.PutUint64(b[0:], r.key)
	binary.LittleEndian.PutUint64(b[8:], r.cookie)
	binary.LittleEndian.PutUint32(b[16:], r.size)
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
	return append(dst, b[:]...)
}

func decodeECJRecord(b []byte) (ecjRecord, bool) {
	if len(b) < ecjRecordSize || crc32.Checksum(b[:20], castagnoli) != binary.LittleEndian.Uint32(b[20:]) {
		return ecjRecord{}, false
	}
	return ecjRecord{
		key:    binary.LittleEndian.Uint64(b[0:]),
		cookie: binary.LittleEndian.Uint64(b[8:]),
		size:   binary.LittleEndian.Uint32(b[16:]),
	}, true
}

// ECVolumesIn returns the vids, in order, that have EC files (an ecx or
// shards) in dir.
func ECVolumesIn(fs vfs.FS, dir string) ([]uint32, error) {
	if fs == nil {
		fs = vfs.Default
	}
	names, err := fs.List(dir)
	if err != nil {
		return nil, err
	}
	var vids []uint32
	for _, name := range names {
		base, ext, ok := strings.Cut(name, ".")
		if !ok || !(ext == "ecx" || ext == "ecj" || len(ext) == 4 && strings.HasPrefix(ext, "ec") && ext[2] >= '0' && ext[2] <= '9' && ext[3] >= '0' && ext[3] <= '9') {
			continue
		}
		n, err := strconv.ParseUint(base, 10, 32)
		if err != nil || strconv.FormatUint(n, 10) != base {
			continue
		}
		if len(vids) == 0 || vids[len(vids)-1] != uint32(n) {
			vids = append(vids, uint32(n))
		}
	}
	slices.Sort(vids)
	return slices.Compact(vids), nil
}
