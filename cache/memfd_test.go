//go:build linux

package cache

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc/rpctest"
	"github.com/haybale/haybale/internal/serve"
	"github.com/haybale/haybale/needle"
)

// newTestArena returns an arena of 1 GiB of extent (the smallest) taking
// images of 64 KiB or more.
func newTestArena(t *testing.T) *arena {
	t.Helper()
	a, err := newArena(1<<20, DefaultMemfdMin)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// filled returns n bytes of b.
func filled(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// TestArenaClasses checks the size classes: page-aligned power-of-two
// slots, the smallest that holds the image.
func TestArenaClasses(t *testing.T) {
	a := newTestArena(t)
	page := 1 << a.pageShift
	for _, c := range []struct{ n, slot int }{
		{1, page}, {page, page}, {page + 1, 2 * page}, {64 << 10, 64 << 10}, {400 << 10, 512 << 10}, {1 << 30, 1 << 30},
	} {
		class, ok := a.classOf(c.n)
		if !ok || page<<class != c.slot {
			t.Errorf("an image of %d bytes: class %d (%d bytes, ok %v), want a slot of %d bytes", c.n, class, page<<class, ok, c.slot)
		}
	}
	if _, ok := a.classOf(1<<30 + 1); ok {
		t.Error("an image over 1 GiB got a slot")
	}
	// Slots are page-aligned and never overlap.
	x, y := a.store(filled(1, 100<<10)), a.store(filled(2, 5000))
	if x.off%int64(page) != 0 || y.off%int64(page) != 0 || y.off < x.off+int64(128<<10) {
		t.Errorf("slots at %d (128 KiB) and %d: not page-aligned or overlapping", x.off, y.off)
	}
	if !bytes.Equal(x.data(), filled(1, 100<<10)) || !bytes.Equal(y.data(), filled(2, 5000)) {
		t.Error("a slot does not hold its image")
	}
}

// TestSlotReusedOnlyAfterPunch frees a slot whose pages were spliced into
// a pipe (as sendfile hands them to a socket's send queue) and reuses it:
// the pipe still reads the old image, the slot's pages read zero between
// the free and the reuse, and the new image is what the slot then holds.
// Without the hole punch, the new image would be written into the pages
// the pipe holds, which the second half of the test shows.
func TestSlotReusedOnlyAfterPunch(t *testing.T) {
	const n = 200 << 10
	old, img := filled(0xAA, n), filled(0xBB, n)
	run := func(t *testing.T, a *arena) (inPipe []byte, s *slot) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		r, w := os.NewFile(uintptr(p[0]), "pipe-r"), os.NewFile(uintptr(p[1]), "pipe-w")
		defer r.Close()
		defer w.Close()
		if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 1<<20); err != nil {
			t.Fatal(err)
		}
		first := a.store(old)
		off := first.off
		if k, err := unix.Splice(a.fd, &off, int(w.Fd()), nil, n, 0); err != nil || k != n {
			t.Fatalf("splice: %d bytes, %v", k, err)
		}
		first.release()
		if a.live.Load() != 0 || a.bytes.Load() != 0 {
			t.Fatalf("after the last release: %d slots, %d bytes live", a.live.Load(), a.bytes.Load())
		}
		s = a.store(img)
		if s.off != first.off {
			t.Fatalf("the freed slot at %d was not reused (new slot at %d)", first.off, s.off)
		}
		inPipe = make([]byte, n)
		if _, err := io.ReadFull(r, inPipe); err != nil {
			t.Fatal(err)
		}
		return inPipe, s
	}

	a := newTestArena(t)
	punch := a.punch
	var punched bool
	a.punch = func(off, n int64) error {
		err := punch(off, n)
		// Between the free and the reuse, the slot's pages are holes.
		punched = err == nil && bytes.Equal(a.mem[off:off+n], make([]byte, n))
		return err
	}
	inPipe, s := run(t, a)
	if !punched {
		t.Error("the freed slot's pages were not zero after the punch")
	}
	if !bytes.Equal(inPipe, old) {
		t.Error("the pipe lost the old image when the slot was reused")
	}
	if !bytes.Equal(s.data(), img) {
		t.Error("the reused slot does not hold the new image")
	}

	// The same without the punch: the pipe's pages are overwritten. This
	// is what the punch prevents (and shows that the pipe does hold the
	// file's pages, not a copy).
	b := newTestArena(t)
	b.punch = func(int64, int64) error { return nil }
	if inPipe, _ := run(t, b); bytes.Equal(inPipe, old) {
		t.Error("without the punch the pipe kept the old image: the test cannot see a missing punch")
	}
}

// TestSlotNotReusedAfterFailedPunch checks that a slot whose punch failed
// is never handed out again.
func TestSlotNotReusedAfterFailedPunch(t *testing.T) {
	a := newTestArena(t)
	a.punch = func(int64, int64) error { return unix.EIO }
	s := a.store(filled(1, 100<<10))
	s.release()
	if s2 := a.store(filled(2, 100<<10)); s2.off == s.off {
		t.Error("a slot whose punch failed was reused")
	}
	if a.punchFail.Load() != 1 {
		t.Errorf("punch failures %d, want 1", a.punchFail.Load())
	}
}

// TestArenaLargerClassWhenFull checks that with the extent used up an
// image takes a free slot of a larger class, and stays in Go memory when
// there is none.
func TestArenaLargerClassWhenFull(t *testing.T) {
	a := newTestArena(t)
	a.mem = a.mem[:1<<20] // an extent of 1 MiB: one 1 MiB slot
	big := a.store(filled(1, 600<<10))
	if big == nil {
		t.Fatal("no slot for the first image")
	}
	if s := a.store(filled(2, 100<<10)); s != nil {
		t.Fatal("a slot past the extent")
	}
	big.release()
	s := a.store(filled(2, 100<<10))
	if s == nil || s.off != big.off || int(s.class) != 20-int(a.pageShift) {
		t.Fatalf("the freed 1 MiB slot was not used for a smaller image: %+v", s)
	}
	s.release()
	if a.noSlot.Load() != 1 {
		t.Errorf("images left in Go memory: %d, want 1", a.noSlot.Load())
	}
	// It went back to its own class's list.
	if s := a.store(filled(3, 900<<10)); s == nil || s.off != big.off {
		t.Errorf("the 1 MiB slot was not back on its list: %+v", s)
	}
}

// largeLoader serves images of 100 KiB to 300 KiB whose bytes are derived
// from the key, so any mix-up of two images shows.
type largeLoader struct{}

func largeImage(k uint64) []byte {
	b := make([]byte, 100<<10+int(k%5)*(50<<10))
	for i := range b {
		b[i] = byte(k*31 + uint64(i)*7)
	}
	return b
}

func (largeLoader) Load(_ context.Context, id needle.PhotoID, _ needle.SizeCode) (Loaded, error) {
	return Loaded{
		Data: largeImage(id.Key), ContentType: "image/jpeg", ETag: fmt.Sprintf(`"%016x"`, id.Key),
		LastModified: "Mon, 02 Jan 2006 15:04:05 GMT", Writable: true, Source: "test",
	}, nil
}

func newLargeCache(t *testing.T, capacity int64) *Cache {
	t.Helper()
	c, err := New(Options{Loader: largeLoader{}, Capacity: capacity, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if c.arena == nil {
		t.Fatal("no memfd")
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestEvictionWaitsForAnswer holds an answer's reference to a cached image
// in the memfd, invalidates it: the slot is neither punched nor reused
// until the answer releases it, and no new answer can take it.
func TestEvictionWaitsForAnswer(t *testing.T) {
	c := newLargeCache(t, 16<<20)
	k := key{needle.PhotoID{Vid: 1, Key: 3, Cookie: 1}, needle.SizeLarge}
	e, err := c.get(k, k.size, false) // the miss: Go memory
	if err != nil || e.slot != nil {
		t.Fatalf("miss: %v, slot %v", err, e.slot)
	}
	e.release()
	e, err = c.get(k, k.size, false) // the hit: the memfd
	if err != nil || e.slot == nil {
		t.Fatalf("hit: %v, slot %v", err, e.slot)
	}
	want := largeImage(k.id.Key)
	var punched int
	punch := c.arena.punch
	c.arena.punch = func(off, n int64) error { punched++; return punch(off, n) }

	c.Invalidate(k.id)
	if _, ok := c.entries.GetIfPresent(k); ok {
		t.Fatal("still cached after Invalidate")
	}
	if punched != 0 || c.arena.live.Load() != 1 || c.arena.cached.Load() != 0 {
		t.Fatalf("with an answer in flight: %d punches, %d slots live, %d cached; want 0, 1, 0", punched, c.arena.live.Load(), c.arena.cached.Load())
	}
	// Another image cached meanwhile does not take the slot.
	k2 := key{needle.PhotoID{Vid: 1, Key: 4, Cookie: 1}, needle.SizeLarge}
	for range 2 {
		e2, err := c.get(k2, k2.size, false)
		if err != nil {
			t.Fatal(err)
		}
		e2.release()
	}
	if e2, _ := c.entries.GetIfPresent(k2); e2.slot == nil || e2.slot.off == e.slot.off {
		t.Fatalf("the second image is not in the memfd apart from the first: %+v", e2.slot)
	}
	if !bytes.Equal(e.data, want) {
		t.Fatal("the answer in flight lost its bytes")
	}
	if e.acquire() != true {
		// The answer's own reference keeps the count above zero: a
		// second reader sharing it may still take one.
		t.Fatal("no reference while one is held")
	}
	e.release()
	e.release()
	if punched != 1 || c.arena.live.Load() != 1 {
		t.Fatalf("after the release: %d punches, %d slots live; want 1, 1", punched, c.arena.live.Load())
	}
	if e.acquire() {
		t.Fatal("a reference taken on a freed slot")
	}
	if !bytes.Equal(e.data, make([]byte, len(want))) {
		t.Error("the freed slot's pages were not punched")
	}
}

// TestConcurrentReadersTinyBudget reads images from many goroutines
// through a cache that holds two or three of them at a time, so that
// answers keep racing evictions; every answer must carry its own image.
// Run with -race. At the end, invalidating everything leaves no slot.
func TestConcurrentReadersTinyBudget(t *testing.T) {
	c := newLargeCache(t, 700<<10)
	const keys, readers, reads = 12, 8, 300
	var wants [keys][]byte
	for k := range wants {
		wants[k] = largeImage(uint64(k))
	}
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range reads {
				k := (r*7 + i*(r+1)) % keys
				id := needle.PhotoID{Vid: 1, Key: uint64(k), Cookie: 1}
				e, err := c.get(key{id, needle.SizeLarge}, needle.SizeLarge, false)
				if err != nil {
					errs <- err
					return
				}
				ok := bytes.Equal(e.data, wants[k])
				e.release()
				if !ok {
					errs <- fmt.Errorf("image %d: wrong bytes", k)
					return
				}
				if i%50 == 0 {
					// An eviction of another cause than the budget.
					c.entries.Invalidate(key{id, needle.SizeLarge})
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if c.arena.live.Load() == 0 {
		t.Error("no image was ever in the memfd")
	}
	for k := range keys {
		c.Invalidate(needle.PhotoID{Vid: 1, Key: uint64(k), Cookie: 1})
	}
	if live, b := c.arena.live.Load(), c.arena.bytes.Load(); live != 0 || b != 0 {
		t.Errorf("after invalidating everything: %d slots, %d bytes live", live, b)
	}
}

// TestNoVariantSharesSlot caches a bare size whose WebP variant the photo
// lacks: the alias and the size share one slot, which lives until both
// are gone.
func TestNoVariantSharesSlot(t *testing.T) {
	c, err := New(Options{Logger: slog.New(slog.DiscardHandler), Loader: LoaderFunc(func(ctx context.Context, id needle.PhotoID, size needle.SizeCode) (Loaded, error) {
		if size.IsWebP() {
			return Loaded{}, ErrNotFound
		}
		return largeLoader{}.Load(ctx, id, size)
	})})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := needle.PhotoID{Vid: 1, Key: 2, Cookie: 1}
	variant, _ := needle.SizeLarge.WebP()
	e, err := c.get(key{id, variant}, needle.SizeLarge, false)
	if err != nil {
		t.Fatal(err)
	}
	e.release()
	own, ok1 := c.entries.GetIfPresent(key{id, needle.SizeLarge})
	alias, ok2 := c.entries.GetIfPresent(key{id, variant})
	if !ok1 || !ok2 || !alias.noVariant || own.slot == nil || alias.slot != own.slot {
		t.Fatalf("size cached %v, alias cached %v (noVariant %v), slots %p and %p", ok1, ok2, alias.noVariant, own.slot, alias.slot)
	}
	s := own.slot
	if s.refs.Load() != 2 || s.held.Load() != 2 {
		t.Fatalf("the shared slot has %d references, %d entries; want 2, 2", s.refs.Load(), s.held.Load())
	}
	c.entries.Invalidate(key{id, needle.SizeLarge})
	if s.refs.Load() != 1 || c.arena.live.Load() != 1 || !bytes.Equal(alias.data, largeImage(id.Key)) {
		t.Fatal("evicting the size freed the bytes its alias still serves")
	}
	c.Invalidate(id)
	if c.arena.live.Load() != 0 {
		t.Error("the slot outlived both entries")
	}
}

// TestLargeHitCork sends an image from the memfd over a real TCP pair as
// the fast path does: the socket is corked for the headers, uncorked once
// the image was sent, and the peer reads the image; an answer abandoned
// before its body (WriteTo never called) is uncorked by Close.
func TestLargeHitCork(t *testing.T) {
	a := newTestArena(t)
	img := largeImage(7)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	cork := func() int {
		rc := serve.RawTCP(server)
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		return v
	}

	for _, write := range []bool{true, false} {
		s := a.store(img)
		h := newLargeHit(server, s)
		if h == nil {
			t.Fatal("no sendfile answer over plain TCP")
		}
		if cork() != 1 {
			t.Fatal("the socket is not corked for the headers")
		}
		if write {
			got := make(chan []byte)
			go func() {
				b := make([]byte, len(img))
				io.ReadFull(client, b)
				got <- b
			}()
			if n, err := h.WriteTo(nil); err != nil || n != int64(len(img)) {
				t.Fatalf("WriteTo: %d bytes, %v", n, err)
			}
			if cork() != 0 {
				t.Error("the socket is still corked after the image was sent")
			}
			if b := <-got; !bytes.Equal(b, img) {
				t.Error("the peer did not read the image")
			}
		}
		h.Close()
		if cork() != 0 {
			t.Errorf("written %v: the socket is corked after Close", write)
		}
		if a.live.Load() != 0 {
			t.Errorf("written %v: Close did not release the slot", write)
		}
	}
}

// TestLargeHitOverTLS serves the public listener over TLS: a hit of an
// image in the memfd is copied from the mapping and encrypted, never sent
// with sendfile, and carries the image.
func TestLargeHitOverTLS(t *testing.T) {
	c := newLargeCache(t, 16<<20)
	ca := rpctest.New(t)
	cfg := ca.Node(t, pki.RoleCache, "cache1").ServerTLS().Clone()
	cfg.ClientAuth = tls.NoClientCert
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(c, ServerOptions{Listener: tls.NewListener(ln, cfg), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.Node(t, pki.RoleOperator, "reader").ClientTLSExpecting(pki.RoleCache)}}
	id := needle.PhotoID{Vid: 1, Key: 4, Cookie: 1}
	url := "https://" + srv.Addr().String() + needle.ImagePath(id, needle.SizeLarge, "jpg")
	for i := range 3 {
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, largeImage(id.Key)) {
			t.Fatalf("GET %d over TLS: %d, %d bytes, %v", i, resp.StatusCode, len(body), err)
		}
	}
	if e, ok := c.entries.GetIfPresent(key{id, needle.SizeLarge}); !ok || e.slot == nil {
		t.Fatal("the image is not in the memfd")
	}
	if hits, sent := c.metrics.hits.Load(), gathered(t, c, "haybale_cache_http_bytes_sendfile_total"); hits != 2 || sent != 0 {
		t.Errorf("%d hits, %v bytes sent with sendfile; want 2 hits, none sent with sendfile", hits, sent)
	}
}
