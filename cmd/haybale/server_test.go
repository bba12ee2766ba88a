package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var (
	webPageLine   = regexp.MustCompile(`Web page: +(http://\S+)/ `)
	directoryLine = regexp.MustCompile(`Directory: +(http://\S+)/ `)
)

// startServer runs `haybale server` in-process over dataDir and returns its
// front URL and a function that stops it and returns runServer's error.
func startServer(t *testing.T, dataDir string) (string, func() error) {
	t.Helper()
	base, _, stop := startServerArgs(t, dataDir)
	return base, stop
}

// startServerArgs is startServer with flags args, returning the
// directory's status URL too.
func startServerArgs(t *testing.T, dataDir string, args ...string) (base, directory string, stop func() error) {
	t.Helper()
	f := serverFlags{}
	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	f.dir, f.httpAddr, f.log.level = dataDir, "127.0.0.1:0", "error"
	f.volumeSizeLimit = 64 << 20
	f.minFreeSpace = 1
	if err := f.validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- runServer(ctx, &f, &out) }()
	stop = func() error { cancel(); return <-done }
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := webPageLine.FindStringSubmatch(out.String()); m != nil {
			d := directoryLine.FindStringSubmatch(out.String())
			if d == nil {
				stop()
				t.Fatalf("no directory URL in:\n%s", out.String())
			}
			return m[1], d[1], stop
		}
		select {
		case err := <-done:
			t.Fatalf("server stopped before it was ready: %v\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("server not ready after 30s:\n%s", out.String())
		}
	}
}

func testJPEG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), uint8(x + y), 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func get(t *testing.T, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestServerServesAndRestarts(t *testing.T) {
	dataDir := t.TempDir()
	base, stop := startServer(t, dataDir)

	// The internal plane's CA lives in the data folder, its key private;
	// eviction is not on the front port.
	if st, err := os.Stat(filepath.Join(dataDir, "certs", "ca.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("local CA key: %v %v", st, err)
	}
	req0, _ := http.NewRequest(http.MethodDelete, base+"/p/1-1-0000000000000001", nil)
	if resp, err := http.DefaultClient.Do(req0); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("DELETE /p/ on the front port: %v %v, want 405", resp, err)
	} else {
		resp.Body.Close()
	}

	if resp, body := get(t, base+"/healthz"); resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz after ready = %d %s", resp.StatusCode, body)
	}
	resp, err := http.Post(base+"/photos", "image/jpeg", bytes.NewReader(testJPEG(t, 640, 400)))
	if err != nil {
		t.Fatal(err)
	}
	var up struct {
		ID   string            `json:"id"`
		URLs map[string]string `json:"urls"`
	}
	err = json.NewDecoder(resp.Body).Decode(&up)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || err != nil {
		t.Fatalf("upload: %d %v", resp.StatusCode, err)
	}
	// Image URLs point at the front port, which serves them through the
	// cache.
	images := map[string][]byte{}
	for _, size := range []string{"t", "s", "m", "l"} {
		url := up.URLs[size]
		if want := base + "/p/" + up.ID + "/"; len(url) < len(want) || url[:len(want)] != want {
			t.Fatalf("URL of %s = %q, want it under %s", size, url, want)
		}
		resp, body := get(t, url)
		if resp.StatusCode != http.StatusOK || len(body) == 0 || resp.Header.Get("Content-Type") != "image/jpeg" {
			t.Fatalf("GET %s: %d %q, %d bytes", url, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
		if resp, _ := get(t, url, "If-None-Match", resp.Header.Get("ETag")); resp.StatusCode != http.StatusNotModified {
			t.Errorf("conditional GET %s = %d, want 304", url, resp.StatusCode)
		}
		images[size] = body
	}
	if err := stop(); err != nil {
		t.Fatalf("clean shutdown: %v", err)
	}

	// Starting again over the same data serves the same bytes.
	base, stop = startServer(t, dataDir)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}()
	if resp, body := get(t, base+"/photos/"+up.ID); resp.StatusCode != http.StatusOK {
		t.Fatalf("photo info after restart: %d %s", resp.StatusCode, body)
	}
	for size, want := range images {
		resp, body := get(t, base+"/p/"+up.ID+"/"+size+".jpg")
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
			t.Errorf("after restart, size %s: %d, %d bytes, same bytes %v", size, resp.StatusCode, len(body), bytes.Equal(body, want))
		}
	}
	// A delete evicts the photo from the cache: it is gone at once.
	req, _ := http.NewRequest(http.MethodDelete, base+"/photos/"+up.ID, nil)
	dresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	dbody, _ := io.ReadAll(dresp.Body)
	dresp.Body.Close()
	if dresp.StatusCode != http.StatusOK {
		t.Fatalf("delete: %d", dresp.StatusCode)
	}
	// The eviction went over the cache's loopback TLS listener.
	if !bytes.Contains(dbody, []byte(`"cache_evicted":true`)) {
		t.Errorf("delete answer %s: the cache did not confirm the eviction", dbody)
	}
	if resp, _ := get(t, base+"/p/"+up.ID+"/m.jpg"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET after delete = %d, want 404", resp.StatusCode)
	}
}

func TestServerPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f := serverFlags{}
	f.register(pflag.NewFlagSet("server", pflag.ContinueOnError))
	f.dir, f.httpAddr = t.TempDir(), ln.Addr().String()
	err = runServer(context.Background(), &f, io.Discard)
	if err == nil || !regexp.MustCompile(`--http: .*address already in use`).MatchString(err.Error()) {
		t.Fatalf("err = %v, want --http: address already in use", err)
	}
}

func TestFrontHealth(t *testing.T) {
	var ready, draining atomic.Bool
	h := frontHandler(http.NotFoundHandler(), http.NotFoundHandler(), &ready, &draining)
	check := func(want int, wantBody string) {
		t.Helper()
		for _, path := range []string{"/healthz", "/readyz"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			if rec.Code != want || !bytes.Contains(rec.Body.Bytes(), []byte(wantBody)) {
				t.Errorf("%s = %d %q, want %d %q", path, rec.Code, rec.Body, want, wantBody)
			}
		}
	}
	check(http.StatusServiceUnavailable, "starting")
	ready.Store(true)
	check(http.StatusOK, "ok")
	draining.Store(true)
	check(http.StatusServiceUnavailable, "shutting down")
}

func TestDefaultPublicURL(t *testing.T) {
	for addr, want := range map[string]string{
		"[::]:8000":      "http://localhost:8000",
		"0.0.0.0:8000":   "http://localhost:8000",
		"127.0.0.1:9000": "http://localhost:9000",
		"10.1.2.3:8000":  "http://10.1.2.3:8000",
	} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := defaultPublicURL(a); got != want {
			t.Errorf("defaultPublicURL(%s) = %q, want %q", addr, got, want)
		}
		if got := advertiseLoopback(a); net.ParseIP(mustHost(t, got)).IsUnspecified() {
			t.Errorf("advertiseLoopback(%s) = %q, a wildcard", addr, got)
		}
	}
}

func mustHost(t *testing.T, hostport string) string {
	t.Helper()
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestServerDirectReadsFlag: `haybale server` reads cold images direct by
// default, as `haybale store` does, and --direct-reads=false turns it off.
func TestServerDirectReadsFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{{nil, true}, {[]string{"--direct-reads=false"}, false}} {
		var f serverFlags
		fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if f.directReads != c.want {
			t.Fatalf("%v: direct reads %v, want %v", c.args, f.directReads, c.want)
		}
	}
}

// TestServerEventLoop: `haybale server` serves its store's HTTP listener
// on the event loops by default, and with fasthttp with
// --event-loop=false; either way the front port serves uploads and
// images. The loops are told apart by their answer to a request with a
// body (413 with a JSON error: they take none).
func TestServerEventLoop(t *testing.T) {
	for _, c := range []struct {
		args []string
		loop bool
	}{{nil, true}, {[]string{"--event-loop=false"}, false}} {
		var f serverFlags
		fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(c.args); err != nil || f.eventLoop != c.loop {
			t.Fatalf("%q: %v, event loop %v, want %v", c.args, err, f.eventLoop, c.loop)
		}
		base, dirURL, stop := startServerArgs(t, t.TempDir(), c.args...)
		resp, err := http.Post(base+"/photos", "image/jpeg", bytes.NewReader(testJPEG(t, 320, 200)))
		if err != nil {
			t.Fatal(err)
		}
		var up struct {
			URLs map[string]string `json:"urls"`
		}
		err = json.NewDecoder(resp.Body).Decode(&up)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || err != nil {
			t.Fatalf("%q: upload: %d %v", c.args, resp.StatusCode, err)
		}
		if resp, body := get(t, up.URLs["m"]); resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Fatalf("%q: GET %s: %d, %d bytes", c.args, up.URLs["m"], resp.StatusCode, len(body))
		}
		_, body := get(t, dirURL+"/api/v1/status")
		var status struct {
			Stores []struct {
				HTTPAddr string `json:"http_addr"`
			} `json:"stores"`
		}
		if err := json.Unmarshal(body, &status); err != nil || len(status.Stores) != 1 {
			t.Fatalf("%q: directory status: %v, %s", c.args, err, body)
		}
		conn, err := net.Dial("tcp", status.Stores[0].HTTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		// A bound on a test that would otherwise hang, not a timing
		// assertion.
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "POST /p/1-1-0000000000000001/t HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
		answer, _ := io.ReadAll(conn)
		conn.Close()
		onLoop := bytes.HasPrefix(answer, []byte("HTTP/1.1 413 ")) && bytes.Contains(answer, []byte(`{"error":"request bodies are not accepted"}`))
		if onLoop != c.loop {
			t.Errorf("%q: the store answers a request with a body %q: on the loops %v, want %v", c.args, answer, onLoop, c.loop)
		}
		if err := stop(); err != nil {
			t.Fatalf("%q: clean shutdown: %v", c.args, err)
		}
	}
}
