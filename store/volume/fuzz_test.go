package volume

import (
	"bytes"
	"errors"
	"testing"

	"github.com/haybale/haybale/needle"
)

// FuzzDecodeSuperblock checks that decoding never panics, that every
// rejection is ErrNotVolume or ErrVersion, and that whatever decodes
// re-encodes to the same 64 bytes. Seeds live in
// testdata/fuzz/FuzzDecodeSuperblock.
func FuzzDecodeSuperblock(f *testing.F) {
	for _, sb := range []Superblock{superblockOf(needle.Version1, 3), superblockOf(needle.Version2, 7)} {
		f.Add(sb.encode())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sb, err := DecodeSuperblock(b)
		if err != nil {
			if !errors.Is(err, ErrNotVolume) && !errors.Is(err, ErrVersion) {
				t.Fatalf("rejection is neither ErrNotVolume nor ErrVersion: %v", err)
			}
			return
		}
		if !bytes.Equal(sb.encode(), b[:SuperblockSize]) {
			t.Fatal("re-encoding differs")
		}
		if _, err := sb.Format(); err != nil {
			t.Fatalf("decoded superblock has no needle format: %v", err)
		}
	})
}

// FuzzDecodeIdxHeader checks that decoding an idx header never panics and
// that an accepted header re-encodes to the same bytes. Seeds live in
// testdata/fuzz/FuzzDecodeIdxHeader.
func FuzzDecodeIdxHeader(f *testing.F) {
	f.Add(encodeIdxHeader(3, 0))
	f.Add(encodeIdxHeader(1<<31, 7))
	f.Fuzz(func(t *testing.T, b []byte) {
		vid, gen, ok := decodeIdxHeader(b)
		if !ok {
			return
		}
		if !bytes.Equal(encodeIdxHeader(vid, gen), b[:idxRecordSize]) {
			t.Fatal("re-encoding differs")
		}
	})
}

// FuzzDecodeIdxRecord checks that decoding an idx record never panics
// (short input included), that an accepted record names a possible place
// (length > 0, past the superblock) and re-encodes to the same bytes. Seeds
// live in testdata/fuzz/FuzzDecodeIdxRecord.
func FuzzDecodeIdxRecord(f *testing.F) {
	f.Add(appendIdxRecord(nil, idxEntry{key: 0x1f4a9, size: 2, off: 8, length: 12}))
	f.Add(appendIdxRecord(nil, idxEntry{key: 1, size: uint32(needle.SizeAll), off: 1 << 30, length: 7, tombstone: true}))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, ok := decodeIdxRecord(b)
		if !ok {
			return
		}
		if e.length == 0 || e.off < SuperblockSize/8 {
			t.Fatalf("accepted an impossible record %+v", e)
		}
		if !bytes.Equal(appendIdxRecord(nil, e), b[:idxRecordSize]) {
			t.Fatal("re-encoding differs")
		}
	})
}
