package vfs

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"unsafe"
)

// alignedBuf returns n bytes starting at an address aligned to
// DirectAlign.
func alignedBuf(n int) []byte {
	b := make([]byte, n+DirectAlign)
	at := int(-uintptr(unsafe.Pointer(&b[0])) & (DirectAlign - 1))
	return b[at : at+n]
}

// TestOpenDirect: a file of the OS file system reopened for direct reads
// reads aligned ranges exactly, a range past the end of the file in one
// short read (io.EOF), refuses writes; files of other file systems are
// refused with ErrNoDirect.
func TestOpenDirect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := Default.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, 3*DirectAlign+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDirect(f)
	if err != nil {
		t.Skipf("the temporary directory's file system refuses O_DIRECT: %v", err)
	}
	defer d.Close()
	b := alignedBuf(2 * DirectAlign)
	if n, err := d.ReadAt(b, DirectAlign); n != len(b) || err != nil || !bytes.Equal(b, data[DirectAlign:3*DirectAlign]) {
		t.Fatalf("aligned read: %d bytes, %v, equal %v", n, err, bytes.Equal(b, data[DirectAlign:3*DirectAlign]))
	}
	if n, err := d.ReadAt(b, 2*DirectAlign); n != DirectAlign+100 || !errors.Is(err, io.EOF) || !bytes.Equal(b[:n], data[2*DirectAlign:]) {
		t.Fatalf("read past the end: %d bytes, %v; want %d and io.EOF", n, err, DirectAlign+100)
	}
	if _, err := d.WriteAt(b, 0); err == nil {
		t.Fatal("a write through the direct descriptor succeeded")
	}

	m := NewMem()
	mf, err := m.Create("/f")
	if err != nil {
		t.Fatal(err)
	}
	defer mf.Close()
	if _, err := OpenDirect(mf); !errors.Is(err, ErrNoDirect) {
		t.Fatalf("MemFS file: %v, want ErrNoDirect", err)
	}
}
