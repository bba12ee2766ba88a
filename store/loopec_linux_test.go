package store

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// TestLoopECColdReadsOnTheLoop: on the event loops, an image of an EC
// volume the page cache does not hold, whose needle lies in one segment
// of a shard held here or crosses a block boundary onto a second, is read
// by the loop itself through its io_uring (one read per segment, the reads
// ECVolume.Read makes; direct for the large sizes) and answered there,
// counted by haybale_store_http_loop_disk_reads_total; one on three
// segments or more is read off the loop, as before, with one read per
// segment. Every answer is the image whole, with the ETag of the needle
// ECVolume.Read answers.
func TestLoopECColdReadsOnTheLoop(t *testing.T) {
	loopRingOrSkip(t)
	dir := t.TempDir()
	var photos []*photo
	ts, ev := encodedOnLoop(t, Options{Dir: dir, DirectReads: true}, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 1 << 20, SmallBlock: 64 << 10},
		func(ts *testServer) {
			photos = ts.writeRandomPhotos(t, rand.New(rand.NewPCG(15, 2)), 1, 8, 0x200, 4000, 700)
		})
	if st := ev.Status(); len(st.Local) != volume.ECShards || st.DirectOff != "" {
		t.Fatalf("%d local shards, direct off: %q", len(st.Local), st.DirectOff)
	}
	drop := func() { dropECShards(t, dir, 1) }
	loopReads := func() float64 { return scrapeCounter(t, ts.base, "haybale_store_http_loop_disk_reads_total") }
	onLoop, straddling, offLoop, direct := 0, 0, 0, int64(0)
	for _, p := range photos {
		for i, size := range needle.PhotoSizes {
			drop()
			st0, l0 := ev.Status(), loopReads()
			resp, body := ts.do(t, http.MethodGet, needle.ImagePath(p.id, size, "jpg"), nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, p.data[i]) {
				t.Fatalf("%v: %d, %d bytes", size, resp.StatusCode, len(body))
			}
			st, l := ev.Status(), loopReads()-l0
			// Whether the loop can read it, and with how many reads: one
			// per segment, for one or two segments of local shards (asked
			// after the GET, so the direct policy's window sees the GET's
			// read first).
			c, _, ok, err := ev.StartColdRead(p.id.Key, p.id.Cookie, size, nil)
			if err != nil {
				t.Fatal(err)
			}
			segs := int64(0)
			if ok {
				segs = int64(len(c.Reads()))
				c.Abandon()
				onLoop++
				if segs == 2 {
					straddling++
				}
			} else {
				offLoop++
			}
			preads, wantLoop := st.Preads-st0.Preads, 0.0
			if ok {
				wantLoop = 1
			}
			if ok && preads != segs || !ok && preads <= volume.ECColdReadMax || st.Reads-st0.Reads != 1 || l != wantLoop || st.Degraded != st0.Degraded || (st.Straddling-st0.Straddling == 1) != (preads > 1) {
				t.Fatalf("key %x %v (loop reads %v, %d segments): %d preads, %d reads, %d straddling, %v read by the loop; want one pread per segment, 1 read, %v by the loop", p.id.Key, size, ok, segs, preads, st.Reads-st0.Reads, st.Straddling-st0.Straddling, l, wantLoop)
			}
			direct += st.DirectReads - st0.DirectReads
			// The ETag is the needle's checksum, as ECVolume.Read (the
			// path off the loop) reads it.
			nd, _, err := ev.Read(context.Background(), p.id.Key, p.id.Cookie, size, nil)
			if err != nil {
				t.Fatal(err)
			}
			if want := string(imagehttp.AppendETag(nil, nd.Checksum)); resp.Header.Get("Etag") != want {
				t.Fatalf("key %x %v: ETag %s, want %s", p.id.Key, size, resp.Header.Get("Etag"), want)
			}
		}
	}
	if onLoop == straddling || straddling == 0 || offLoop == 0 || direct == 0 {
		t.Fatalf("%d images read on the loop (%d over two segments; %d direct), %d off it: want some of each", onLoop, straddling, direct, offLoop)
	}
	t.Logf("%d images read on the loop (%d over two segments), %d off it (three segments or more)", onLoop, straddling, offLoop)
}

// TestLoopECDamagedSecondSegment: an image over two segments whose second
// segment is damaged on its shard is read by the loop, does not verify,
// and goes off the loop, where ECVolume.Read rebuilds the segment from the
// other shards: the answer is the image whole, and the loop's read is not
// counted as an answer made on the loop.
func TestLoopECDamagedSecondSegment(t *testing.T) {
	loopRingOrSkip(t)
	var photos []*photo
	ts, ev := encodedOnLoop(t, Options{Dir: t.TempDir()}, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 1 << 20, SmallBlock: 64 << 10},
		func(ts *testServer) {
			photos = ts.writeRandomPhotos(t, rand.New(rand.NewPCG(15, 2)), 1, 8, 0x200, 4000, 700)
		})
	// A needle over two segments, read buffered: its second read is of
	// the segment's bytes exactly, at their place in the shard file.
	var p *photo
	var size needle.SizeCode
	var path string
	var at int64
	for _, q := range photos {
		for _, s := range needle.PhotoSizes {
			c, _, ok, err := ev.StartColdRead(q.id.Key, q.id.Cookie, s, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				continue
			}
			if r := c.Reads(); len(r) == 2 && p == nil {
				if path, err = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", r[1].FD)); err != nil {
					t.Fatal(err)
				}
				p, size, at = q, s, r[1].Off+int64(len(r[1].Buf))/2
			}
			c.Abandon()
		}
	}
	if p == nil {
		t.Fatal("no needle over two segments")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := f.ReadAt(b[:], at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], at); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	f.Close()
	st0, l0 := ev.Status(), scrapeCounter(t, ts.base, "haybale_store_http_loop_disk_reads_total")
	resp, body := ts.do(t, http.MethodGet, needle.ImagePath(p.id, size, "jpg"), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, p.data[size]) {
		t.Fatalf("damaged second segment: %d, %d bytes", resp.StatusCode, len(body))
	}
	st, l := ev.Status(), scrapeCounter(t, ts.base, "haybale_store_http_loop_disk_reads_total")-l0
	if st.Degraded-st0.Degraded != 1 || l != 0 {
		t.Fatalf("damaged second segment: %d degraded reads, %v answered from the loop's read; want 1 and 0", st.Degraded-st0.Degraded, l)
	}
}

// BenchmarkLoopECCold serves, on the event loops, every image of an EC
// volume once per pass in a random order, cold (the shards dropped from
// the page cache before each pass), over one keep-alive connection: 60
// photos of four sizes (about 30, 60, 120 and 240 KiB), encoded with the
// default blocks (1 MiB for a volume this small, so that about a tenth of
// the needles cross a block boundary), with direct reads on. It reports
// the share of the images read by a loop (on-loop-%: the loop disk reads
// counted per GET), the volume's preads per image, and the process's CPU
// (server and the in-process client) per image.
func BenchmarkLoopECCold(b *testing.B) {
	loopRingOrSkip(b)
	dir := b.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	var photos []*photo
	ts, ev := encodedOnLoop(b, Options{Dir: dir, DirectReads: true}, &storepb.EcEncodeRequest{Vid: 1}, func(ts *testServer) {
		for k := 1; k <= 60; k++ {
			p := randomPhoto(rng, 1, uint64(k), 24<<10+rng.IntN(12<<10))
			ts.writePhoto(b, p)
			photos = append(photos, p)
		}
	})
	type image struct {
		p    *photo
		size needle.SizeCode
	}
	var images []image
	for _, p := range photos {
		for _, s := range needle.PhotoSizes {
			images = append(images, image{p, s})
		}
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.base, "http://"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReaderSize(conn, 64<<10)
	var body bytes.Buffer
	get := func(im image) {
		if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", needle.ImagePath(im.p.id, im.size, "jpg")); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		body.Reset()
		_, err = body.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body.Bytes(), im.p.data[im.size]) {
			b.Fatalf("GET: %d, %d bytes, %v", resp.StatusCode, body.Len(), err)
		}
	}
	drop := func() { dropECShards(b, dir, 1) }
	loopReads := func() float64 {
		_, page := ts.do(b, http.MethodGet, "/metrics", nil)
		for _, line := range strings.Split(string(page), "\n") {
			if v, ok := strings.CutPrefix(line, "haybale_store_http_loop_disk_reads_total "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatal(err)
				}
				return f
			}
		}
		b.Fatal("no haybale_store_http_loop_disk_reads_total in /metrics")
		return 0
	}
	cpu := func() time.Duration {
		var ru unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	var spent time.Duration
	st0, l0 := ev.Status(), loopReads()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		rng.Shuffle(len(images), func(i, j int) { images[i], images[j] = images[j], images[i] })
		drop()
		c0 := cpu()
		b.StartTimer()
		for _, im := range images {
			get(im)
		}
		b.StopTimer()
		spent += cpu() - c0
	}
	n := float64(b.N * len(images))
	st := ev.Status()
	b.ReportMetric(100*(loopReads()-l0)/n, "on-loop-%")
	b.ReportMetric(float64(st.Preads-st0.Preads)/n, "preads/image")
	b.ReportMetric(100*float64(st.Straddling-st0.Straddling)/n, "straddling-%")
	b.ReportMetric(float64(spent.Microseconds())/n, "cpu-µs/image")
}

// loopRingOrSkip skips where the system has no io_uring for the loops.
func loopRingOrSkip(tb testing.TB) {
	tb.Helper()
	r, err := vfs.NewLoopRing(1)
	if err != nil {
		tb.Skip(err)
	}
	r.Close(nil)
}

// encodedOnLoop starts a store serving on the event loops with one
// volume (1), has write fill it, seals it and erasure-codes it with req,
// and returns the server and the EC volume.
func encodedOnLoop(tb testing.TB, so Options, req *storepb.EcEncodeRequest, write func(ts *testServer)) (*testServer, *volume.ECVolume) {
	tb.Helper()
	ctx := context.Background()
	ts := startServer(tb, so, ServerOptions{EventLoop: true})
	ts.allocate(tb, 1)
	write(ts)
	if _, err := ts.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1, Reason: "full"}); err != nil {
		tb.Fatal(err)
	}
	if _, err := ts.client.EcEncode(ctx, req); err != nil {
		tb.Fatal(err)
	}
	ev, err := ts.srv.store.ECVolume(1)
	if err != nil {
		tb.Fatal(err)
	}
	return ts, ev
}

// dropECShards drops every shard of volume vid in dir from the page cache.
func dropECShards(tb testing.TB, dir string, vid uint32) {
	tb.Helper()
	for i := range volume.ECShards {
		f, err := os.Open(volume.ECShardPath(dir, vid, i))
		if err != nil {
			tb.Fatal(err)
		}
		err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
		if err != nil {
			tb.Fatal(err)
		}
	}
}
