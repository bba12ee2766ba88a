package volume

import (
	"bytes"
	"testing"

	"github.com/haybale/haybale/needle"
)

// A read that outgrows the caller's buffer allocates one rounded up to
// ReadBufferClass, which then serves every needle of that class without a
// new allocation, still with one pread each.
func TestReadBufferGrowsToClass(t *testing.T) {
	for _, tc := range []struct {
		name string
		read func(v *Volume, n *needle.Needle, buf []byte) ([]byte, []byte, error)
	}{
		{"Read", func(v *Volume, n *needle.Needle, buf []byte) ([]byte, []byte, error) {
			got, buf, err := v.Read(n.Key, n.Cookie, n.Size, buf)
			return got.Data, buf, err
		}},
		{"ReadRef", func(v *Volume, n *needle.Needle, buf []byte) ([]byte, []byte, error) {
			ref, buf, err := v.ReadRef(n.Key, n.Cookie, n.Size, buf)
			defer ref.Release()
			return ref.Needle.Data, buf, err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := create(t, memFS(t), 9, Options{})
			defer v.Close()
			// Data lengths whose padded needles are not multiples of
			// ReadBufferClass, the first the largest of its class.
			lengths := []int{5000, 4500, 100, 4999, 6000, 9000}
			var ns []*needle.Needle
			for i, l := range lengths {
				n := &needle.Needle{Key: uint64(i + 1), Cookie: 7, Size: needle.SizeSmall, ContentType: needle.TypeJPEG,
					Data: bytes.Repeat([]byte{byte(i + 1)}, l)}
				mustWrite(t, v, []*needle.Needle{n})
				ns = append(ns, n)
			}
			var buf []byte
			for i, n := range ns {
				prev := buf
				data, got, err := tc.read(v, n, buf)
				if err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				if !bytes.Equal(data, n.Data) {
					t.Fatalf("read %d: wrong bytes", i)
				}
				grew := prev == nil || cap(got) > cap(prev)
				if want := (len(got) + ReadBufferClass - 1) / ReadBufferClass * ReadBufferClass; grew && cap(got) != want {
					t.Fatalf("read %d: %d bytes read into a new buffer of capacity %d, want %d (the length rounded up to %d)",
						i, len(got), cap(got), want, ReadBufferClass)
				}
				if i > 0 && i < 5 && grew {
					t.Fatalf("read %d (%d data bytes) allocated a buffer of %d; the first read's of %d fits it",
						i, len(n.Data), cap(got), cap(prev))
				}
				if i == 5 && !grew {
					t.Fatalf("read %d: a needle larger than the buffer's class reused it", i)
				}
				if cap(got) > cap(buf) {
					buf = got[:0]
				}
			}
		})
	}
}
