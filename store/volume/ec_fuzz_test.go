package volume

import (
	"bytes"
	"context"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
)

func ecSeedGeometry() ecGeometry {
	g := ecGeometry{vid: 7, generation: 1, dataSize: 100_000, large: 4096, small: 512}
	copy(g.super[:], (&Superblock{Version: FormatVersion, Vid: 7, Generation: 1, Created: 42}).encode())
	return g
}

// FuzzECHeader checks that decoding a shard or ecx header never panics,
// that what it accepts re-encodes to the same bytes, and that the geometry
// it accepts maps every stream range inside the shards.
func FuzzECHeader(f *testing.F) {
	g := ecSeedGeometry()
	f.Add(encodeECHeader(ecShardMagic, &g, 3), uint64(5000), uint16(900))
	g.large, g.small, g.dataSize = 1<<30, 1<<20, 32<<30
	f.Add(encodeECHeader(ecShardMagic, &g, 13), uint64(1<<34), uint16(65535))
	f.Fuzz(func(t *testing.T, b []byte, off uint64, n uint16) {
		g, field, err := decodeECHeader(b, ecShardMagic)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeECHeader(ecShardMagic, &g, field), b[:ECHeaderSize]) {
			t.Fatal("accepted header does not re-encode to its bytes")
		}
		start := int64(off % uint64(g.dataSize))
		length := int(min(int64(n), g.dataSize-start))
		total := 0
		for _, s := range g.segments(start, length, nil) {
			if s.shard < 0 || s.shard >= ECDataShards || s.off < 0 || s.off+int64(s.n) > g.shardSize() || s.n <= 0 {
				t.Fatalf("segment %+v outside the shards (%d bytes)", s, g.shardSize())
			}
			total += s.n
		}
		if total != length {
			t.Fatalf("segments cover %d bytes of %d", total, length)
		}
	})
}

// FuzzECFiles feeds arbitrary bytes as an ecx and as a journal: loading
// them never panics, and what loads is consistent.
func FuzzECFiles(f *testing.F) {
	g := ecSeedGeometry()
	ecx := encodeECHeader(ecxMagic, &g, 2)
	ecx = appendIdxRecord(ecx, idxEntry{key: 1, size: 0, off: 8, length: 10})
	ecx = appendIdxRecord(ecx, idxEntry{key: 1, size: 1, off: 18, length: 30})
	ecj := encodeECJHeader(7, 1)
	ecj = appendECJRecord(ecj, ecjRecord{key: 1, cookie: 9, size: 0})
	f.Add(ecx, ecj)
	f.Add(ecx[:ECHeaderSize], append(ecj, 1, 2, 3))
	f.Fuzz(func(t *testing.T, ecx, ecj []byte) {
		fs := vfs.NewMem()
		fs.MkdirAll("/d", 0o755)
		for path, b := range map[string][]byte{ECIndexPath("/d", 7): ecx, ECJournalPath("/d", 7): ecj} {
			fl, _ := fs.Create(path)
			fl.WriteAt(b, 0)
			fl.Close()
		}
		if g, ix, err := loadECX(context.Background(), fs, "/d", 7); err == nil {
			prev := idxEntry{}
			ix.ascend(func(key uint64, size, off, length uint32) bool {
				e := idxEntry{key: key, size: size, off: off, length: length}
				if e.end() > g.dataSize || (key == prev.key && size <= prev.size && prev.length != 0) {
					t.Fatalf("loaded entry %+v after %+v, data size %d", e, prev, g.dataSize)
				}
				prev = e
				return true
			})
		}
		if recs, size, damaged, err := readJournal(fs, ECJournalPath("/d", 7), 7, 1); err == nil {
			if size != int64(ecjRecordSize*(len(recs)+damaged+1)) || size > int64(len(ecj)) {
				t.Fatalf("journal: %d records, %d damaged, intact size %d of %d bytes", len(recs), damaged, size, len(ecj))
			}
		}
	})
}
