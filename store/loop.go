package store

import (
	"errors"
	"net/http"
	"time"

	"github.com/haybale/haybale/internal/evloop"
	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// The event-loop image path.
//
// With ServerOptions.EventLoop the store's HTTP connections are served
// on event loops (internal/evloop) instead of by fasthttp, and a plain
// image GET or HEAD is answered by serveLoop on the loop: the same checks
// (plainImage) and the same read and verification (readImage) as the
// fasthttp path, written as the same answer. A read that would wait for
// the disk (a needle not in the page cache, a direct read) is not waited
// for on the loop: readImage says so having read nothing
// (volume.TryReadRef), and the loop makes the read itself without
// waiting, through its io_uring (readOnLoop), verifies the needle when
// the read completes and answers it there. An image of an EC volume is
// read the same way (readECOnLoop) when its needle's one or two segments
// lie on shards held here: one read per segment, as ECVolume.Read makes
// them. Where it cannot (no io_uring, its ring full, an EC needle on more
// segments or on a shard not held here, a read that fails or does not
// verify), the loop calls
// serveLoop again on a goroutine, where it reads as the fasthttp path
// does (volume.ReadRefCold: without a second try; ECVolume.Read). A large image of a
// connection with nothing queued leaves with sendfile(2) from the volume
// file; any other from the mapping or the read buffer, without a copy.
// An answer of the file's bytes (sendfile, or the mapping) carries their
// proof (evloop.Answer.Verified: the read buffer, which holds the
// needle's verified mapping): the loop asks it before any send of them in
// a later turn than the one that verified them, and ends the connection,
// the answer short, when the pages are no longer those verified.
// Everything else goes to httpHandler.ServeHTTP off the loop.

// loopRequest is an event loop's request as plainImage sees it.
type loopRequest struct{ r *evloop.Request }

func (r loopRequest) getOrHead() bool      { return r.r.IsGet() || r.r.IsHead() }
func (r loopRequest) target() []byte       { return r.r.Target }
func (r loopRequest) has(name string) bool { return r.r.Peek(name) != nil }
func (r loopRequest) acceptsWebP() bool {
	webp := false
	r.r.Values("Accept", func(v []byte) bool {
		webp = acceptValueWebP(v)
		return !webp
	})
	return webp
}

// serveLoop answers a plain GET or HEAD of an image on an event loop (or,
// with mayBlock, off it), and declines every other request. Callers: the
// store's HTTP server (internal/serve, internal/evloop) for every
// request; the images are public, as on the net/http path.
func (h *httpHandler) serveLoop(req *evloop.Request, a *evloop.Answer, mayBlock bool) evloop.Result {
	id, choice, ok := plainImage(loopRequest{req})
	if !ok {
		return evloop.Declined
	}
	start := time.Now()
	// Off the loop, serveLoop runs only for a request it answered Blocked
	// on the loop (or whose loop read asked for it): the loop's try of the
	// image was refused.
	img := h.readImage(id, choice, mayBlock, mayBlock)
	switch img.code {
	case declined:
		return evloop.Declined
	case blocked:
		if !mayBlock && h.readOnLoop(req, a, id, choice, start) {
			return evloop.Pending
		}
		return evloop.Blocked
	}
	return h.answerLoop(a, req.IsHead(), choice.Vary, &img, start)
}

// answerLoop writes img's answer into a and counts it.
func (h *httpHandler) answerLoop(a *evloop.Answer, head, vary bool, img *imageRead, start time.Time) evloop.Result {
	if vary {
		// On every answer, failures included, as on the net/http path.
		a.Header("Vary", imagehttp.RawAccept)
	}
	h.writeLoop(a, head, img)
	h.srv.metrics.countStatus(img.code)
	h.srv.metrics.latency.Observe(time.Since(start).Seconds())
	return evloop.Answered
}

// answerLoopRead answers, on the loop, an image whose read the loop made,
// finished (the needle of size read into rb, or the read's error): a read
// to make again (volume.ErrWouldBlock) goes off the loop, as does an
// image the fast path declines.
func (h *httpHandler) answerLoopRead(a *evloop.Answer, head, vary bool, id needle.PhotoID, size needle.SizeCode, n needle.Needle, rb *readBuf, err error, start time.Time) evloop.Result {
	if !errors.Is(err, volume.ErrWouldBlock) {
		h.srv.metrics.loopReads.Inc()
	}
	img := h.readResult(id, size, n, rb, err)
	switch img.code {
	case declined:
		return evloop.Declined
	case blocked:
		return evloop.Blocked
	}
	return h.answerLoop(a, head, vary, &img, start)
}

// readOnLoop has the loop read the image id (its size, or the fallback
// size where the photo lacks it), which the page cache does not hold,
// without waiting: the read goes to the loop's io_uring
// (volume.StartColdRead, evloop.Answer.Read), and its completion is
// verified (volume.ColdRead.Finish) and answered on the loop. It reports
// false, having taken nothing, where that cannot be (a volume that is not
// mapped, an EC needle readECOnLoop leaves to ECVolume.Read, no io_uring,
// the loop's ring full): the request then goes off the loop. A read the
// kernel refuses, or one that comes back short, goes off the loop from
// its completion.
func (h *httpHandler) readOnLoop(req *evloop.Request, a *evloop.Answer, id needle.PhotoID, choice imagehttp.Choice, start time.Time) bool {
	v, err := h.srv.store.Volume(id.Vid)
	if errors.Is(err, ErrVolumeNotHere) {
		if ev, err := h.srv.store.ECVolume(id.Vid); err == nil {
			return h.readECOnLoop(req, a, ev, id, choice, start)
		}
	}
	if err != nil {
		return false
	}
	c, size, rb, ok := startOnLoop(h, id, choice, v.StartColdRead)
	if !ok {
		return false // answered off the loop, as before
	}
	head, vary := req.IsHead(), choice.Vary
	read := []evloop.FileRead{{FD: c.FD, Buf: c.Buf, Off: c.Off}}
	return takeOnLoop(a, read, rb, c.Abandon, func(a *evloop.Answer, res []evloop.ReadResult) evloop.Result {
		ref, buf, err := c.Finish(res[0].N, res[0].Err)
		rb.ref = ref
		rb.keep(buf)
		return h.answerLoopRead(a, head, vary, id, size, ref.Needle, rb, err, start)
	})
}

// readECOnLoop is readOnLoop for an image of the EC volume ev: the loop
// reads a needle whose one or two segments lie on shards held here with
// the reads the EC volume would make, one per segment
// (volume.ECVolume.StartColdRead, evloop.Answer.Reads), and answers it
// once joined and verified (volume.ECColdRead.Finish). It reports false,
// having taken nothing, for anything else (a needle on more segments, a
// shard not held here, no io_uring, the loop's ring full); a read that
// fails, is refused by a ring that filled part way, comes back short or
// does not verify goes off the loop from the completion, where
// ECVolume.Read reads it again, rebuilding from the other shards where
// one fails.
func (h *httpHandler) readECOnLoop(req *evloop.Request, a *evloop.Answer, ev *volume.ECVolume, id needle.PhotoID, choice imagehttp.Choice, start time.Time) bool {
	c, size, rb, ok := startOnLoop(h, id, choice, ev.StartColdRead)
	if !ok {
		return false // answered off the loop, as before
	}
	var reads [volume.ECColdReadMax]evloop.FileRead
	planned := c.Reads()
	for i, r := range planned {
		reads[i] = evloop.FileRead{FD: r.FD, Buf: r.Buf, Off: r.Off}
	}
	head, vary := req.IsHead(), choice.Vary
	return takeOnLoop(a, reads[:len(planned)], rb, c.Abandon, func(a *evloop.Answer, res []evloop.ReadResult) evloop.Result {
		var got [volume.ECColdReadMax]volume.ReadResult
		for i, r := range res {
			got[i] = volume.ReadResult{N: r.N, Err: r.Err}
		}
		nd, buf, err := c.Finish(got[:len(res)])
		rb.keep(buf)
		return h.answerLoopRead(a, head, vary, id, size, nd, rb, err, start)
	})
}

// The loop takes every read an EC cold read plans: this fails to compile
// were an ECColdRead to plan more reads than a request may take.
var _ [evloop.MaxReads - volume.ECColdReadMax]struct{}

// startOnLoop plans, with plan (a volume's or an EC volume's
// StartColdRead), the loop's read of the image id: its size, or the
// fallback size where the photo lacks it, into a read buffer of the
// size's pool. ok is false, the buffer back in its pool, where the read
// cannot be made on the loop or the image is not there (the request then
// goes off the loop, which answers it).
func startOnLoop[C any](h *httpHandler, id needle.PhotoID, choice imagehttp.Choice, plan func(key, cookie uint64, size needle.SizeCode, buf []byte) (C, []byte, bool, error)) (c C, size needle.SizeCode, rb *readBuf, ok bool) {
	size = choice.Size
	rb = h.pools[sizePool(size)].Get().(*readBuf)
	c, buf, ok, err := plan(id.Key, id.Cookie, size, rb.b)
	if errors.Is(err, volume.ErrNotFound) && choice.Fallback != size {
		size = choice.Fallback
		c, buf, ok, err = plan(id.Key, id.Cookie, size, buf)
	}
	rb.keep(buf)
	if err != nil || !ok {
		rb.Close()
		return c, size, nil, false
	}
	return c, size, rb, true
}

// takeOnLoop has the loop make reads (one, or up to evloop.MaxReads), for
// a read planned by startOnLoop, done answering it once they are made.
// When the loop cannot take them, abandon gives back what the reads held,
// rb goes back to its pool, and takeOnLoop reports false.
func takeOnLoop(a *evloop.Answer, reads []evloop.FileRead, rb *readBuf, abandon func(), done evloop.ReadsDone) bool {
	if !a.Reads(reads, done) {
		abandon()
		rb.Close()
		return false
	}
	return true
}

// Header names of the loop's answers, as net/http writes them.
const (
	hdrContentType   = "Content-Type"
	hdrContentLength = "Content-Length"
)

// writeLoop writes img's answer into a.
func (h *httpHandler) writeLoop(a *evloop.Answer, head bool, img *imageRead) {
	a.Status = img.code
	if img.code != http.StatusOK {
		if img.reason != "" {
			a.Header("Cache-Control", valNoStore)
			a.Header(ErrorHeader, valErrors[img.reason])
		} else {
			a.Header("Cache-Control", imagehttp.RawCacheNotFound)
		}
		a.Header(hdrContentType, imagehttp.RawJSONContentType)
		a.Header("X-Content-Type-Options", imagehttp.RawNoSniff)
		a.HeaderInt(hdrContentLength, int64(len(img.body)))
		if !head {
			a.Body = img.body
		}
		return
	}
	n, rb := &img.n, img.rb
	var buf [64]byte
	a.Header("Etag", imagehttp.AppendETag(buf[:0], n.Checksum))
	a.Header("Last-Modified", appendLastModified(buf[:0], n))
	a.Header("Cache-Control", imagehttp.RawImmutable)
	a.Header("Accept-Ranges", imagehttp.RawBytes)
	a.Header("X-Content-Type-Options", imagehttp.RawNoSniff)
	a.Header(hdrContentType, mimeBytes[n.ContentType])
	a.HeaderInt(hdrContentLength, int64(len(n.Data)))
	// rb holds the bytes (the mapping, or the read buffer) until the loop
	// has written them, then goes back to its pool.
	a.Done = rb
	if head {
		return
	}
	h.srv.metrics.bytesServed.Add(float64(len(n.Data)))
	// The proof of the file's bytes, which the loop asks before a send of
	// them in a later turn (it is never asked for bytes in memory).
	a.Verified = rb
	if fd, off, ok := rb.ref.Source(); ok && len(n.Data) >= sendfileMin && a.CanSendFile() {
		a.SendFile(fd, off, int64(len(n.Data)))
		h.srv.metrics.bytesSent.Add(float64(len(n.Data)))
		return
	}
	a.Body = n.Data
	a.BodyInFile = rb.ref.Mapped() // the volume's mapping: a page may fault in
}
