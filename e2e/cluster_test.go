package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clusterStore is one store process of TestCluster and how to start it
// again over the same data.
type clusterStore struct {
	name, http, grpc string
	args             []string
	proc             *proc
}

func (s *clusterStore) start(t *testing.T) {
	t.Helper()
	s.proc = startHaybale(t, s.name, s.args...)
	waitHealthy(t, s.proc, "http://"+s.http+"/healthz")
}

// dirStatus is the part of the directory's /api/v1/status the test reads.
type dirStatus struct {
	Stores []struct {
		ID    string `json:"id"`
		State string `json:"state"`
		Rack  string `json:"rack"`
	} `json:"stores"`
}

// aliveStores returns the directory's view of the stores: how many there
// are and how many are alive.
func aliveStores(t *testing.T, dirHTTP string) (total, alive int, err error) {
	t.Helper()
	resp, body, err := tryFetch("http://" + dirHTTP + "/api/v1/status")
	if err != nil {
		return 0, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("status page: %d", resp.StatusCode)
	}
	var st dirStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return 0, 0, err
	}
	for _, s := range st.Stores {
		if s.State == "alive" {
			alive++
		}
	}
	return len(st.Stores), alive, nil
}

// waitAlive waits until the directory counts want live stores.
func waitAlive(t *testing.T, dirHTTP string, want int) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%d stores alive", want), func() error {
		_, alive, err := aliveStores(t, dirHTTP)
		if err != nil {
			return err
		}
		if alive != want {
			return fmt.Errorf("%d alive", alive)
		}
		return nil
	})
}

// syntheticJPEG draws a w×h photo-like gradient, different for each seed.
func syntheticJPEG(t *testing.T, w, h, seed int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x*3 + seed*40), uint8(y*2 + seed*70), uint8((x ^ y) + seed), 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 88}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// clusterCA creates a cluster CA under base with the haybale binary, as an
// operator would, and returns a function that issues a node folder for
// role/name (valid on 127.0.0.1) and returns its path.
func clusterCA(t *testing.T, base string) func(role, name string) string {
	t.Helper()
	caDir := filepath.Join(base, "ca")
	haybaleOK(t, "cert", "init", "--ca-dir", caDir)
	return func(role, name string) string {
		t.Helper()
		out := filepath.Join(caDir, role+"-"+name)
		haybaleOK(t, "cert", "issue", "--ca-dir", caDir, "--role", role, "--name", name, "--host", "127.0.0.1,localhost", "--out", out)
		return out
	}
}

// haybaleOK runs the haybale binary to completion and fails the test when
// it fails.
func haybaleOK(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("haybale %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testCluster is a cluster of haybale processes with certificates: a
// directory, stores, a cache and a gateway.
type testCluster struct {
	base                   string
	issue                  func(role, name string) string
	secret                 string
	dirGRPC, dirHTTP       string
	cacheHTTP, cacheIntern string
	gateway                string
	dir, cache, gw         *proc
	stores                 []*clusterStore
}

// startCluster starts a directory with replication n, n stores (store0 ..
// store<n-1>), a cache and a gateway, every one with its own certificate.
func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	c := &testCluster{base: t.TempDir()}
	c.issue = clusterCA(t, c.base)
	c.secret = filepath.Join(c.base, "secret")
	if err := os.WriteFile(c.secret, []byte(strings.Repeat("e2e-cluster-secret-", 4)), 0o600); err != nil {
		t.Fatal(err)
	}
	var gwHTTP string
	c.dirGRPC, c.dirHTTP, c.cacheHTTP, c.cacheIntern, gwHTTP = freePort(t), freePort(t), freePort(t), freePort(t), freePort(t)
	cacheURL := "http://" + c.cacheHTTP
	common := []string{"--log-level", "warn"}

	c.dir = startHaybale(t, "directory", append([]string{"directory",
		"--certs-dir", c.issue("directory", "dir1"),
		"--dir", filepath.Join(c.base, "directory"), "--grpc", c.dirGRPC, "--http", c.dirHTTP,
		"--replication", fmt.Sprint(n), "--heartbeat-interval", "300ms", "--volume-size-limit", "64MiB",
		"--secret-file", c.secret, "--cache-nodes", cacheURL}, common...)...)
	waitHealthy(t, c.dir, "http://"+c.dirHTTP+"/healthz")

	c.stores = make([]*clusterStore, n)
	for i := range c.stores {
		s := &clusterStore{name: fmt.Sprintf("store%d", i), http: freePort(t), grpc: freePort(t)}
		s.args = append([]string{"store", "--certs-dir", c.issue("store", s.name),
			"--dir", filepath.Join(c.base, s.name), "--http", s.http, "--grpc", s.grpc,
			"--directory", c.dirGRPC, "--rack", fmt.Sprintf("rack%d", i), "--secret-file", c.secret,
			"--volume-size-limit", "64MiB"}, common...)
		s.start(t)
		c.stores[i] = s
	}
	waitAlive(t, c.dirHTTP, n)

	c.cache = startHaybale(t, "cache", append([]string{"cache", "--certs-dir", c.issue("cache", "cache1"),
		"--directory", c.dirGRPC, "--http", c.cacheHTTP, "--internal", c.cacheIntern, "--capacity", "64MiB", "--lookup-ttl", "1s"}, common...)...)
	c.gw = startHaybale(t, "gateway", append([]string{"gateway", "--certs-dir", c.issue("gateway", "gw1"),
		"--directory", c.dirGRPC, "--http", gwHTTP, "--cache-nodes", cacheURL, "--cache-internal", c.cacheIntern}, common...)...)
	waitHealthy(t, c.cache, cacheURL+"/healthz")
	c.gateway = "http://" + gwHTTP
	waitHealthy(t, c.gw, c.gateway+"/healthz")
	return c
}

func TestCluster(t *testing.T) {
	c := startCluster(t, 3)
	dir, dirHTTP, stores, cache, gw, gateway := c.dir, c.dirHTTP, c.stores, c.cache, c.gw, c.gateway
	cacheURL := "http://" + c.cacheHTTP

	// Upload photos; every store holds every image (replication 3 on 3
	// stores), byte for byte the same.
	var photos []photo
	images := map[string][]byte{} // image path -> bytes
	for i := range 4 {
		status, up, body, err := upload(gateway, syntheticJPEG(t, 900+100*i, 600+50*i, i))
		if err != nil || status != http.StatusCreated {
			t.Fatalf("upload %d: %d %s %v", i, status, body, err)
		}
		photos = append(photos, up)
		for _, size := range sizeLetters {
			path := "/p/" + up.ID + "/" + size
			if want := cacheURL + path; !strings.HasPrefix(up.URLs[size], want) {
				t.Errorf("URL of %s is %q, want it on the cache: %s", path, up.URLs[size], want)
			}
			for _, s := range stores {
				resp, b := fetch(t, "http://"+s.http+path)
				if resp.StatusCode != http.StatusOK || len(b) != up.Sizes[size].Bytes {
					t.Fatalf("%s from %s: %d, %d bytes, want 200 and %d", path, s.name, resp.StatusCode, len(b), up.Sizes[size].Bytes)
				}
				if prev, ok := images[path]; ok && !bytes.Equal(prev, b) {
					t.Fatalf("%s differs between replicas", path)
				}
				images[path] = b
			}
		}
	}

	// kill -9 one store. The images have not been read through the cache
	// yet, so the cache has to fetch every one from a surviving replica.
	stores[0].proc.kill9()
	t.Logf("killed %s", stores[0].name)
	for path, want := range images {
		eventually(t, 15*time.Second, "read "+path+" through the cache", func() error {
			resp, b, err := tryFetch(cacheURL + path)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK || !bytes.Equal(b, want) {
				return fmt.Errorf("%d, %d bytes (want %d)", resp.StatusCode, len(b), len(want))
			}
			return nil
		})
	}
	for _, p := range photos {
		if resp, body := fetch(t, gateway+"/photos/"+p.ID); resp.StatusCode != http.StatusOK {
			t.Errorf("gateway GET /photos/%s with a store down: %d %s", p.ID, resp.StatusCode, body)
		}
		// The gateway's size route redirects to the image URL, the cache.
		resp, b := fetch(t, gateway+"/photos/"+p.ID+"/m")
		if resp.StatusCode != http.StatusOK || !bytes.Equal(b, images["/p/"+p.ID+"/m"]) {
			t.Errorf("gateway GET /photos/%s/m with a store down: %d, %d bytes", p.ID, resp.StatusCode, len(b))
		}
	}

	// Replication 3 needs three live stores: once the directory has seen
	// the store go silent, uploads are refused with a clear 503.
	waitAlive(t, dirHTTP, 2)
	for i := range 3 {
		status, _, body, err := upload(gateway, syntheticJPEG(t, 400, 300, 10+i))
		if err != nil {
			t.Fatal(err)
		}
		var answer struct{ Error string }
		json.Unmarshal(body, &answer)
		if status != http.StatusServiceUnavailable || answer.Error == "" {
			t.Fatalf("upload with 2 of 3 stores alive: %d %s, want 503 with a JSON error", status, body)
		}
		if i == 0 {
			t.Logf("upload with 2 of 3 stores alive: %d %s", status, strings.TrimSpace(string(body)))
		}
	}

	// The store restarts over its data folder and rejoins as itself.
	stores[0].start(t)
	waitAlive(t, dirHTTP, 3)
	if total, _, err := aliveStores(t, dirHTTP); err != nil || total != 3 {
		t.Errorf("the directory knows %d stores after the restart (%v), want the same 3", total, err)
	}
	for path, want := range images {
		resp, b := fetch(t, "http://"+stores[0].http+path)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(b, want) {
			t.Errorf("%s from the restarted store: %d, %d bytes", path, resp.StatusCode, len(b))
		}
	}
	var up photo
	eventually(t, 30*time.Second, "an upload after the store rejoined", func() error {
		status, p, body, err := upload(gateway, syntheticJPEG(t, 640, 480, 20))
		if err != nil {
			return err
		}
		if status != http.StatusCreated {
			return fmt.Errorf("%d %s", status, body)
		}
		up = p
		return nil
	})
	for _, s := range stores {
		path := "/p/" + up.ID + "/l"
		if resp, b := fetch(t, "http://"+s.http+path); resp.StatusCode != http.StatusOK || len(b) != up.Sizes["l"].Bytes {
			t.Errorf("new photo %s from %s: %d, %d bytes", path, s.name, resp.StatusCode, len(b))
		}
	}
	if resp, b := fetch(t, up.URLs["s"]); resp.StatusCode != http.StatusOK || len(b) != up.Sizes["s"].Bytes {
		t.Errorf("new photo through the cache: %d, %d bytes", resp.StatusCode, len(b))
	}

	// Every process shuts down cleanly on SIGTERM.
	for _, p := range []*proc{gw, cache, stores[0].proc, stores[1].proc, stores[2].proc, dir} {
		if err := p.stop(); err != nil {
			t.Errorf("%s: exit after SIGTERM: %v", p.name, err)
		}
	}
}
