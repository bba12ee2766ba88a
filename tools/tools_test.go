package tools

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// imageData derives an image's bytes from its key and size.
func imageData(key uint64, size needle.SizeCode, n int) []byte {
	r := rand.New(rand.NewPCG(key, uint64(size)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// buildVolume writes photos into volume 7 in dir, deleting every second
// one, and returns the keys still live.
func buildVolume(t testing.TB, dir string, photos int, bytesPerImage int) []uint64 {
	t.Helper()
	ctx := context.Background()
	v, err := volume.Create(ctx, dir, 7, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var live []uint64
	for k := uint64(1); k <= uint64(photos); k++ {
		var ns []*needle.Needle
		for _, s := range needle.PhotoSizes {
			ns = append(ns, &needle.Needle{Key: k, Cookie: k * 7, Size: s, ContentType: needle.TypeJPEG, Data: imageData(k, s, bytesPerImage+int(k%13))})
		}
		if _, err := v.Write(ctx, ns); err != nil {
			t.Fatal(err)
		}
		if k%2 == 0 {
			if _, err := v.Delete(ctx, k, k*7, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
		} else {
			live = append(live, k)
		}
	}
	return live
}

func checkLive(t testing.TB, dir string, live []uint64, bytesPerImage int) {
	t.Helper()
	v, err := volume.Open(context.Background(), dir, 7, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, k := range live {
		for _, s := range needle.PhotoSizes {
			n, _, err := v.Read(k, k*7, s, nil)
			if err != nil {
				t.Fatalf("key %d size %v: %v", k, s, err)
			}
			if !bytes.Equal(n.Data, imageData(k, s, bytesPerImage+int(k%13))) {
				t.Fatalf("key %d size %v: bytes differ", k, s)
			}
		}
	}
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyReportsDamage(t *testing.T) {
	dir := t.TempDir()
	buildVolume(t, dir, 20, 500)
	path := volume.DatPath(dir, 7)
	var out bytes.Buffer
	rep, err := Verify(context.Background(), path, Output{W: &out})
	if err != nil || !strings.Contains(out.String(), "result:   ok") || rep.Live != 40 {
		t.Fatalf("clean verify: %v\n%s", err, out.String())
	}
	// Flip a bit in the middle of the file and tear the tail.
	b, _ := os.ReadFile(path)
	flip := int64(len(b) / 2)
	b[flip] ^= 0x20
	b = b[:len(b)-30]
	os.WriteFile(path, b, 0o644)
	out.Reset()
	rep, err = Verify(context.Background(), path, Output{W: &out})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged verify: %v", err)
	}
	if len(rep.Corrupt) != 1 || rep.Corrupt[0].Start > flip || rep.Corrupt[0].End <= flip || rep.TornTail == nil {
		t.Fatalf("report %+v", rep)
	}
	if !strings.Contains(out.String(), "CORRUPT:") || !strings.Contains(out.String(), "TORN TAIL:") {
		t.Fatalf("output does not name the damage:\n%s", out.String())
	}
	out.Reset()
	if _, err := Verify(context.Background(), path, Output{W: &out, JSON: true}); !errors.Is(err, ErrCorrupt) {
		t.Fatal(err)
	}
	var js volume.FileReport
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || len(js.Corrupt) != 1 {
		t.Fatalf("json output: %v\n%s", err, out.String())
	}
}

func TestCompactHalvesAndKeepsBytes(t *testing.T) {
	dir := t.TempDir()
	live := buildVolume(t, dir, 200, 2000)
	path := volume.DatPath(dir, 7)
	before, _ := os.Stat(path)
	var prog bytes.Buffer
	res, err := CompactFile(context.Background(), path, Output{W: io.Discard, Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(path)
	ratio := float64(after.Size()) / float64(before.Size())
	t.Logf("%d -> %d bytes (%.2f)", before.Size(), after.Size(), ratio)
	if ratio < 0.45 || ratio > 0.55 || res.Reclaimed != before.Size()-after.Size() {
		t.Fatalf("compacted to %.2f of the size after deleting half", ratio)
	}
	if !strings.Contains(prog.String(), "100%") {
		t.Fatalf("no progress lines:\n%s", prog.String())
	}
	checkLive(t, dir, live, 2000)
}

func TestReindexDumpExport(t *testing.T) {
	dir := t.TempDir()
	live := buildVolume(t, dir, 10, 300)
	path := volume.DatPath(dir, 7)
	idx := volume.IdxPath(dir, 7)
	want, _ := os.ReadFile(idx)
	os.Remove(idx)
	var out bytes.Buffer
	if res, err := Reindex(context.Background(), path, Output{W: &out}); err != nil || res.Records != 45 {
		t.Fatalf("reindex: %+v %v", res, err)
	}
	if got, _ := os.ReadFile(idx); !bytes.Equal(got, want) {
		t.Fatal("reindexed idx differs from the store's")
	}

	out.Reset()
	if err := Dump(context.Background(), path, Output{W: &out, JSON: true}); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&out)
	var lines, liveLines, tombs int
	for sc.Scan() {
		var r DumpRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		lines++
		if r.Live {
			liveLines++
		}
		if r.Tombstone {
			tombs++
		}
	}
	if lines != 45 || liveLines != 20 || tombs != 5 {
		t.Fatalf("dump: %d lines, %d live, %d tombstones", lines, liveLines, tombs)
	}

	exp := filepath.Join(t.TempDir(), "out")
	res, err := Export(context.Background(), path, exp, Output{W: io.Discard})
	if err != nil || res.Images != 20 {
		t.Fatalf("export: %+v %v", res, err)
	}
	for _, k := range live {
		for _, s := range needle.PhotoSizes {
			name := ExportName(needle.PhotoID{Vid: 7, Key: k, Cookie: k * 7}, s, needle.TypeJPEG)
			b, err := os.ReadFile(filepath.Join(exp, name))
			if err != nil || !bytes.Equal(b, imageData(k, s, 300+int(k%13))) {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	var tarBuf bytes.Buffer
	if _, err := ExportTar(context.Background(), path, &tarBuf, Output{W: io.Discard}); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&tarBuf)
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(h.Name, ".jpg") || h.Size == 0 {
			t.Fatalf("tar entry %+v", h)
		}
		n++
	}
	if n != 20 {
		t.Fatalf("%d tar entries", n)
	}
}

const compactChildEnv = "HAYBALE_TOOLS_COMPACT_CHILD"

// TestCompactKill9 kills an offline compaction (a child process) at random
// moments: the volume always opens complete, with every live image
// bit-exact, and a later compaction finishes the job.
func TestCompactKill9(t *testing.T) {
	if os.Getenv(compactChildEnv) != "" {
		t.Skip("running as the compaction child")
	}
	dir := t.TempDir()
	const bytesPerImage = 6000
	live := buildVolume(t, dir, 1500, bytesPerImage)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	for cycle := 0; cycle < 5; cycle++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCompactChild$")
		cmd.Env = append(os.Environ(), compactChildEnv+"="+volume.DatPath(dir, 7))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(r.IntN(150)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		checkLive(t, dir, live, bytesPerImage)
	}
	if _, err := CompactFile(context.Background(), volume.DatPath(dir, 7), Output{W: io.Discard}); err != nil {
		t.Fatal(err)
	}
	checkLive(t, dir, live, bytesPerImage)
	rep, err := volume.InspectFile(context.Background(), volume.DatPath(dir, 7), volume.InspectOptions{})
	if err != nil || rep.Dead != 0 || !rep.Healthy() {
		t.Fatalf("after the final compaction: %+v %v", rep, err)
	}
}

// TestCompactChild is TestCompactKill9's child; it does nothing in a
// normal run.
func TestCompactChild(t *testing.T) {
	path := os.Getenv(compactChildEnv)
	if path == "" {
		t.Skip("only runs as TestCompactKill9's child")
	}
	for {
		if _, err := CompactFile(context.Background(), path, Output{W: io.Discard}); err != nil {
			t.Fatal(err)
		}
	}
}
