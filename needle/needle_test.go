package needle

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func sample(size SizeCode, ct ContentType, data []byte) *Needle {
	return &Needle{
		Cookie:      0x8c3e77d2a1b0c4f5,
		Key:         0x1f4a9,
		Size:        size,
		ContentType: ct,
		AppendTime:  1_700_000_000_123_456_789,
		Data:        data,
	}
}

func TestRoundTripEverySizeAndType(t *testing.T) {
	for _, size := range []SizeCode{SizeThumb, SizeSmall, SizeMedium, SizeLarge, SizeOriginal} {
		for ct := TypeUnknown; ct <= TypeWebP; ct++ {
			for _, n := range []int{0, 1, 7, 8, 9, 4096} {
				data := bytes.Repeat([]byte{byte(size), byte(ct)}, n)[:n]
				in := sample(size, ct, data)
				b, err := Append(nil, in)
				if err != nil {
					t.Fatal(err)
				}
				if len(b) != EncodedLen(n) || len(b)%Alignment != 0 {
					t.Fatalf("len %d, want %d aligned to %d", len(b), EncodedLen(n), Alignment)
				}
				out, err := Verify(b, in.Key, size)
				if err != nil {
					t.Fatalf("size %v type %d n %d: %v", size, ct, n, err)
				}
				if out.Cookie != in.Cookie || out.ContentType != ct || out.AppendTime != in.AppendTime ||
					!bytes.Equal(out.Data, data) || out.Checksum != in.Checksum || out.IsTombstone() {
					t.Fatalf("round trip mismatch: %+v vs %+v", out, in)
				}
			}
		}
	}
}

func TestTombstone(t *testing.T) {
	in := sample(SizeAll, TypeUnknown, nil)
	in.Flags = FlagTombstone
	b, err := Append(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Decode(b)
	if err != nil || !n.IsTombstone() || n.Size != SizeAll || len(n.Data) != 0 {
		t.Fatalf("tombstone: %+v %v", n, err)
	}
	if len(b) != 56 {
		t.Fatalf("tombstone is %d bytes, want 56", len(b))
	}
}

// TestGolden pins the encoder's output: any change to the bytes it writes
// is a format change and must show here.
func TestGolden(t *testing.T) {
	in := sample(SizeMedium, TypeJPEG, []byte("haybale"))
	b, err := Append(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "golden-m-jpeg.hex")
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
		t.Fatalf("encoding changed:\n%s\nwant:\n%s", got, want)
	}
}

func TestCorruptionDetected(t *testing.T) {
	in := sample(SizeLarge, TypePNG, bytes.Repeat([]byte("pixels"), 50))
	good, err := Append(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	end := HeaderSize + len(in.Data) + FooterSize
	// Flip every bit of every byte the needle's integrity covers: each must
	// be caught.
	for i := 0; i < end; i++ {
		for bit := 0; bit < 8; bit++ {
			b := bytes.Clone(good)
			b[i] ^= 1 << bit
			_, err := Verify(b, in.Key, in.Size)
			if err == nil {
				t.Fatalf("byte %d bit %d: flip not detected", i, bit)
			}
			if !IsCorruption(err) {
				t.Fatalf("byte %d bit %d: %v is not a corruption error", i, bit, err)
			}
		}
	}
	for n := 0; n < end; n++ {
		if _, err := Decode(good[:n]); !IsCorruption(err) {
			t.Fatalf("truncated to %d: got %v", n, err)
		}
	}
}

func TestVerifyMismatch(t *testing.T) {
	b, _ := Append(nil, sample(SizeSmall, TypeGIF, []byte("x")))
	if _, err := Verify(b, 0x1f4a9, SizeLarge); !errors.Is(err, ErrMismatch) {
		t.Fatalf("size mismatch: %v", err)
	}
	if _, err := Verify(b, 0x1f4aa, SizeSmall); !errors.Is(err, ErrMismatch) {
		t.Fatalf("key mismatch: %v", err)
	}
}

func TestEncodeRejects(t *testing.T) {
	if _, err := Append(nil, &Needle{Data: make([]byte, MaxDataSize+1)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if _, err := Append(nil, &Needle{Flags: 0x80}); !errors.Is(err, ErrHeader) {
		t.Fatalf("flags: %v", err)
	}
	if _, err := Append(nil, &Needle{ContentType: 9}); !errors.Is(err, ErrHeader) {
		t.Fatalf("content type: %v", err)
	}
	dst := []byte("prefix")
	out, _ := Append(dst, sample(SizeThumb, TypeJPEG, []byte("abc")))
	if string(out[:6]) != "prefix" {
		t.Fatal("Append clobbered dst")
	}
	if _, err := Decode(out[6:]); err != nil {
		t.Fatal(err)
	}
}

func TestHeaderChecks(t *testing.T) {
	good, _ := Append(nil, sample(SizeThumb, TypeJPEG, []byte("abc")))
	cases := map[string]func(b []byte){
		"reserved":       func(b []byte) { b[26] = 1 },
		"content type":   func(b []byte) { b[25] = 200 },
		"flags":          func(b []byte) { b[24] = 0x40 },
		"huge size":      func(b []byte) { b[39] = 0xff },
		"tombstone data": func(b []byte) { b[24] = FlagTombstone },
	}
	for name, mutate := range cases {
		b := bytes.Clone(good)
		mutate(b)
		if _, err := DecodeHeader(b); !errors.Is(err, ErrHeader) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}
