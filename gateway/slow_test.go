package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/imagetest"
	"github.com/haybale/haybale/resizer"
)

// slowClient opens a connection to the gateway at addr, sends the headers
// of an upload that declares a 30 MiB body (or, chunked, none) and a first
// byte, then trickles one byte every interval until stop is closed.
func slowClient(t *testing.T, addr string, chunked bool, interval time.Duration, stop <-chan struct{}, wg *sync.WaitGroup) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	framing := fmt.Sprintf("Content-Length: %d", 30<<20)
	if chunked {
		framing = "Transfer-Encoding: chunked"
	}
	fmt.Fprintf(conn, "POST /photos HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n%s\r\n\r\n", framing)
	send := func(b byte) error {
		var err error
		if chunked {
			_, err = conn.Write([]byte{'1', '\r', '\n', b, '\r', '\n'})
		} else {
			_, err = conn.Write([]byte{b})
		}
		return err
	}
	if err := send(0xFF); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if send(0xD8) != nil {
					return
				}
			}
		}
	})
	return conn
}

// TestSlowClientsDoNotDelayUploads: 8, then 64, clients trickle their
// bodies (half declared at 30 MiB, half chunked) and keep their
// connections, while a normal upload completes. The body budget is one
// upload at the limit: charged by declared size, a single slow client
// would hold it all.
func TestSlowClientsDoNotDelayUploads(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{
		MaxConcurrentUploads: 1,
		// Slow, but fast enough to be kept for the whole test.
		MinUploadRate: 1, UploadRateWindow: time.Minute,
	}})
	addr := strings.TrimPrefix(e.url, "http://")
	photo := encodeJPEG(t, photoLike(800, 600, 1), 90)
	for _, n := range []int{8, 64} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			stop := make(chan struct{})
			var wg sync.WaitGroup
			conns := make([]net.Conn, n)
			for i := range conns {
				conns[i] = slowClient(t, addr, i%2 == 1, 200*time.Millisecond, stop, &wg)
			}
			defer func() {
				close(stop)
				wg.Wait()
				for _, c := range conns {
					c.Close()
				}
			}()
			time.Sleep(300 * time.Millisecond) // let every slow body start first

			// The bound is 2 s; the failure condition here is a
			// generous deadline, so a loaded machine does not fail it.
			c := &http.Client{Timeout: 30 * time.Second}
			e.uploadRawWith(t, c, photo)

			// The slow clients still hold their connections, unanswered.
			for i, conn := range conns {
				conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				var b [1]byte
				if _, err := conn.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("slow client %d was answered or dropped (%v) before the end of the test", i, err)
				}
			}
		})
	}
}

// uploadRawWith uploads data as a raw body and expects 201.
func (e *env) uploadRawWith(t *testing.T, c *http.Client, data []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+"/photos", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "image/jpeg")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("an upload behind slow ones did not finish: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload behind slow ones: HTTP %d", resp.StatusCode)
	}
}

// readAnswer reads one HTTP answer from conn, failing after a generous
// deadline.
func readAnswer(t *testing.T, conn net.Conn) answer {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: body}
}

// TestTooSlowClientIsCut: a client under MinUploadRate, trickling or
// stalled, is answered 408 and its budget returns: an upload at the whole
// budget then goes through.
func TestTooSlowClientIsCut(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{
		MaxConcurrentUploads: 1, MinUploadRate: 1 << 10, UploadRateWindow: 200 * time.Millisecond,
	}})
	addr := strings.TrimPrefix(e.url, "http://")
	for _, interval := range []time.Duration{20 * time.Millisecond, time.Hour} {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		conn := slowClient(t, addr, false, interval, stop, &wg)
		a := readAnswer(t, conn)
		close(stop)
		wg.Wait()
		conn.Close()
		if a.status != http.StatusRequestTimeout || !strings.Contains(a.errorMessage(t), "too slow") {
			t.Fatalf("byte every %v: HTTP %d %q, want 408 too slow", interval, a.status, a.body)
		}
	}
	e.mustUpload(t, encodeJPEG(t, photoLike(400, 300, 2), 90), nil)
}

// TestUploadTimeout: a client fast enough for the rate but not done
// within UploadTimeout is answered 408.
func TestUploadTimeout(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{
		MinUploadRate: 1, UploadRateWindow: time.Minute, UploadTimeout: 300 * time.Millisecond,
	}})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	conn := slowClient(t, strings.TrimPrefix(e.url, "http://"), true, 20*time.Millisecond, stop, &wg)
	defer func() { close(stop); wg.Wait(); conn.Close() }()
	if a := readAnswer(t, conn); a.status != http.StatusRequestTimeout || !strings.Contains(a.errorMessage(t), "within the time") {
		t.Fatalf("HTTP %d %q, want 408", a.status, a.body)
	}
}

// TestPartHeaderCap: a multipart part whose headers exceed
// MaxPartHeaderBytes is refused, however valid the image after it.
func TestPartHeaderCap(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	photo := encodeJPEG(t, photoLike(300, 200, 3), 90)
	body := func(header string) (*bytes.Buffer, string) {
		var b bytes.Buffer
		fmt.Fprintf(&b, "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n%sContent-Type: image/jpeg\r\n\r\n", header)
		b.Write(photo)
		b.WriteString("\r\n--B--\r\n")
		return &b, "multipart/form-data; boundary=B"
	}
	small, ct := body("X-Note: " + strings.Repeat("a", 4<<10) + "\r\n")
	if a := do(t, http.MethodPost, e.url+"/photos", small, map[string]string{"Content-Type": ct}); a.status != http.StatusCreated {
		t.Fatalf("4 KiB of part headers: HTTP %d %q", a.status, a.body)
	}
	before := volumeBytes(e.c)
	big, ct := body("X-Note: " + strings.Repeat("a", 40<<10) + "\r\n")
	a := do(t, http.MethodPost, e.url+"/photos", big, map[string]string{"Content-Type": ct})
	if a.status != http.StatusRequestEntityTooLarge || !strings.Contains(a.errorMessage(t), "part headers") {
		t.Fatalf("40 KiB of part headers: HTTP %d %q, want 413", a.status, a.body)
	}
	many, ct := body(strings.Repeat("X-A: b\r\n", 3000))
	if a := do(t, http.MethodPost, e.url+"/photos", many, map[string]string{"Content-Type": ct}); a.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("3000 part header lines: HTTP %d %q, want 413", a.status, a.body)
	}
	if after := volumeBytes(e.c); after != before {
		t.Errorf("refused uploads wrote %d bytes", after-before)
	}
}

// TestBombs: progressive JPEG bombs (4:4:4 and CMYK) are refused with 413
// before decoding when their estimate exceeds the decode budget, and a
// smaller one within the budget is decoded and stored.
func TestBombs(t *testing.T) {
	small := imagetest.Bomb(1200, 1000, false)
	info, err := resizer.New(resizer.Options{}).Probe(small)
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, envOptions{stores: 1, replication: 1, resizer: resizer.Options{DecodeMemory: info.Memory + 1<<20}})
	for _, cmyk := range []bool{false, true} {
		a := e.uploadRaw(t, imagetest.Bomb(8944, 8944, cmyk), nil)
		if a.status != http.StatusRequestEntityTooLarge || !strings.Contains(a.errorMessage(t), "decode memory budget") {
			t.Fatalf("cmyk=%v: HTTP %d %q, want 413 over the decode memory budget", cmyk, a.status, a.body)
		}
	}
	up := e.mustUpload(t, small, nil)
	if up.Width != 1200 || up.Height != 1000 {
		t.Errorf("small bomb stored as %dx%d", up.Width, up.Height)
	}
	if n := e.gw.opts.Resizer.MemoryInUse(); n != 0 {
		t.Errorf("%d bytes of decode memory still charged", n)
	}
}

// TestOrigin: browser uploads and deletes from another origin are 403;
// the gateway's own origin, listed origins and requests without Origin
// pass.
func TestOrigin(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{AllowedOrigins: []string{"https://photos.example.com"}}})
	photo := encodeJPEG(t, photoLike(300, 200, 4), 90)
	before := volumeBytes(e.c)
	for _, o := range []string{"https://evil.example", "null", "http://127.0.0.1.evil.example", "https://photos.example.com.evil.example"} {
		a := e.uploadRaw(t, photo, map[string]string{"Origin": o})
		if a.status != http.StatusForbidden || !strings.Contains(a.errorMessage(t), "origin") {
			t.Fatalf("Origin %s: HTTP %d %q, want 403", o, a.status, a.body)
		}
	}
	if after := volumeBytes(e.c); after != before {
		t.Fatalf("refused uploads wrote %d bytes", after-before)
	}
	self := e.url // http://127.0.0.1:port: the Host of the requests
	var id string
	for _, o := range []string{"", self, "https://photos.example.com", "HTTPS://Photos.Example.com:443"} {
		h := map[string]string{}
		if o != "" {
			h["Origin"] = o
		}
		id = e.mustUpload(t, photo, h).ID
	}
	if a := do(t, http.MethodDelete, e.url+"/photos/"+id, nil, map[string]string{"Origin": "https://evil.example"}); a.status != http.StatusForbidden {
		t.Fatalf("cross-origin delete: HTTP %d, want 403", a.status)
	}
	if a := do(t, http.MethodDelete, e.url+"/photos/"+id, nil, map[string]string{"Origin": self}); a.status != http.StatusOK {
		t.Fatalf("same-origin delete: HTTP %d %q", a.status, a.body)
	}
	if _, err := New(Options{Client: e.cl, Resizer: resizer.New(resizer.Options{}), AllowedOrigins: []string{"photos.example.com"}}); err == nil {
		t.Error("an origin without a scheme was accepted")
	}
}

// TestRecentOnPublicGateway: a gateway reachable from elsewhere lists the
// recent uploads, whose IDs carry the cookies, only with the API key.
func TestRecentOnPublicGateway(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{Public: true}})
	e.mustUpload(t, encodeJPEG(t, photoLike(300, 200, 5), 90), nil)
	var rr recentResponse
	do(t, http.MethodGet, e.url+"/api/recent", nil, nil).decode(t, &rr)
	if len(rr.Photos) != 0 {
		t.Fatalf("a public gateway without a key listed %d photos", len(rr.Photos))
	}
}

// TestUploadAtTheLimitWithOneSlot: with a budget of one upload, an upload
// near the limit (many chunks, then their copy into one buffer) completes.
func TestUploadAtTheLimitWithOneSlot(t *testing.T) {
	photo := encodeJPEG(t, photoLike(900, 700, 6), 95)
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{
		MaxConcurrentUploads: 1, MaxUploadBytes: int64(len(photo)) + 10, UploadRateWindow: time.Second,
	}})
	if len(photo) < 4*firstChunk {
		t.Fatalf("photo of %d bytes spans too few chunks", len(photo))
	}
	e.mustUpload(t, photo, nil)
	if n := e.gw.bodyBytes.Load(); n != 0 {
		t.Errorf("%d bytes of the body budget still charged after the upload", n)
	}
	a := do(t, http.MethodGet, e.url+"/metrics", nil, nil)
	for _, m := range []string{"haybale_gateway_upload_body_bytes 0", "haybale_gateway_decode_memory_bytes 0"} {
		if !strings.Contains(string(a.body), m+"\n") {
			t.Errorf("/metrics lacks %q", m)
		}
	}
}

// TestBodiesWaitingForEachOther: two bodies that each hold half the budget
// and then need more (to copy their chunks into one buffer) cannot wait
// for each other for ever: one at least is answered 503 after
// UploadRateWindow, the budget returns, and uploads go on.
func TestBodiesWaitingForEachOther(t *testing.T) {
	photo := encodeJPEG(t, photoLike(900, 700, 7), 95)
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{
		MaxConcurrentUploads: 2, MaxUploadBytes: int64(len(photo)), MinUploadRate: 1, UploadRateWindow: time.Second,
	}})
	addr := strings.TrimPrefix(e.url, "http://")
	head := len(photo) * 9 / 10
	conns := make([]net.Conn, 2)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /photos HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", len(photo))
		c.Write(photo[:head])
		conns[i] = c
	}
	time.Sleep(300 * time.Millisecond) // both bodies hold half the budget
	for _, c := range conns {
		c.Write(photo[head:])
		time.Sleep(300 * time.Millisecond) // the second waits less long
	}
	refused := 0
	for _, c := range conns {
		a := readAnswer(t, c)
		switch a.status {
		case http.StatusCreated:
		case http.StatusServiceUnavailable:
			refused++
			if !strings.Contains(a.errorMessage(t), "no memory left") || a.header.Get("Retry-After") == "" {
				t.Errorf("503 %q without the cause or Retry-After", a.body)
			}
		default:
			t.Errorf("HTTP %d %q, want 201 or 503", a.status, a.body)
		}
	}
	if refused == 0 {
		t.Fatal("both bodies got their copy: the budget was larger than meant")
	}
	if n := e.gw.bodyBytes.Load(); n != 0 {
		t.Errorf("%d bytes of the body budget still charged", n)
	}
	e.mustUpload(t, photo, nil)
}
