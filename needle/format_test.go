package needle

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

var testSecret = []byte{0x5e, 0xc2, 0xe7, 0x01, 0x02, 0x03, 0x04, 0x05}

func mustFormat2(t testing.TB, secret []byte) Format {
	t.Helper()
	f, err := NewFormat2(secret)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestFormat2RoundTrip(t *testing.T) {
	f := mustFormat2(t, testSecret)
	if f.Version() != Version2 || !f.MarksBatchStart() || Format1().MarksBatchStart() {
		t.Fatalf("version %d, marks batch start %v", f.Version(), f.MarksBatchStart())
	}
	for _, start := range []bool{true, false} {
		in := sample(SizeLarge, TypeWebP, []byte("format two"))
		in.BatchStart = start
		b, err := f.Append(nil, in)
		if err != nil {
			t.Fatal(err)
		}
		out, err := f.Verify(b, in.Key, in.Size)
		if err != nil {
			t.Fatal(err)
		}
		if out.BatchStart != start || !bytes.Equal(out.Data, in.Data) || out.Checksum != in.Checksum {
			t.Fatalf("round trip: %+v", out)
		}
		if !f.IsHeaderMagic(b) || Format1().IsHeaderMagic(b) {
			t.Fatal("IsHeaderMagic disagrees with the encoder")
		}
		// Neither format reads the other's needles, nor does a volume
		// with another secret.
		if _, err := Decode(b); !errors.Is(err, ErrMagic) {
			t.Fatalf("format 1 decoded a format-2 needle: %v", err)
		}
		other := mustFormat2(t, []byte{1, 2, 3, 4, 5, 6, 7, 8})
		if _, err := other.Decode(b); !errors.Is(err, ErrMagic) {
			t.Fatalf("another secret decoded the needle: %v", err)
		}
		v1, _ := Append(nil, in)
		if _, err := f.Decode(v1); !errors.Is(err, ErrMagic) {
			t.Fatalf("format 2 decoded a format-1 needle: %v", err)
		}
	}
}

// TestChecksumSameInBothFormats: the checksum is the public ETag, so it
// must not depend on the format, the secret or the batch position.
func TestChecksumSameInBothFormats(t *testing.T) {
	n1 := sample(SizeMedium, TypeJPEG, []byte("etag"))
	b1, _ := Append(nil, n1)
	for _, start := range []bool{false, true} {
		n2 := sample(SizeMedium, TypeJPEG, []byte("etag"))
		n2.BatchStart = start
		b2, err := mustFormat2(t, testSecret).Append(nil, n2)
		if err != nil {
			t.Fatal(err)
		}
		if n1.Checksum != n2.Checksum || !bytes.Equal(b1[4:len(b1)-16], b2[4:len(b2)-16]) {
			t.Fatal("formats differ outside the magics")
		}
	}
}

func TestNewFormat2Magics(t *testing.T) {
	for _, bad := range [][]byte{nil, make([]byte, SecretSize), testSecret[:7], append(testSecret, 0)} {
		if _, err := NewFormat2(bad); !errors.Is(err, ErrSecret) {
			t.Fatalf("secret %x: %v, want ErrSecret", bad, err)
		}
	}
	seen := map[uint32]bool{}
	for i := 0; i < 200; i++ {
		secret := binary.LittleEndian.AppendUint64(nil, uint64(i)*0x9e3779b97f4a7c15+1)
		f := mustFormat2(t, secret)
		ms := []uint32{f.first, f.next, f.footer}
		for j, m := range ms {
			if m == 0 || m == HeaderMagic || m == FooterMagic {
				t.Fatalf("secret %x: magic %#x", secret, m)
			}
			for _, o := range ms[:j] {
				if o == m {
					t.Fatalf("secret %x: repeated magic %#x", secret, m)
				}
			}
		}
		seen[f.first] = true
		if g := mustFormat2(t, secret); g != f {
			t.Fatal("magics are not a function of the secret")
		}
	}
	if len(seen) < 190 {
		t.Fatalf("only %d distinct magics for 200 secrets", len(seen))
	}
	var zero Format
	if _, err := zero.Append(nil, sample(SizeThumb, TypeJPEG, nil)); err == nil {
		t.Fatal("zero Format encoded")
	}
	if _, err := zero.Decode(make([]byte, 64)); err == nil {
		t.Fatal("zero Format decoded")
	}
}

// TestGoldenFormat2 pins the format-2 encoder's output for a fixed secret:
// any change to the derivation of the magics shows here.
func TestGoldenFormat2(t *testing.T) {
	f := mustFormat2(t, testSecret)
	var b []byte
	for _, start := range []bool{true, false} {
		in := sample(SizeMedium, TypeJPEG, []byte("haybale"))
		in.BatchStart = start
		var err error
		if b, err = f.Append(b, in); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join("testdata", "golden-format2-m-jpeg.hex")
	if os.Getenv("HAYBALE_UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(path, []byte(hex.Dump(b)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.Dump(b); got != string(want) {
		t.Fatalf("format-2 encoding changed:\n%s\nwant:\n%s", got, want)
	}
}

// FuzzDecodeFormat2 checks the format-2 decoder like FuzzDecode checks
// format 1: no panics, corruption errors only, and exact re-encoding.
// Seeds live in testdata/fuzz/FuzzDecodeFormat2.
func FuzzDecodeFormat2(f *testing.F) {
	format := mustFormat2(f, testSecret)
	for _, n := range []*Needle{
		sample(SizeThumb, TypeJPEG, []byte("seed")),
		{Key: 1, Flags: FlagTombstone, Size: SizeAll, BatchStart: true},
		{Key: 2, Flags: FlagBatchContinues, Size: SizeLarge, BatchStart: true, Data: []byte("first of a batch")},
	} {
		b, _ := format.Append(nil, n)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := format.Decode(b)
		if err != nil {
			if !IsCorruption(err) {
				t.Fatalf("rejection is not a corruption error: %v", err)
			}
			return
		}
		again, err := format.Append(nil, &n)
		if err != nil {
			t.Fatalf("decoded needle does not re-encode: %v", err)
		}
		body := HeaderSize + len(n.Data) + FooterSize
		if !bytes.Equal(again[:body], b[:body]) {
			t.Fatal("re-encoding differs")
		}
	})
}
