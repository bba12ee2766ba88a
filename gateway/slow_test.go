package gateway

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestStalledUploadsDoNotBlock: clients that declare a large body and then
// send nothing cannot keep other uploads waiting: they are cut off after
// BodyIdleTimeout and their share of the body budget returns.
func TestStalledUploadsDoNotBlock(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{MaxConcurrentUploads: 1, BodyIdleTimeout: 300 * time.Millisecond}})
	addr := e.url[len("http://"):]
	for i := 0; i < 3; i++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Declares 30 MiB (the whole budget), sends two bytes, stalls.
		fmt.Fprintf(conn, "POST /photos HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n\xff\xd8", 30<<20)
	}
	time.Sleep(50 * time.Millisecond) // let the stalled requests take the budget first
	photo := encodeJPEG(t, photoLike(800, 600, 1), 90)
	client := &http.Client{Timeout: 20 * time.Second}
	e.uploadRawWith(t, client, photo)
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
		t.Fatalf("an upload behind stalled ones did not finish: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload behind stalled ones: HTTP %d", resp.StatusCode)
	}
}
