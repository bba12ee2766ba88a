package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
)

// directoryAddr returns the directory's gRPC address from the log of a
// running `haybale server`: the line where its store joins the directory.
func directoryAddr(t *testing.T, p *proc) string {
	t.Helper()
	re := regexp.MustCompile(`msg="joining the directory" .*?directory=(\S+)`)
	var addr string
	eventually(t, 20*time.Second, "the directory's address in the log", func() error {
		b, err := os.ReadFile(p.log)
		if err != nil {
			return err
		}
		m := re.FindSubmatch(b)
		if m == nil {
			return os.ErrNotExist
		}
		addr = string(m[1])
		return nil
	})
	return addr
}

// TestCDNVaryAccept stores a photo with WebP variants in a `haybale
// server` behind nginx and fetches the bare image path through nginx as a
// browser that accepts WebP and as a client that accepts JPEG only: each
// gets its own bytes, from the origin first and from nginx's cache after,
// because the origin's answers carry "Vary: Accept".
func TestCDNVaryAccept(t *testing.T) {
	nginx, err := lookPath("nginx", "/usr/sbin/nginx")
	if err != nil {
		t.Skip("nginx is not installed (apt-get install nginx): ", err)
	}
	cdnAddr, addr := freePort(t), freePort(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	p := startHaybale(t, "server", "server", "--dir", dataDir, "--http", addr,
		"--volume-size-limit", "256MiB", "--min-free-space", "1MiB", "--public-url", "http://"+cdnAddr)
	front := "http://" + addr
	waitHealthy(t, p, front+"/healthz")
	cdn := startNginx(t, nginx, cdnAddr, addr)

	// Write the photo as a gateway would, with a certificate of the
	// server's own CA.
	ca, err := pki.LoadCA(filepath.Join(dataDir, "certs"))
	if err != nil {
		t.Fatal(err)
	}
	is, err := ca.Issue(pki.IssueOptions{Identity: pki.Identity{Role: pki.RoleGateway, Name: "e2e"}, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.Node(is)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(client.Options{Directory: directoryAddr(t, p), Credentials: rpc.TLS(node)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	jpeg := append([]byte{0xff, 0xd8, 0xff, 0xe0}, bytes.Repeat([]byte("jpeg"), 500)...)
	webp := append([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "), bytes.Repeat([]byte("webp"), 300)...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := cl.StorePhoto(ctx, []client.Image{
		{Size: needle.SizeSmall, ContentType: needle.TypeJPEG, Data: jpeg},
		{Size: needle.SizeSmallWebP, ContentType: needle.TypeWebP, Data: webp},
	})
	if err != nil {
		t.Fatal(err)
	}

	path := needle.ImagePath(st.ID, needle.SizeSmall, "")
	const chrome = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
	clients := []struct {
		name, accept, ctype string
		body                []byte
	}{
		{"WebP browser", chrome, "image/webp", webp},
		{"JPEG-only client", "image/jpeg,image/png;q=0.9", "image/jpeg", jpeg},
	}
	for round, wantStatus := range []string{"MISS", "HIT"} {
		for _, c := range clients {
			resp, body := fetch(t, cdn+path, "Accept", c.accept)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != c.ctype || !bytes.Equal(body, c.body) {
				t.Errorf("round %d, %s: %d %s, %d bytes; want %s, %d bytes", round, c.name, resp.StatusCode,
					resp.Header.Get("Content-Type"), len(body), c.ctype, len(c.body))
			}
			if got := resp.Header.Get("X-Cache-Status"); got != wantStatus {
				t.Errorf("round %d, %s: X-Cache-Status %q, want %s", round, c.name, got, wantStatus)
			}
			if resp.Header.Get("Vary") != "Accept" {
				t.Errorf("round %d, %s: Vary %q, want Accept", round, c.name, resp.Header.Get("Vary"))
			}
		}
	}
	// The explicit paths need no Vary and serve their own needle.
	for ext, want := range map[string][]byte{"webp": webp, "jpg": jpeg} {
		resp, body := fetch(t, cdn+needle.ImagePath(st.ID, needle.SizeSmall, ext), "Accept", chrome)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) || resp.Header.Get("Vary") != "" {
			t.Errorf(".%s through nginx: %d, %d bytes, Vary %q", ext, resp.StatusCode, len(body), resp.Header.Get("Vary"))
		}
	}
	if err := p.stop(); err != nil {
		t.Errorf("haybale server after SIGTERM: %v", err)
	}
}
