package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/imagetest"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/resizer"
	"github.com/haybale/haybale/store/volume"
)

var bg = context.Background()

// env is a cluster with a gateway in front of it, served by httptest.
type env struct {
	c   *testcluster.Cluster
	cl  *client.Client // the gateway's client
	gw  *Gateway
	url string
}

type envOptions struct {
	stores, replication int
	gw                  Options // Client and Resizer are filled in
	resizer             resizer.Options
	dial                []grpc.DialOption // for the gateway's client
}

func startEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	c := testcluster.Start(t, testcluster.Options{Stores: o.stores, Replication: o.replication, Secret: []byte("a secret for the gateway tests")})
	waitWritable(t, c)
	cl, err := client.New(client.Options{Directory: c.DirAddr, DialOptions: o.dial, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	opts := o.gw
	opts.Client = cl
	opts.Resizer = resizer.New(o.resizer)
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	gw, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw.Handler())
	t.Cleanup(srv.Close)
	return &env{c: c, cl: cl, gw: gw, url: srv.URL}
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// waitWritable waits until the directory can assign keys, which it can
// once it has allocated the first volume on the stores.
func waitWritable(t testing.TB, c *testcluster.Cluster) {
	t.Helper()
	cl, err := client.New(client.Options{Directory: c.DirAddr, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c.Eventually("a writable volume", func() error {
		_, err := cl.Assign(bg, 1)
		return err
	})
}

// volumeBytes is the sum over every store of its volumes' needle bytes
// (sizes without the superblock, so that a volume the directory allocates
// meanwhile does not count as a write).
func volumeBytes(c *testcluster.Cluster) int64 {
	var n int64
	for _, s := range c.Stores {
		for _, v := range s.Srv.Store().Volumes() {
			n += v.Status().Size - volume.SuperblockSize
		}
	}
	return n
}

// answer is an HTTP answer read completely.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// decode decodes the JSON body into v, failing the test when it is not
// JSON of the right type.
func (a answer) decode(t testing.TB, v any) {
	t.Helper()
	if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("HTTP %d: Content-Type %q, want JSON; body %q", a.status, ct, a.body)
	}
	if err := json.Unmarshal(a.body, v); err != nil {
		t.Fatalf("HTTP %d: body %q: %v", a.status, a.body, err)
	}
}

// errorMessage returns the "error" of a JSON error answer, failing the
// test when there is none.
func (a answer) errorMessage(t testing.TB) string {
	t.Helper()
	var e errorResponse
	a.decode(t, &e)
	if e.Error == "" {
		t.Fatalf("HTTP %d: no error message in %q", a.status, a.body)
	}
	return e.Error
}

var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func do(t testing.TB, method, url string, body io.Reader, header map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// uploadRaw posts data as the raw body.
func (e *env) uploadRaw(t testing.TB, data []byte, header map[string]string) answer {
	t.Helper()
	h := map[string]string{"Content-Type": "application/octet-stream"}
	for k, v := range header {
		h[k] = v
	}
	return do(t, http.MethodPost, e.url+"/photos", bytes.NewReader(data), h)
}

// multipartBody returns a multipart/form-data body with a caption field
// and data in the field "file", and its Content-Type.
func multipartBody(t testing.TB, field string, data []byte) (*bytes.Buffer, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if err := mw.WriteField("caption", "a field before the file"); err != nil {
		t.Fatal(err)
	}
	fw, err := mw.CreateFormFile(field, "holiday.png") // the name is ignored
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(data)
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf, mw.FormDataContentType()
}

// mustUpload uploads data raw and returns the 201 answer.
func (e *env) mustUpload(t testing.TB, data []byte, header map[string]string) UploadResponse {
	t.Helper()
	a := e.uploadRaw(t, data, header)
	if a.status != http.StatusCreated {
		t.Fatalf("upload: HTTP %d %s", a.status, a.body)
	}
	var up UploadResponse
	a.decode(t, &up)
	return up
}

// readStored reads one stored size of a photo back through the client.
func (e *env) readStored(t testing.TB, id string, size needle.SizeCode) *client.Fetched {
	t.Helper()
	pid, err := needle.ParsePhotoID(id)
	if err != nil {
		t.Fatal(err)
	}
	f, err := e.cl.Read(bg, pid, size)
	if err != nil {
		t.Fatalf("read %s/%s: %v", id, size, err)
	}
	return f
}

// checkStored checks an upload answer against what the stores hold: four
// images that decode to the sizes the size table gives for an upright
// w×h source, with the answer's dimensions, and no metadata. It returns
// the decoded images.
func (e *env) checkStored(t testing.TB, up UploadResponse, w, h int) [resizer.NumSizes]image.Image {
	t.Helper()
	if up.Width != w || up.Height != h {
		t.Errorf("answer says %dx%d, want %dx%d", up.Width, up.Height, w, h)
	}
	if _, err := needle.ParsePhotoID(up.ID); err != nil {
		t.Fatalf("answer's ID %q: %v", up.ID, err)
	}
	want := resizer.Dimensions(w, h)
	var out [resizer.NumSizes]image.Image
	for code, spec := range resizer.Specs() {
		if u := up.URLs[spec.Letter]; !strings.Contains(u, needle.ImagePath(mustID(t, up.ID), needle.SizeCode(code), "")) {
			t.Errorf("%s: URL %q does not name the image", spec.Letter, u)
		}
		f := e.readStored(t, up.ID, needle.SizeCode(code))
		m := decodeImage(t, f.ContentType, f.Data)
		if got := m.Bounds().Size(); got != want[code] {
			t.Errorf("%s: stored %v, want %v", spec.Letter, got, want[code])
		}
		if si := up.Sizes[spec.Letter]; si.Width != want[code].X || si.Height != want[code].Y || si.ContentType != f.ContentType || si.Bytes != len(f.Data) {
			t.Errorf("%s: answer says %+v; stored %v %s, %d bytes", spec.Letter, si, want[code], f.ContentType, len(f.Data))
		}
		if bad := metadata(f.ContentType, f.Data); bad != "" {
			t.Errorf("%s: stored image carries %s", spec.Letter, bad)
		}
		out[code] = m
	}
	return out
}

func mustID(t testing.TB, s string) needle.PhotoID {
	t.Helper()
	id, err := needle.ParsePhotoID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func decodeImage(t testing.TB, contentType string, data []byte) image.Image {
	t.Helper()
	var m image.Image
	var err error
	switch contentType {
	case "image/jpeg":
		m, err = jpeg.Decode(bytes.NewReader(data))
	case "image/png":
		m, err = png.Decode(bytes.NewReader(data))
	default:
		t.Fatalf("stored content type %q", contentType)
	}
	if err != nil {
		t.Fatalf("stored %s does not decode: %v", contentType, err)
	}
	return m
}

// metadata describes the first segment or chunk of a stored image that is
// not needed to decode it (JPEG APPn or COM, PNG ancillary chunks other
// than tRNS), or returns "". A JPEG's ICC profile (APP2 "ICC_PROFILE") is
// not metadata: the resizer carries wide-gamut profiles on purpose.
func metadata(contentType string, data []byte) string {
	if bytes.Contains(data, []byte("Exif\x00")) {
		return "an Exif header"
	}
	switch contentType {
	case "image/jpeg":
		for pos := 2; pos+4 <= len(data) && data[pos] == 0xFF; {
			m := data[pos+1]
			switch {
			case m == 0xDA:
				return ""
			case m == 0xE2 && bytes.HasPrefix(data[pos+4:], []byte("ICC_PROFILE\x00")):
			case m >= 0xE0 && m <= 0xEF:
				return fmt.Sprintf("an APP%d segment", m-0xE0)
			case m == 0xFE:
				return "a COM segment"
			}
			pos += 2 + int(binary.BigEndian.Uint16(data[pos+2:]))
		}
		return "a malformed header"
	case "image/png":
		return imagetest.PNGMetadata(data)
	}
	return "an unknown format"
}

func encodeJPEG(t testing.TB, m image.Image, quality int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, m, &jpeg.Options{Quality: quality}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func encodePNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// photoLike returns a w×h image with smooth gradients, waves and fine
// noise, which compresses about as a photograph does.
func photoLike(w, h int, seed uint64) *image.YCbCr {
	rng := rand.New(rand.NewPCG(seed, 7))
	m := image.NewYCbCr(image.Rect(0, 0, w, h), image.YCbCrSubsampleRatio420)
	fx, fy := 6*math.Pi/float64(w), 4*math.Pi/float64(h)
	for y := range h {
		for x := range w {
			v := 128 + 60*math.Sin(float64(x)*fx+2*math.Sin(float64(y)*fy)) + 30*math.Cos(float64(y)*fy*1.7) + float64(rng.IntN(25)) - 12
			m.Y[y*m.YStride+x] = uint8(max(0, min(255, v)))
		}
	}
	for y := range (h + 1) / 2 {
		for x := range (w + 1) / 2 {
			m.Cb[y*m.CStride+x] = uint8(128 + 50*math.Sin(float64(x)*fx*2))
			m.Cr[y*m.CStride+x] = uint8(128 + 50*math.Cos(float64(y)*fy*2))
		}
	}
	return m
}

// gpsLatitude is the GPS latitude written by exifSegment: 51° 30' 26".
var gpsLatitude = []uint32{51, 30, 26}

// exifSegment returns a JPEG APP1 Exif segment (little-endian TIFF) with
// IFD0 holding Make, the orientation (unless 0) and, with gps, a GPS IFD
// with a north latitude.
func exifSegment(orientation int, gps bool) []byte {
	type entry struct {
		tag, typ uint16
		count    uint32
		value    []byte // inline when at most 4 bytes
	}
	le := binary.LittleEndian
	u16 := func(v uint16) []byte { return le.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	ifd0 := []entry{{0x010F, 2, 10, []byte("GatewayCam")}}
	if orientation != 0 {
		ifd0 = append(ifd0, entry{0x0112, 3, 1, u16(uint16(orientation))})
	}
	var gpsIFD []entry
	if gps {
		var lat []byte
		for _, v := range gpsLatitude {
			lat = append(append(lat, u32(v)...), u32(1)...)
		}
		ifd0 = append(ifd0, entry{0x8825, 4, 1, nil}) // offset set below
		gpsIFD = []entry{{0x0001, 2, 2, []byte("N\x00")}, {0x0002, 5, 3, lat}}
	}
	ifdLen := func(n int) int { return 2 + 12*n + 4 }
	gpsOff := 8 + ifdLen(len(ifd0))
	dataOff := gpsOff
	if gps {
		dataOff += ifdLen(len(gpsIFD))
		ifd0[len(ifd0)-1].value = u32(uint32(gpsOff))
	}
	out := le.AppendUint32([]byte("II*\x00"), 8)
	var data []byte
	writeIFD := func(es []entry) {
		out = le.AppendUint16(out, uint16(len(es)))
		for _, e := range es {
			out = le.AppendUint16(out, e.tag)
			out = le.AppendUint16(out, e.typ)
			out = le.AppendUint32(out, e.count)
			if len(e.value) <= 4 {
				out = append(out, append(append([]byte{}, e.value...), make([]byte, 4-len(e.value))...)...)
			} else {
				out = le.AppendUint32(out, uint32(dataOff+len(data)))
				data = append(data, e.value...)
			}
		}
		out = le.AppendUint32(out, 0)
	}
	writeIFD(ifd0)
	if gps {
		writeIFD(gpsIFD)
	}
	payload := append([]byte("Exif\x00\x00"), append(out, data...)...)
	seg := []byte{0xFF, 0xE1, 0, 0}
	binary.BigEndian.PutUint16(seg[2:], uint16(len(payload)+2))
	return append(seg, payload...)
}

// withSegment splices a segment right after the SOI of a JPEG.
func withSegment(jpg, seg []byte) []byte {
	out := append([]byte{}, jpg[:2]...)
	out = append(out, seg...)
	return append(out, jpg[2:]...)
}
