package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // corpus photos
	_ "image/jpeg"
	_ "image/png"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "golang.org/x/image/webp" // corpus photos
)

// binary is the haybale binary built by TestMain.
var binary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "haybale-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "haybale")
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the go command is needed to build haybale:", err)
		return 1
	}
	build := exec.Command(goTool, "build", "-o", binary, "github.com/haybale/haybale/cmd/haybale")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/haybale: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// freePort returns a loopback address with a port that was free a moment
// ago. The processes under test bind it themselves.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// childEnv is the environment of the processes under test: this one's,
// without HAYBALE_ variables, which haybale would read as flags.
func childEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "HAYBALE_") })
}

// proc is a process under test. Its output goes to a log file that is
// printed when the test fails.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProc starts path with args and stops it when the test ends.
func startProc(t *testing.T, name, path string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{t: t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			p.dumpLog()
		}
	})
	return p
}

// startHaybale starts the haybale binary.
func startHaybale(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startProc(t, name, binary, args...)
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits for the process, killing it after 15 s.
// It returns the process's exit error.
func (p *proc) stop() error {
	if p.exited() {
		return p.err
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.t.Errorf("%s did not stop within 15 s of SIGTERM; killing it", p.name)
		p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *proc) kill9() {
	p.cmd.Process.Kill()
	<-p.done
}

// dumpLog logs the end of the process's output.
func (p *proc) dumpLog() {
	b, err := os.ReadFile(p.log)
	if err != nil {
		p.t.Logf("%s: no log: %v", p.name, err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	p.t.Logf("--- last lines of %s (%s) ---\n%s", p.name, p.log, strings.Join(lines, "\n"))
}

// eventually calls cond until it returns nil, failing the test with cond's
// last error after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitHealthy waits until GET url answers 200, failing early when p exits.
func waitHealthy(t *testing.T, p *proc, url string) {
	t.Helper()
	eventually(t, 30*time.Second, p.name+" healthy at "+url, func() error {
		if p.exited() {
			t.Fatalf("%s exited: %v", p.name, p.err)
		}
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

// sizeInfo is one size of an upload answer.
type sizeInfo struct {
	Width       int    `json:"width"`
	Height      int    `json:"height"`
	ContentType string `json:"content_type"`
	Bytes       int    `json:"bytes"`
}

// photo is the gateway's answer to an upload.
type photo struct {
	ID     string              `json:"id"`
	Width  int                 `json:"width"`
	Height int                 `json:"height"`
	URLs   map[string]string   `json:"urls"`
	Sizes  map[string]sizeInfo `json:"sizes"`
}

// sizeLetters are the four stored sizes.
var sizeLetters = []string{"t", "s", "m", "l"}

// upload POSTs an image to a gateway and returns the status, the decoded
// answer on 201 and the raw body.
func upload(gateway string, data []byte) (int, photo, []byte, error) {
	resp, err := http.Post(gateway+"/photos", "application/octet-stream", bytes.NewReader(data))
	if err != nil {
		return 0, photo{}, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, photo{}, body, err
	}
	var p photo
	if resp.StatusCode == http.StatusCreated {
		if err := json.Unmarshal(body, &p); err != nil {
			return resp.StatusCode, p, body, fmt.Errorf("upload answer: %w", err)
		}
	}
	return resp.StatusCode, p, body, nil
}

// fetch GETs url with the headers given as name, value pairs.
func fetch(t *testing.T, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := tryFetch(url, header...)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func tryFetch(url string, header ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// corpusPhoto is a photo file of the HAYBALE_PHOTOS corpus.
type corpusPhoto struct {
	path string
	data []byte
}

// corpus returns up to n photos of the corpus that haybale must accept: top
// level files of 20 KiB to 4 MiB that Go decodes (JPEG, PNG, GIF, WebP) at
// 25 megapixels or less, spread from the smallest to the largest file. It skips the test when HAYBALE_PHOTOS is unset. The file names are
// not assumed, so any corpus of the same kind works.
func corpus(t *testing.T, n int) []corpusPhoto {
	t.Helper()
	dir := os.Getenv("HAYBALE_PHOTOS")
	if dir == "" {
		t.Skip("HAYBALE_PHOTOS is not set: this test uploads real photos from that folder (CI sets it to ../shared/photos)")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("HAYBALE_PHOTOS: %v", err)
	}
	var photos []corpusPhoto
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || info.Size() < 20<<10 || info.Size() > 4<<20 {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
		if err != nil || cfg.Width <= 0 || cfg.Height <= 0 || int64(cfg.Width)*int64(cfg.Height) > 25e6 {
			continue
		}
		if _, _, err := image.Decode(bytes.NewReader(data)); err != nil {
			continue // animated WebP and other files Go cannot decode
		}
		photos = append(photos, corpusPhoto{path: path, data: data})
	}
	slices.SortFunc(photos, func(a, b corpusPhoto) int { return len(a.data) - len(b.data) })
	if len(photos) == 0 {
		t.Fatalf("HAYBALE_PHOTOS=%s holds no photo of at most 25 MP and 4 MiB that Go decodes", dir)
	}
	if len(photos) <= n {
		return photos
	}
	spread := make([]corpusPhoto, n)
	for i := range spread {
		spread[i] = photos[i*(len(photos)-1)/max(n-1, 1)]
	}
	return spread
}

// lookPath finds the first of names on PATH or as an absolute path.
func lookPath(names ...string) (string, error) {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	return "", errors.New(strings.Join(names, ", ") + " not found")
}

// artifactsDir is where a test keeps files worth looking at after the run:
// $HAYBALE_ARTIFACTS when set, else the test's temporary folder.
func artifactsDir(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("HAYBALE_ARTIFACTS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.TempDir()
}

// lastLines returns the last n lines of a file, for error messages.
func lastLines(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// startServer runs `haybale server` over a fresh data folder and waits for
// its /healthz. publicURL may be empty.
func startServer(t *testing.T, publicURL string) (front string, p *proc) {
	t.Helper()
	addr := freePort(t)
	args := []string{"server", "--dir", filepath.Join(t.TempDir(), "data"), "--http", addr, "--volume-size-limit", "256MiB", "--min-free-space", "1MiB"}
	if publicURL != "" {
		args = append(args, "--public-url", publicURL)
	}
	p = startHaybale(t, "server", args...)
	front = "http://" + addr
	waitHealthy(t, p, front+"/healthz")
	return front, p
}
