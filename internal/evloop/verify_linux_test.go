//go:build linux

package evloop

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// testVerifier is an answer's Verifier that counts its calls and reports
// ok.
type testVerifier struct {
	ok    bool
	calls atomic.Int64
}

func (v *testVerifier) StillVerified() bool {
	v.calls.Add(1)
	return v.ok
}

// verifyFixture is a Server whose answers lie in a file: /file sends the
// whole file with sendfile, /small its first 1000 bytes, /mapped the
// whole file from a mapping of it (BodyInFile), each with the fixture's
// Verifier; /memory the file's bytes from memory; the prefix /off (as /off/small) has one made off the loop (Blocked first),
// the prefix /nov one without a Verifier. /img/N answers 10 bytes of
// memory.
// The accepted sockets have a small send buffer, so that a large answer
// fills the socket in the Handler's turn and is resumed in later ones.
type verifyFixture struct {
	srv   *Server
	ln    net.Listener
	data  []byte // the file's bytes
	v     *testVerifier
	dones atomic.Int64 // Done closes

	// gate holds /gate/..., answered off the loop, until it is closed;
	// the target its Handler then reads is sent on gated.
	gate  chan struct{}
	gated chan string
}

type verifyDone struct{ f *verifyFixture }

func (d verifyDone) Close() error { d.f.dones.Add(1); return nil }

func newVerifyFixture(t *testing.T, v *testVerifier) *verifyFixture {
	t.Helper()
	f := &verifyFixture{v: v, data: body(4 << 20), gate: make(chan struct{}), gated: make(chan string, 1)}
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, f.data, 0o600); err != nil {
		t.Fatal(err)
	}
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	mapping, err := syscall.Mmap(int(file.Fd()), 0, len(f.data), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		file.Close()
		t.Fatal(err)
	}
	// Registered first, so run last: after the server's shutdown (in
	// listenFor's cleanup), when no answer points into either.
	t.Cleanup(func() {
		syscall.Munmap(mapping)
		file.Close()
	})
	h := func(req *Request, a *Answer, mayBlock bool) Result {
		target := string(req.Target)
		if strings.HasPrefix(target, "/img/") {
			a.Status = http.StatusOK
			a.HeaderInt("Content-Length", 10)
			a.Body = body(10)
			return Answered
		}
		if strings.HasPrefix(target, "/gate/") {
			if !mayBlock {
				return Blocked
			}
			<-f.gate
			f.gated <- string(req.Target)
			a.Status = http.StatusOK
			a.HeaderInt("Content-Length", 10)
			a.Body = body(10)
			a.Done = verifyDone{f}
			return Answered
		}
		if t, ok := strings.CutPrefix(target, "/off"); ok {
			if !mayBlock {
				return Blocked
			}
			target = t
		}
		verified := true
		if t, ok := strings.CutPrefix(target, "/nov"); ok {
			verified, target = false, t
		}
		a.Status = http.StatusOK
		switch target {
		case "/file":
			a.HeaderInt("Content-Length", int64(len(f.data)))
			a.SendFile(int(file.Fd()), 0, int64(len(f.data)))
		case "/small":
			a.HeaderInt("Content-Length", 1000)
			a.SendFile(int(file.Fd()), 0, 1000)
		case "/memory":
			a.HeaderInt("Content-Length", int64(len(f.data)))
			a.Body = f.data
		case "/mapped":
			a.HeaderInt("Content-Length", int64(len(mapping)))
			a.Body, a.BodyInFile = mapping, true
		default:
			return Declined
		}
		if verified {
			a.Verified = f.v
		}
		a.Done = verifyDone{f}
		return Answered
	}
	// One loop, so that an answer on a second connection shows the turn
	// in which the first was answered over; room for two large answers
	// queued on a connection.
	if f.srv, err = New(h, http.NotFoundHandler(), Options{Loops: 1, MaxQueued: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	f.ln = listenFor(t, f.srv, func(c net.Conn) { c.(*net.TCPConn).SetWriteBuffer(16 << 10) })
	return f
}

// dial connects to f with a small receive buffer.
func (f *verifyFixture) dial(t *testing.T) net.Conn {
	t.Helper()
	return dialTest(t, f.ln.Addr().String(), 4<<10)
}

// served has f answer a small request on a new connection: the loop has
// then finished the turns in which it answered what was asked before
// (it has one loop), and it still serves.
func (f *verifyFixture) served(t *testing.T) {
	t.Helper()
	c := f.dial(t)
	defer c.Close()
	io.WriteString(c, "GET /img/10 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, bufio.NewReader(c), "GET"); resp.StatusCode != 200 || !bytes.Equal(b, body(10)) {
		t.Fatalf("another connection: %d, %q", resp.StatusCode, b)
	}
}

// ask sends requests on a new connection and, before reading anything,
// waits for the loop to be done with the turn in which they were
// answered: a large answer has filled the socket and waits for a later
// turn.
func (f *verifyFixture) ask(t *testing.T, requests string) *bufio.Reader {
	t.Helper()
	c := f.dial(t)
	if _, err := io.WriteString(c, requests); err != nil {
		t.Fatal(err)
	}
	f.served(t)
	return bufio.NewReader(c)
}

// counted checks f's counts: its Verifier's calls (-1: not checked), the
// server's Unverified, and the Done closes.
func (f *verifyFixture) counted(t *testing.T, calls, unverified, dones int64) {
	t.Helper()
	if n := f.v.calls.Load(); calls >= 0 && n != calls {
		t.Errorf("the Verifier was asked %d times, want %d", n, calls)
	}
	if n := f.srv.Unverified(); n != unverified {
		t.Errorf("Unverified %d, want %d", n, unverified)
	}
	if n := f.dones.Load(); n != dones {
		t.Errorf("Done closed %d times, want %d", n, dones)
	}
}

// cutShort reads an answer of want from br and checks that it is cut
// short of its Content-Length, its bytes a prefix of want, and that the
// connection ends then.
func cutShort(t *testing.T, br *bufio.Reader, want []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
			return // not even the header left: cut short too
		}
		t.Fatalf("reading the answer: %v", err)
	}
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(want)) {
		t.Fatalf("answer: %d, Content-Length %d; want 200 and %d", resp.StatusCode, resp.ContentLength, len(want))
	}
	b, err := io.ReadAll(resp.Body)
	if len(b) >= len(want) {
		t.Fatalf("got the whole answer (%d bytes), want it cut short", len(b))
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) && !isReset(err) {
		t.Fatalf("after %d of %d bytes: %v, want the connection ended", len(b), len(want), err)
	}
	if !bytes.Equal(b, want[:len(b)]) {
		t.Fatalf("the %d bytes received are not the start of the body", len(b))
	}
	waitEOF(t, br)
}

// TestVerifierFalseCutsSendFile: a sendfile body resumed in a later turn,
// after a full socket, whose Verifier reports false: the rest is not
// sent, the connection ends, Done is closed once, the loop serves on,
// and the answer is counted.
func TestVerifierFalseCutsSendFile(t *testing.T) {
	v := &testVerifier{}
	f := newVerifyFixture(t, v)
	br := f.ask(t, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
	cutShort(t, br, f.data)
	f.served(t)
	f.counted(t, 1, 1, 1)
}

// TestVerifierFalseCutsMappedBody: a body in a file's mapping
// (BodyInFile) resumed in a later turn after a full socket, whose
// Verifier reports false, is cut short the same way.
func TestVerifierFalseCutsMappedBody(t *testing.T) {
	v := &testVerifier{}
	f := newVerifyFixture(t, v)
	br := f.ask(t, "GET /mapped HTTP/1.1\r\nHost: x\r\n\r\n")
	cutShort(t, br, f.data)
	f.served(t)
	f.counted(t, -1, 1, 1)
}

// TestVerifierFalseBehindEarlierAnswer: a mapped body queued behind a
// pipelined earlier answer (a large one without a Verifier, which fills
// the socket) is sent in a later turn; its Verifier reports false: the
// earlier answers arrive whole, this one is cut short (before any of its
// body: its header goes with the end of the one before), and every Done
// is closed once.
func TestVerifierFalseBehindEarlierAnswer(t *testing.T) {
	v := &testVerifier{}
	f := newVerifyFixture(t, v)
	br := f.ask(t, "GET /img/10 HTTP/1.1\r\nHost: x\r\n\r\nGET /nov/file HTTP/1.1\r\nHost: x\r\n\r\nGET /mapped HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || !bytes.Equal(b, body(10)) {
		t.Fatalf("first answer: %d, %q", resp.StatusCode, b)
	}
	if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || !bytes.Equal(b, f.data) {
		t.Fatalf("second answer: %d, %d bytes, not the %d of the file", resp.StatusCode, len(b), len(f.data))
	}
	cutShort(t, br, f.data)
	f.counted(t, 1, 1, 2)
	f.served(t)
}

// TestVerifierFalseAskedOnce: a mapped body queued behind a large answer
// from memory, all answered in one turn, whose Verifier reports false
// when a later turn reaches it: the answer before it is still sent whole,
// over several more turns, and the Verifier is not asked again (its
// bytes stay unsent).
func TestVerifierFalseAskedOnce(t *testing.T) {
	v := &testVerifier{}
	f := newVerifyFixture(t, v)
	br := f.ask(t, "GET /memory HTTP/1.1\r\nHost: x\r\n\r\nGET /mapped HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || !bytes.Equal(b, f.data) {
		t.Fatalf("first answer: %d, %d bytes, not the %d of the file", resp.StatusCode, len(b), len(f.data))
	}
	cutShort(t, br, f.data)
	f.counted(t, 1, 1, 2)
}

// TestVerifierTrueSendsWhole: with a Verifier that reports true, a large
// sendfile body and a large mapped body, resumed in later turns, arrive
// byte for byte; each Verifier was asked; the mapped body's later writes
// were made without the scheduler; and an answer sent whole in its own
// turn never asks its Verifier.
func TestVerifierTrueSendsWhole(t *testing.T) {
	waited := countWaits(t)
	v := &testVerifier{ok: true}
	f := newVerifyFixture(t, v)
	for _, target := range []string{"/file", "/mapped"} {
		before := v.calls.Load()
		br := f.ask(t, "GET "+target+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || !bytes.Equal(b, f.data) {
			t.Fatalf("%s: %d, %d bytes, not the %d of the file", target, resp.StatusCode, len(b), len(f.data))
		}
		if v.calls.Load() == before {
			t.Errorf("%s: resumed in later turns without asking its Verifier", target)
		}
	}
	if n := waited.Load(); n != 0 {
		t.Errorf("%d writes of a verified mapped body went through the scheduler, want 0", n)
	}
	before := v.calls.Load()
	c := f.dial(t)
	io.WriteString(c, "GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, bufio.NewReader(c), "GET"); resp.StatusCode != 200 || !bytes.Equal(b, f.data[:1000]) {
		t.Fatalf("/small: %d, %d bytes", resp.StatusCode, len(b))
	}
	if n := v.calls.Load() - before; n != 0 {
		t.Errorf("an answer sent whole in its Handler's turn asked its Verifier %d times, want 0", n)
	}
	f.counted(t, -1, 0, 3)
}

// TestVerifierOffLoop: an answer made off the loop (Blocked, then
// answered with mayBlock true) with a sendfile body asks its Verifier
// before its first send: reporting true, it arrives whole; reporting
// false, it is cut short and counted.
func TestVerifierOffLoop(t *testing.T) {
	v := &testVerifier{ok: true}
	f := newVerifyFixture(t, v)
	c := f.dial(t)
	io.WriteString(c, "GET /off/small HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, bufio.NewReader(c), "GET"); resp.StatusCode != 200 || !bytes.Equal(b, f.data[:1000]) {
		t.Fatalf("/off/small: %d, %d bytes", resp.StatusCode, len(b))
	}
	if v.calls.Load() == 0 {
		t.Error("an answer made off the loop was sent without asking its Verifier")
	}

	v2 := &testVerifier{}
	f2 := newVerifyFixture(t, v2)
	c2 := f2.dial(t)
	io.WriteString(c2, "GET /off/small HTTP/1.1\r\nHost: x\r\n\r\n")
	cutShort(t, bufio.NewReader(c2), f2.data[:1000])
	f2.counted(t, 1, 1, 1)
	f2.served(t)
}

// TestVerifierFalseKeepsEarlierAnswers: answers queued before one cut
// short reach the client whole even when the client has sent requests
// the paused connection has not read yet: the connection ends as after
// its last answer (its sending stopped, the client's bytes drained), not
// with a close that would reset it and drop what is still in the socket.
func TestVerifierFalseKeepsEarlierAnswers(t *testing.T) {
	v := &testVerifier{}
	f := newVerifyFixture(t, v)
	c := f.dial(t)
	// 20 MiB queued, over the fixture's MaxQueued: the connection stops
	// reading after the mapped answer.
	reqs := strings.Repeat("GET /memory HTTP/1.1\r\nHost: x\r\n\r\n", 4) + "GET /mapped HTTP/1.1\r\nHost: x\r\n\r\n"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	f.served(t)
	// More requests of large answers than the connection's read buffer
	// holds: the answers of those it reads once it goes on queue behind
	// the mapped one and pause it again, and the rest wait unread in its
	// socket when the mapped answer is cut.
	more := strings.Repeat("GET /memory HTTP/1.1\r\nHost: x\r\n\r\n", 3000)
	wrote := make(chan error, 1)
	go func() { _, err := io.WriteString(c, more); wrote <- err }()
	br := bufio.NewReader(c)
	for i := range 4 {
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("answer %d: %v", i+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || !bytes.Equal(b, f.data) {
			t.Fatalf("answer %d: %d of %d bytes, %v; want it whole", i+1, len(b), len(f.data), err)
		}
	}
	cutShort(t, br, f.data)
	if err := <-wrote; err != nil && !isReset(err) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("writing the later requests: %v", err)
	}
	if n := f.srv.Unverified(); n != 1 {
		t.Errorf("Unverified %d, want 1", n)
	}
	f.served(t)
}

// TestVerifierFalseKeepsOffLoopRequest: a connection cut short while a
// later request of it is answered off the loop drains what its client
// still sends into a buffer of its own: the request's bytes, which the
// Handler reads off the loop, are not overwritten, and its answer is
// dropped (its Done closed) when done.
func TestVerifierFalseKeepsOffLoopRequest(t *testing.T) {
	v := &testVerifier{}
	f := newVerifyFixture(t, v)
	c := f.dial(t)
	const target = "/gate/the-request-target"
	if _, err := io.WriteString(c, "GET /mapped HTTP/1.1\r\nHost: x\r\n\r\nGET "+target+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	f.served(t)
	br := bufio.NewReader(c)
	cutShort(t, br, f.data)
	// Bytes the lingering connection reads and drops while the Handler
	// of /gate waits; then a turn of the loop, so that it has read them.
	if _, err := io.WriteString(c, strings.Repeat("Z", 300)); err != nil && !isReset(err) {
		t.Fatal(err)
	}
	f.served(t)
	close(f.gate)
	if got := <-f.gated; got != target {
		t.Fatalf("the Handler off the loop read the target %q, want %q", got, target)
	}
	// A bound on a wait that would otherwise hang, not a timing assertion.
	for deadline := time.Now().Add(10 * time.Second); f.dones.Load() < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("Done closed %d times, want 2 (the cut answer and the dropped one)", f.dones.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if n := f.srv.Unverified(); n != 1 {
		t.Errorf("Unverified %d, want 1", n)
	}
	f.served(t)
}
