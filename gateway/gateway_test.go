package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/imagetest"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/resizer"
)

// TestUploadRawAndMultipart uploads the same PNG as a raw body and as a
// multipart field, and checks both answers against the stored images.
func TestUploadRawAndMultipart(t *testing.T) {
	e := startEnv(t, envOptions{stores: 2, replication: 2})
	data := encodePNG(t, photoLike(640, 400, 1))

	raw := e.mustUpload(t, data, map[string]string{"Content-Type": "text/plain"}) // the type is ignored
	e.checkStored(t, raw, 640, 400)

	body, ct := multipartBody(t, "file", data)
	a := do(t, http.MethodPost, e.url+"/photos", body, map[string]string{"Content-Type": ct})
	if a.status != http.StatusCreated {
		t.Fatalf("multipart: HTTP %d %s", a.status, a.body)
	}
	var mp UploadResponse
	a.decode(t, &mp)
	e.checkStored(t, mp, 640, 400)
	if mp.ID == raw.ID {
		t.Fatal("two uploads got the same ID")
	}
	if loc := a.header.Get("Location"); loc != "/photos/"+mp.ID {
		t.Errorf("Location %q", loc)
	}

	// Both replicas hold every size.
	for _, up := range []UploadResponse{raw, mp} {
		id := mustID(t, up.ID)
		for _, s := range e.c.Stores {
			v, err := s.Srv.Store().Volume(id.Vid)
			if err != nil {
				t.Fatal(err)
			}
			for _, size := range needle.PhotoSizes {
				if _, _, err := v.Read(id.Key, id.Cookie, size, nil); err != nil {
					t.Errorf("%s size %s on store %s: %v", up.ID, size, s.HB.StoreID(), err)
				}
			}
		}
	}

	// A multipart body without the "file" field is a 400 and writes nothing.
	before := volumeBytes(e.c)
	body, ct = multipartBody(t, "photo", data)
	a = do(t, http.MethodPost, e.url+"/photos", body, map[string]string{"Content-Type": ct})
	if a.status != http.StatusBadRequest || !strings.Contains(a.errorMessage(t), `"file"`) {
		t.Errorf("multipart without file: HTTP %d %s", a.status, a.body)
	}
	// So is a multipart type without a boundary.
	a = do(t, http.MethodPost, e.url+"/photos", bytes.NewReader(data), map[string]string{"Content-Type": "multipart/form-data"})
	if a.status != http.StatusBadRequest {
		t.Errorf("multipart without boundary: HTTP %d %s", a.status, a.body)
	}
	a.errorMessage(t)
	if after := volumeBytes(e.c); after != before {
		t.Errorf("rejected uploads wrote %d bytes", after-before)
	}
}

// TestRejections checks the status and JSON error of uploads the resizer
// refuses, that none writes anything, and that the metrics count them.
func TestRejections(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, resizer: resizerSmallPixels})
	good := encodeJPEG(t, photoLike(300, 200, 2), 85)
	cases := []struct {
		name   string
		data   []byte
		status int
	}{
		{"empty", nil, http.StatusBadRequest},
		{"text", []byte("hello, this is not an image at all"), http.StatusUnsupportedMediaType},
		{"bmp", append([]byte("BM"), make([]byte, 64)...), http.StatusUnsupportedMediaType},
		{"truncated", good[:len(good)/2], http.StatusUnprocessableEntity},
		{"too many pixels", encodePNG(t, image.NewGray(image.Rect(0, 0, 1100, 1000))), http.StatusRequestEntityTooLarge},
	}
	before := volumeBytes(e.c)
	for _, c := range cases {
		a := e.uploadRaw(t, c.data, nil)
		if a.status != c.status {
			t.Errorf("%s: HTTP %d %s, want %d", c.name, a.status, a.body, c.status)
			continue
		}
		t.Logf("%s: %d %s", c.name, a.status, a.errorMessage(t))
	}
	if after := volumeBytes(e.c); after != before {
		t.Errorf("rejected uploads wrote %d bytes", after-before)
	}
	m := metricsText(t, e.url)
	for _, want := range []string{
		`haybale_gateway_uploads_total{outcome="bad_request"} 1`,
		`haybale_gateway_uploads_total{outcome="unsupported"} 2`,
		`haybale_gateway_uploads_total{outcome="corrupt"} 1`,
		`haybale_gateway_uploads_total{outcome="too_large"} 1`,
		`haybale_gateway_uploads_total{outcome="created"} 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// resizerSmallPixels caps uploads at 1 MP.
var resizerSmallPixels = resizer.Options{MaxPixels: 1_000_000}

func metricsText(t testing.TB, url string) string {
	t.Helper()
	a := do(t, http.MethodGet, url+"/metrics", nil, nil)
	if a.status != http.StatusOK {
		t.Fatalf("/metrics: HTTP %d", a.status)
	}
	return string(a.body)
}

// TestOversizedBody checks the byte limit: a declared length over it, a
// chunked body over it and a multipart file over it are 413 and write
// nothing; a body at the limit is accepted.
func TestOversizedBody(t *testing.T) {
	data := encodeJPEG(t, photoLike(200, 150, 3), 80)
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{MaxUploadBytes: int64(len(data))}})
	big := append(append([]byte{}, data...), make([]byte, 1000)...)
	before := volumeBytes(e.c)

	a := e.uploadRaw(t, big, nil) // Content-Length over the limit
	if a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("declared length: HTTP %d %s", a.status, a.body)
	}
	a.errorMessage(t)

	// Unknown length (chunked): the limit applies while reading.
	a = do(t, http.MethodPost, e.url+"/photos", struct{ *bytes.Reader }{bytes.NewReader(big)}, nil)
	if a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked: HTTP %d %s", a.status, a.body)
	}
	a.errorMessage(t)

	body, ct := multipartBody(t, "file", big)
	a = do(t, http.MethodPost, e.url+"/photos", body, map[string]string{"Content-Type": ct})
	if a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("multipart: HTTP %d %s", a.status, a.body)
	}
	a.errorMessage(t)
	if after := volumeBytes(e.c); after != before {
		t.Errorf("oversized uploads wrote %d bytes", after-before)
	}

	// Exactly at the limit, raw and multipart, is fine.
	e.checkStored(t, e.mustUpload(t, data, nil), 200, 150)
	body, ct = multipartBody(t, "file", data)
	if a := do(t, http.MethodPost, e.url+"/photos", body, map[string]string{"Content-Type": ct}); a.status != http.StatusCreated {
		t.Errorf("multipart at the limit: HTTP %d %s", a.status, a.body)
	}
}

// TestOrientations uploads the eight EXIF orientations of a marked image
// and checks that the stored l (and s) images are upright: red at the top
// left, green at the top right, no red at the bottom.
func TestOrientations(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	const w, h = 720, 480 // s is resized, l is re-encoded at this size
	upright := imagetest.Marked(w, h, 6)
	for o := 1; o <= 8; o++ {
		t.Run(fmt.Sprint("orientation=", o), func(t *testing.T) {
			data := withSegment(encodeJPEG(t, imagetest.StoredAs(upright, o), 92), exifSegment(o, false))
			up := e.mustUpload(t, data, nil)
			imgs := e.checkStored(t, up, w, h)
			for _, code := range []int{3, 1} { // l, then s
				m := imgs[code]
				b := m.Bounds()
				dx, dy := b.Dx()/24, b.Dy()/24
				tl, tr := m.At(dx, dy), m.At(b.Dx()-1-dx, dy)
				bl, br := m.At(dx, b.Dy()-1-dy), m.At(b.Dx()-1-dx, b.Dy()-1-dy)
				if !imagetest.IsRed(tl) || !imagetest.IsGreen(tr) {
					t.Errorf("size %d: top-left %v, top-right %v; want red and green", code, tl, tr)
				}
				if imagetest.IsRed(bl) || imagetest.IsRed(br) || imagetest.IsGreen(bl) || imagetest.IsGreen(br) {
					t.Errorf("size %d: a marker at the bottom: %v, %v", code, bl, br)
				}
			}
		})
	}
}

// TestGPSStripped uploads a JPEG whose EXIF holds a GPS position and
// checks that no stored size carries EXIF, or the position's bytes.
func TestGPSStripped(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	seg := exifSegment(1, true)
	data := withSegment(encodeJPEG(t, photoLike(900, 600, 4), 90), seg)
	var lat []byte
	for _, v := range gpsLatitude {
		lat = binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(lat, v), 1)
	}
	if !bytes.Contains(data, lat) || !bytes.Contains(data, []byte("Exif\x00")) {
		t.Fatal("the test upload lacks its GPS EXIF")
	}
	up := e.mustUpload(t, data, nil)
	e.checkStored(t, up, 900, 600) // includes: no metadata segment at all
	for _, size := range needle.PhotoSizes {
		f := e.readStored(t, up.ID, size)
		for _, bad := range [][]byte{[]byte("Exif"), lat, []byte("GatewayCam")} {
			if bytes.Contains(f.Data, bad) {
				t.Errorf("%s: stored image contains %q", size, bad)
			}
		}
	}
}

// TestAuth checks that uploads and deletes need the API key while reads
// do not, and that a refused request writes nothing.
func TestAuth(t *testing.T) {
	const key = "correct horse battery staple"
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{APIKey: key}})
	data := encodeJPEG(t, photoLike(320, 240, 5), 85)
	before := volumeBytes(e.c)
	for _, h := range []map[string]string{
		nil,
		{"Authorization": "Bearer wrong"},
		{"Authorization": "Bearer " + key + "x"},
		{"Authorization": "Basic " + key},
		{"Authorization": key},
		{"X-API-Key": key},
	} {
		a := e.uploadRaw(t, data, h)
		if a.status != http.StatusUnauthorized || a.header.Get("WWW-Authenticate") == "" {
			t.Errorf("upload with %v: HTTP %d %s", h, a.status, a.body)
		}
		a.errorMessage(t)
	}
	if after := volumeBytes(e.c); after != before {
		t.Fatalf("refused uploads wrote %d bytes", after-before)
	}

	up := e.mustUpload(t, data, map[string]string{"Authorization": "bearer " + key}) // the scheme is case-insensitive

	// The recent uploads carry their cookies: only a keyed request sees them.
	var recent recentResponse
	do(t, http.MethodGet, e.url+"/api/recent", nil, nil).decode(t, &recent)
	if len(recent.Photos) != 0 || !recent.APIKeyRequired {
		t.Errorf("recent uploads without the key: %+v", recent)
	}
	do(t, http.MethodGet, e.url+"/api/recent", nil, map[string]string{"Authorization": "Bearer " + key}).decode(t, &recent)
	if len(recent.Photos) != 1 || recent.Photos[0].ID != up.ID {
		t.Errorf("recent uploads with the key: %+v", recent)
	}

	// Reads need no key.
	if a := do(t, http.MethodGet, e.url+"/photos/"+up.ID, nil, nil); a.status != http.StatusOK {
		t.Errorf("info without a key: HTTP %d %s", a.status, a.body)
	}
	if a := do(t, http.MethodGet, e.url+"/photos/"+up.ID+"/m", nil, nil); a.status != http.StatusFound {
		t.Errorf("image without a key: HTTP %d %s", a.status, a.body)
	}
	if a := do(t, http.MethodGet, e.url+"/api/recent", nil, nil); a.status != http.StatusOK {
		t.Errorf("recent without a key: HTTP %d", a.status)
	}

	// Deletes do.
	before = volumeBytes(e.c)
	for _, h := range []map[string]string{nil, {"Authorization": "Bearer nope"}} {
		a := do(t, http.MethodDelete, e.url+"/photos/"+up.ID, nil, h)
		if a.status != http.StatusUnauthorized {
			t.Errorf("delete with %v: HTTP %d %s", h, a.status, a.body)
		}
		a.errorMessage(t)
	}
	if after := volumeBytes(e.c); after != before {
		t.Errorf("refused deletes wrote %d bytes", after-before)
	}
	e.readStored(t, up.ID, needle.SizeLarge) // still there
	if a := do(t, http.MethodDelete, e.url+"/photos/"+up.ID, nil, map[string]string{"Authorization": "Bearer " + key}); a.status != http.StatusOK {
		t.Errorf("delete with the key: HTTP %d %s", a.status, a.body)
	}
}

// failWrites returns a dial option failing the store Write calls for
// which fail returns true, and the list of keys of every Write request.
func failWrites(fail func(n int32) bool) (grpc.DialOption, *writeLog) {
	log := &writeLog{}
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method != "/haybale.v1.Store/Write" {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		n := log.calls.Add(1)
		var key uint64
		if wr, ok := req.(*storepb.WriteRequest); ok && len(wr.GetNeedles()) > 0 {
			key = wr.GetNeedles()[0].GetKey()
		}
		failed := fail(n)
		log.mu.Lock()
		log.mu.keys = append(log.mu.keys, key)
		if failed {
			log.mu.failed = append(log.mu.failed, key)
		}
		log.mu.Unlock()
		if failed {
			return status.Error(codes.Unavailable, "injected replica failure")
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}), log
}

type writeLog struct {
	calls atomic.Int32
	mu    struct {
		sync.Mutex
		keys, failed []uint64
	}
}

// TestReplicaFailureRetries fails the first store write of an upload: the
// client retries on a fresh assignment and the answer is still right.
// When every write fails, the answer is a 503.
func TestReplicaFailureRetries(t *testing.T) {
	failFirst, log := failWrites(func(n int32) bool { return n == 1 })
	e := startEnv(t, envOptions{stores: 2, replication: 2, dial: []grpc.DialOption{failFirst}})
	up := e.mustUpload(t, encodeJPEG(t, photoLike(800, 500, 6), 88), nil)
	e.checkStored(t, up, 800, 500)

	log.mu.Lock()
	failed, keys := append([]uint64(nil), log.mu.failed...), append([]uint64(nil), log.mu.keys...)
	log.mu.Unlock()
	if len(failed) != 1 || len(keys) < 3 {
		t.Fatalf("writes of keys %v, failed %v: want one failure and a retry", keys, failed)
	}
	if id := mustID(t, up.ID); id.Key == failed[0] {
		t.Errorf("the photo kept key %x of the failed attempt; want a fresh assignment", id.Key)
	}
	// The photo is whole on both replicas.
	id := mustID(t, up.ID)
	for _, s := range e.c.Stores {
		v, err := s.Srv.Store().Volume(id.Vid)
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range needle.PhotoSizes {
			if _, _, err := v.Read(id.Key, id.Cookie, size, nil); err != nil {
				t.Errorf("store %s size %s: %v", s.HB.StoreID(), size, err)
			}
		}
	}
}

func TestReplicaFailurePermanent(t *testing.T) {
	always, log := failWrites(func(int32) bool { return true })
	e := startEnv(t, envOptions{stores: 2, replication: 2, dial: []grpc.DialOption{always}})
	a := e.uploadRaw(t, encodeJPEG(t, photoLike(300, 200, 7), 85), nil)
	if a.status != http.StatusServiceUnavailable {
		t.Fatalf("HTTP %d %s, want 503", a.status, a.body)
	}
	t.Logf("503: %s", a.errorMessage(t))
	if n := log.calls.Load(); n < 2 {
		t.Errorf("%d write calls: the client did not retry", n)
	}
	if m := metricsText(t, e.url); !strings.Contains(m, `haybale_gateway_uploads_total{outcome="unavailable"} 1`) {
		t.Error("the failed upload is not counted as unavailable")
	}
	if got := e.gw.recent.list(); len(got) != 0 {
		t.Errorf("a failed upload is listed as recent: %v", got)
	}
}

// TestDeleteInvalidatesCache deletes a photo: afterwards it is 404
// through the gateway and the client, the cache node owning it received
// DELETE /p/<id>, and the other node nothing.
func TestDeleteInvalidatesCache(t *testing.T) {
	type hit struct{ method, path string }
	var mu sync.Mutex
	hits := map[int][]hit{}
	// The nodes are named as the directory lists them; evictions go to
	// their internal listeners.
	var nodes, internal []string
	for i := range 3 {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			hits[i] = append(hits[i], hit{r.Method, r.URL.Path})
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		}))
		t.Cleanup(srv.Close)
		nodes = append(nodes, fmt.Sprintf("cache%d.example:8090", i))
		internal = append(internal, srv.URL)
	}
	e := startEnv(t, envOptions{stores: 2, replication: 2, gw: Options{CacheNodes: nodes, CacheEvictURLs: internal, NoCachePush: true}})
	up := e.mustUpload(t, encodePNG(t, photoLike(400, 300, 8)), nil)
	keep := e.mustUpload(t, encodePNG(t, photoLike(300, 400, 9)), nil)
	id := mustID(t, up.ID)

	if a := do(t, http.MethodGet, e.url+"/photos/"+up.ID, nil, nil); a.status != http.StatusOK {
		t.Fatalf("before delete: HTTP %d %s", a.status, a.body)
	}
	a := do(t, http.MethodDelete, e.url+"/photos/"+up.ID, nil, nil)
	if a.status != http.StatusOK {
		t.Fatalf("delete: HTTP %d %s", a.status, a.body)
	}
	var dr deleteResponse
	a.decode(t, &dr)
	if dr.ID != up.ID || !dr.Deleted || dr.CacheEvicted == nil || !*dr.CacheEvicted {
		t.Errorf("delete answer %s", a.body)
	}

	owner := needle.Owner(id.Key, nodes)
	mu.Lock()
	for i := range nodes {
		want := []hit(nil)
		if i == owner {
			want = []hit{{http.MethodDelete, "/p/" + up.ID}}
		}
		if fmt.Sprint(hits[i]) != fmt.Sprint(want) {
			t.Errorf("cache node %d got %v, want %v", i, hits[i], want)
		}
	}
	mu.Unlock()

	a = do(t, http.MethodGet, e.url+"/photos/"+up.ID, nil, nil)
	if a.status != http.StatusNotFound {
		t.Errorf("after delete: HTTP %d %s", a.status, a.body)
	}
	a.errorMessage(t)
	for _, size := range needle.PhotoSizes {
		if _, err := e.cl.Read(bg, id, size); !errors.Is(err, client.ErrNotFound) {
			t.Errorf("read %s after delete: %v", size, err)
		}
	}
	a = do(t, http.MethodDelete, e.url+"/photos/"+up.ID, nil, nil)
	if a.status != http.StatusNotFound {
		t.Errorf("second delete: HTTP %d %s", a.status, a.body)
	}
	a.errorMessage(t)

	// The other photo is untouched, and the recent list no longer holds
	// the deleted one.
	e.checkStored(t, keep, 300, 400)
	var rr recentResponse
	do(t, http.MethodGet, e.url+"/api/recent", nil, nil).decode(t, &rr)
	if len(rr.Photos) != 1 || rr.Photos[0].ID != keep.ID {
		t.Errorf("recent after delete: %+v", rr.Photos)
	}
	if m := metricsText(t, e.url); !strings.Contains(m, `haybale_gateway_cache_invalidations_total{result="ok"} 1`) ||
		!strings.Contains(m, `haybale_gateway_deletes_total{outcome="ok"} 1`) ||
		!strings.Contains(m, `haybale_gateway_deletes_total{outcome="not_found"} 1`) {
		t.Error("deletes or invalidations not counted")
	}
}

// TestDeleteWithCacheDown checks that an unreachable cache node does not
// fail the delete; the failure is reported and counted.
func TestDeleteWithCacheDown(t *testing.T) {
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{CacheNodes: []string{downURL}}})
	up := e.mustUpload(t, encodeJPEG(t, photoLike(200, 200, 10), 85), nil)
	a := do(t, http.MethodDelete, e.url+"/photos/"+up.ID, nil, nil)
	var dr deleteResponse
	a.decode(t, &dr)
	if a.status != http.StatusOK || !dr.Deleted || dr.CacheEvicted == nil || *dr.CacheEvicted {
		t.Errorf("delete with the cache down: HTTP %d %s", a.status, a.body)
	}
	if m := metricsText(t, e.url); !strings.Contains(m, `haybale_gateway_cache_invalidations_total{result="error"} 1`) {
		t.Error("the failed invalidation is not counted")
	}
	if a := do(t, http.MethodGet, e.url+"/photos/"+up.ID, nil, nil); a.status != http.StatusNotFound {
		t.Errorf("after delete: HTTP %d", a.status)
	}
}

// TestPhotoInfoAndRedirect checks GET /photos/{id} and the size
// redirects, and their 400s and 404s.
func TestPhotoInfoAndRedirect(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	up := e.mustUpload(t, encodeJPEG(t, photoLike(500, 300, 11), 85), nil)

	var info infoResponse
	a := do(t, http.MethodGet, e.url+"/photos/"+up.ID, nil, nil)
	a.decode(t, &info)
	if a.status != http.StatusOK || info.ID != up.ID || len(info.URLs) != 4 {
		t.Fatalf("info: HTTP %d %s", a.status, a.body)
	}
	// The placeholder: present in both answers, the same, and recording
	// the photo's landscape shape.
	if info.ThumbHash == "" || info.ThumbHash != up.ThumbHash {
		t.Errorf("thumbhash: info %q, upload %q", info.ThumbHash, up.ThumbHash)
	}
	hash, err := base64.StdEncoding.DecodeString(up.ThumbHash)
	if err != nil {
		t.Fatalf("thumbhash %q: %v", up.ThumbHash, err)
	}
	if len(hash) < 5 || len(hash) > 30 || hash[4]&0x80 == 0 { // bit 15 of the second header: landscape
		t.Errorf("thumbhash %x: %d bytes, want about 25 and the landscape bit", hash, len(hash))
	}
	for _, letter := range []string{"t", "s", "m", "l"} {
		if info.URLs[letter] != up.URLs[letter] || info.URLs[letter] == "" {
			t.Errorf("%s: info URL %q, upload URL %q", letter, info.URLs[letter], up.URLs[letter])
		}
		for _, suffix := range []string{letter, letter + ".jpg"} {
			a := do(t, http.MethodGet, e.url+"/photos/"+up.ID+"/"+suffix, nil, nil)
			if a.status != http.StatusFound || a.header.Get("Location") != info.URLs[letter] {
				t.Errorf("%s: HTTP %d Location %q", suffix, a.status, a.header.Get("Location"))
			}
		}
		// The URL serves the stored image.
		resp, err := http.Get(info.URLs[letter])
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != up.Sizes[letter].ContentType {
			t.Errorf("%s: GET %s: HTTP %d %s", letter, info.URLs[letter], resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}

	id := mustID(t, up.ID)
	wrongCookie := needle.PhotoID{Vid: id.Vid, Key: id.Key, Cookie: id.Cookie ^ 1}.String()
	unknownKey := needle.PhotoID{Vid: id.Vid, Key: id.Key + 1000, Cookie: id.Cookie}.String()
	for _, c := range []struct {
		path   string
		status int
	}{
		{"/photos/" + wrongCookie, http.StatusNotFound},
		{"/photos/" + unknownKey, http.StatusNotFound},
		{"/photos/not-a-photo-id", http.StatusBadRequest},
		{"/photos/7-1f4a9", http.StatusBadRequest},
		{"/photos/7-1F4A9-8c3e77d2a1b0c4f5", http.StatusBadRequest},
		{"/photos/7-1f4a9-8c3e77d2a1b0c4f5zz", http.StatusBadRequest},
		{"/photos/" + up.ID + "/x", http.StatusBadRequest},
		{"/photos/" + up.ID + "/o", http.StatusBadRequest},
		{"/photos/" + up.ID + "/large", http.StatusBadRequest},
		{"/photos/bad-id/m", http.StatusBadRequest},
		{"/photos/" + up.ID + "/m/extra", http.StatusNotFound},
		{"/nowhere", http.StatusNotFound},
	} {
		a := do(t, http.MethodGet, e.url+c.path, nil, nil)
		if a.status != c.status {
			t.Errorf("GET %s: HTTP %d %s, want %d", c.path, a.status, a.body, c.status)
			continue
		}
		a.errorMessage(t)
	}
	a = do(t, http.MethodDelete, e.url+"/photos/not-an-id", nil, nil)
	if a.status != http.StatusBadRequest {
		t.Errorf("DELETE malformed ID: HTTP %d", a.status)
	}
	a.errorMessage(t)
}

// TestWrongMethods checks 405 answers, with Allow and a JSON body.
func TestWrongMethods(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	id := "7-1f4a9-8c3e77d2a1b0c4f5"
	for _, c := range []struct{ method, path, allow string }{
		{http.MethodPut, "/photos", "POST"},
		{http.MethodDelete, "/photos", "POST"},
		{http.MethodPost, "/photos/" + id, "DELETE"},
		{http.MethodPut, "/photos/" + id, "DELETE"},
		{http.MethodDelete, "/photos/" + id + "/m", "GET"},
		{http.MethodPost, "/photos/" + id + "/m", "GET"},
		{http.MethodPost, "/api/recent", "GET"},
	} {
		a := do(t, c.method, e.url+c.path, nil, nil)
		if a.status != http.StatusMethodNotAllowed || !strings.Contains(a.header.Get("Allow"), c.allow) {
			t.Errorf("%s %s: HTTP %d Allow %q", c.method, c.path, a.status, a.header.Get("Allow"))
			continue
		}
		a.errorMessage(t)
	}
}

// TestRecentRing checks the recent list: newest first, bounded, and the
// same at /photos and /api/recent.
func TestRecentRing(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, gw: Options{RecentUploads: 2}})
	var ids []string
	for i := range 3 {
		ids = append(ids, e.mustUpload(t, encodeJPEG(t, photoLike(100+10*i, 80, uint64(20+i)), 80), nil).ID)
	}
	for _, path := range []string{"/api/recent", "/photos"} {
		var rr recentResponse
		a := do(t, http.MethodGet, e.url+path, nil, nil)
		a.decode(t, &rr)
		if len(rr.Photos) != 2 || rr.Photos[0].ID != ids[2] || rr.Photos[1].ID != ids[1] {
			t.Errorf("%s: %s", path, a.body)
			continue
		}
		if p := rr.Photos[0]; p.Width != 120 || p.Height != 80 || len(p.URLs) != 4 || p.Sizes["t"].Width != 80 {
			t.Errorf("%s: newest entry %+v", path, p)
		}
		if rr.MaxUploadBytes != e.gw.Options().MaxUploadBytes || rr.APIKeyRequired {
			t.Errorf("%s: limits %d, key required %v", path, rr.MaxUploadBytes, rr.APIKeyRequired)
		}
	}
}

func TestRecentRingRemove(t *testing.T) {
	r := newRecentRing(3)
	id := func(k uint64) needle.PhotoID { return needle.PhotoID{Vid: 1, Key: k, Cookie: 9} }
	for k := uint64(1); k <= 5; k++ {
		r.add(id(k), UploadResponse{ID: id(k).String()})
	}
	r.remove(id(4))
	r.remove(id(1)) // already dropped
	r.add(id(6), UploadResponse{ID: id(6).String()})
	r.add(id(7), UploadResponse{ID: id(7).String()})
	var got []string
	for _, p := range r.list() {
		got = append(got, p.ID)
	}
	want := []string{id(7).String(), id(6).String(), id(5).String()}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestWebPage checks the page and its assets are served, reference only
// this origin, and that the health and metric routes answer.
func TestWebPage(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	a := do(t, http.MethodGet, e.url+"/", nil, nil)
	if a.status != http.StatusOK || !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") ||
		!bytes.Contains(a.body, []byte(`id="upload-form"`)) || a.header.Get("Content-Security-Policy") == "" {
		t.Fatalf("GET /: HTTP %d %s", a.status, a.header)
	}
	for _, asset := range []struct{ path, ctype string }{{"/static/app.js", "javascript"}, {"/static/style.css", "text/css"}} {
		a := do(t, http.MethodGet, e.url+asset.path, nil, nil)
		if a.status != http.StatusOK || !strings.Contains(a.header.Get("Content-Type"), asset.ctype) || len(a.body) < 500 {
			t.Errorf("%s: HTTP %d %s, %d bytes", asset.path, a.status, a.header.Get("Content-Type"), len(a.body))
		}
	}
	// No external resources: the page must work without network access.
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?https?:`)
	err := fs.WalkDir(webFiles, "web", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(webFiles, path)
		if err != nil {
			return err
		}
		if m := external.Find(b); m != nil {
			t.Errorf("%s references an external resource: %q", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if a := do(t, http.MethodGet, e.url+"/static/nothing.js", nil, nil); a.status != http.StatusNotFound {
		t.Errorf("missing asset: HTTP %d", a.status)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if a := do(t, http.MethodGet, e.url+p, nil, nil); a.status != http.StatusOK {
			t.Errorf("%s: HTTP %d", p, a.status)
		}
	}
	m := metricsText(t, e.url)
	for _, name := range []string{
		"haybale_gateway_uploads_total", "haybale_gateway_resize_duration_seconds",
		"haybale_gateway_store_write_duration_seconds", "haybale_gateway_upload_bytes_received_total",
		"haybale_gateway_stored_bytes_total", "go_goroutines",
	} {
		if !strings.Contains(m, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestMetricsCountUpload checks the byte counters and histograms after
// one upload.
func TestMetricsCountUpload(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	data := encodeJPEG(t, photoLike(600, 400, 12), 85)
	up := e.mustUpload(t, data, nil)
	stored := 0
	for _, s := range up.Sizes {
		stored += s.Bytes + s.WebPBytes
	}
	m := metricsText(t, e.url)
	for _, want := range []string{
		`haybale_gateway_uploads_total{outcome="created"} 1`,
		fmt.Sprintf("haybale_gateway_upload_bytes_received_total %d", len(data)),
		fmt.Sprintf("haybale_gateway_stored_bytes_total %d", stored),
		"haybale_gateway_resize_duration_seconds_count 1",
		"haybale_gateway_store_write_duration_seconds_count 1",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestServer runs the gateway on a real listener and shuts it down.
func TestServer(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	srv, err := NewServer(e.gw, ServerOptions{HTTPAddr: "127.0.0.1:0", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	base := "http://" + srv.Addr().String()
	if a := do(t, http.MethodGet, base+"/healthz", nil, nil); a.status != http.StatusOK {
		t.Fatalf("healthz: HTTP %d", a.status)
	}
	up := e.mustUpload(t, encodeJPEG(t, photoLike(160, 120, 13), 80), nil)
	if a := do(t, http.MethodGet, base+"/photos/"+up.ID, nil, nil); a.status != http.StatusOK {
		t.Errorf("info through the server: HTTP %d %s", a.status, a.body)
	}
	if err := srv.Shutdown(bg); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("the server still answers after Shutdown")
	}
	if err := srv.Serve(ctx); err == nil {
		t.Error("a second Serve succeeded")
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New without a client succeeded")
	}
	cl, err := client.New(client.Options{Directory: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := New(Options{Client: cl}); err == nil {
		t.Error("New without a resizer succeeded")
	}
	g, err := New(Options{Client: cl, Resizer: resizer.New(resizer.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	if o := g.Options(); o.MaxUploadBytes != 32<<20 || o.RecentUploads != DefaultRecentUploads || o.MaxConcurrentUploads <= 0 {
		t.Errorf("defaults: %+v", o)
	}
	if _, err := New(Options{Client: cl, Resizer: resizer.New(resizer.Options{}), CacheNodes: []string{"a", "b"}, CacheEvictURLs: []string{"https://a:1"}}); err == nil {
		t.Error("New accepted fewer eviction URLs than cache nodes")
	}
	if _, err := New(Options{Client: cl, Resizer: resizer.New(resizer.Options{}), CacheNodes: []string{" "}}); err == nil {
		t.Error("an empty cache node name was accepted")
	}
}

// TestClusterDown checks that uploads and reads answer 503 when the
// stores are gone, and that the gateway still answers /healthz.
func TestClusterDown(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1})
	up := e.mustUpload(t, encodeJPEG(t, photoLike(200, 100, 14), 80), nil)
	e.c.Stores[0].Stop()
	a := e.uploadRaw(t, encodeJPEG(t, photoLike(200, 100, 15), 80), nil)
	if a.status != http.StatusServiceUnavailable {
		t.Errorf("upload with no store: HTTP %d %s", a.status, a.body)
	}
	a.errorMessage(t)
	a = do(t, http.MethodGet, e.url+"/photos/"+up.ID, nil, nil)
	if a.status != http.StatusServiceUnavailable {
		t.Errorf("info with no store: HTTP %d %s", a.status, a.body)
	}
	a.errorMessage(t)
	if a := do(t, http.MethodGet, e.url+"/healthz", nil, nil); a.status != http.StatusOK {
		t.Errorf("healthz: HTTP %d", a.status)
	}
}
