package resizer

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/jpeg"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	gwebp "github.com/gen2brain/webp"
)

// ssim returns the mean structural similarity of the luma of a and b (same
// size) as Wang et al. (2004) define it: an 11×11 Gaussian window of
// σ = 1.5 at every position where it fits, and their constants for 8-bit
// samples. 1 means identical.
func ssim(a, b image.Image) float64 {
	ya, yb := luma(a), luma(b)
	w, h := a.Bounds().Dx(), a.Bounds().Dy()
	const r = 5
	var g [2*r + 1]float64
	var gs float64
	for i := range g {
		d := float64(i - r)
		g[i] = math.Exp(-d * d / (2 * 1.5 * 1.5))
		gs += g[i]
	}
	for i := range g {
		g[i] /= gs
	}
	if w < 2*r+1 || h < 2*r+1 {
		return 1
	}
	// blur filters the product of two luma maps with the window, on the
	// positions where it fits.
	ow, oh := w-2*r, h-2*r
	blur := func(p, q []float64) []float64 {
		tmp := make([]float64, ow*h)
		for y := range h {
			for x := range ow {
				var s float64
				for k, gk := range g {
					i := y*w + x + k
					s += gk * p[i] * q[i]
				}
				tmp[y*ow+x] = s
			}
		}
		out := make([]float64, ow*oh)
		for y := range oh {
			for x := range ow {
				var s float64
				for k, gk := range g {
					s += gk * tmp[(y+k)*ow+x]
				}
				out[y*ow+x] = s
			}
		}
		return out
	}
	one := make([]float64, w*h)
	for i := range one {
		one[i] = 1
	}
	ma, mb := blur(ya, one), blur(yb, one)
	saa, sbb, sab := blur(ya, ya), blur(yb, yb), blur(ya, yb)
	const c1, c2 = (0.01 * 255) * (0.01 * 255), (0.03 * 255) * (0.03 * 255)
	var sum float64
	for i := range ma {
		va, vb, cov := saa[i]-ma[i]*ma[i], sbb[i]-mb[i]*mb[i], sab[i]-ma[i]*mb[i]
		sum += (2*ma[i]*mb[i] + c1) * (2*cov + c2) / ((ma[i]*ma[i] + mb[i]*mb[i] + c1) * (va + vb + c2))
	}
	return sum / float64(len(ma))
}

// decodeWebP decodes a WebP as a browser shows it. Both Go decoders
// return a lossy WebP's planes as Y'CbCr, which Go converts to RGB as full
// range (JFIF), but VP8 codes BT.601 limited range (Y' 16-235, Cb and Cr
// 16-240): read that way the image loses contrast (about 0.02 of SSIM,
// and a saturated red comes out as 238,14,13). This converts them with
// libwebp's own limited-range matrix.
func decodeWebP(data []byte) (image.Image, error) {
	m, err := gwebp.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	var yc *image.YCbCr
	var alpha []uint8
	switch v := m.(type) {
	case *image.YCbCr:
		yc = v
	case *image.NYCbCrA:
		yc, alpha = &v.YCbCr, v.A
	default:
		return m, nil
	}
	b := yc.Rect
	out := image.NewNRGBA(b)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			yy := 1.164 * (float64(yc.Y[yc.YOffset(x, y)]) - 16)
			ci := yc.COffset(x, y)
			cb, cr := float64(yc.Cb[ci])-128, float64(yc.Cr[ci])-128
			o := out.PixOffset(x, y)
			out.Pix[o] = clampF(yy + 1.596*cr)
			out.Pix[o+1] = clampF(yy - 0.392*cb - 0.813*cr)
			out.Pix[o+2] = clampF(yy + 2.017*cb)
			out.Pix[o+3] = 255
			if alpha != nil {
				out.Pix[o+3] = alpha[(y-b.Min.Y)*yc.YStride+(x-b.Min.X)]
			}
		}
	}
	return out, nil
}

func clampF(v float64) uint8 { return uint8(max(0, min(255, math.Round(v)))) }

// luma returns the BT.601 luma of img, row-major, 0..255.
func luma(img image.Image) []float64 {
	b := img.Bounds()
	out := make([]float64, 0, b.Dx()*b.Dy())
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			out = append(out, (0.299*float64(r)+0.587*float64(g)+0.114*float64(bl))/257)
		}
	}
	return out
}

func TestSSIM(t *testing.T) {
	a := image.NewGray(image.Rect(0, 0, 32, 32))
	for i := range a.Pix {
		a.Pix[i] = byte(i * 7)
	}
	if s := ssim(a, a); math.Abs(s-1) > 1e-9 {
		t.Errorf("ssim(a, a) = %v, want 1", s)
	}
	b := image.NewGray(a.Rect)
	copy(b.Pix, a.Pix)
	for i := range b.Pix {
		if i%3 == 0 {
			b.Pix[i] ^= 0x40
		}
	}
	if s := ssim(a, b); s > 0.9 || s < -1 {
		t.Errorf("ssim of a damaged copy = %v, want well under 1", s)
	}
}

// reference returns the upright source of the photo at output size code,
// resampled in one step from the decoded image: what both encodings are
// judged against.
func reference(t *testing.T, data []byte, code int) (image.Image, Info) {
	t.Helper()
	r := New(Options{NoWebP: true})
	info, err := r.Probe(data)
	if err != nil {
		t.Fatal(err)
	}
	img, err := decode(info, data)
	if err != nil {
		t.Fatal(err)
	}
	src := working(img, isOpaque(img))
	d := Dimensions(info.Width, info.Height)[code]
	if info.Orientation >= 5 {
		d = image.Pt(d.Y, d.X)
	}
	return orient(resize(src, src.Bounds(), d.X, d.Y, lanczos3), info.Orientation), info
}

// ssimFiles are the corpus photos the WebP quality is judged on: camera
// JPEGs of several sizes and subjects, a PNG photo and a lossy WebP.
var ssimFiles = []string{"Landscape_1.jpg", "Storm.jpg", "Landscape_9.jpg", "embedgravitybird.png", "4.webp"}

// TestWebPQualityMatchesJPEG checks, on corpus photos, that the lossy WebP
// of each of s, m and l is at least as close to the source at that size
// (SSIM) as the JPEG, less a small tolerance, and smaller in bytes over
// all. It logs the figures bench/RESULTS.md reports. With
// HAYBALE_WEBP_SWEEP=1 it also logs SSIM and bytes of m for WebP qualities
// 66 to 90, which is how WebPQuality was chosen.
func TestWebPQualityMatchesJPEG(t *testing.T) {
	dir := photosDir(t)
	if testing.Short() || raceEnabled {
		t.Skip("encodes a dozen WebPs; skipped under -short and -race")
	}
	r := New(Options{})
	var jpegBytes, webpBytes [NumSizes]int
	var jpegSSIM, webpSSIM [NumSizes]float64
	var count [NumSizes]int
	for _, file := range ssimFiles {
		data, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		res, err := r.Process(context.Background(), data)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for code := 1; code < NumSizes; code++ {
			out := res.Images[code]
			if out.ContentType != "image/jpeg" || code < NumSizes-1 && out.Width == res.Images[code+1].Width {
				continue // the same bytes as the next size
			}
			if out.Source {
				continue // the upload's own data, not an encoding to compare
			}
			ref, _ := reference(t, data, code)
			jm, err := jpeg.Decode(bytes.NewReader(out.Data))
			if err != nil {
				t.Fatal(err)
			}
			wm, err := decodeWebP(out.WebP)
			if err != nil {
				t.Fatal(err)
			}
			sj, sw := ssim(ref, jm), ssim(ref, wm)
			t.Logf("%-26s %s %4dx%-4d JPEG %7d B SSIM %.4f | WebP %7d B SSIM %.4f (%+.1f%% bytes)",
				file, out.Letter, out.Width, out.Height, len(out.Data), sj, len(out.WebP), sw,
				100*float64(len(out.WebP)-len(out.Data))/float64(len(out.Data)))
			jpegBytes[code] += len(out.Data)
			webpBytes[code] += len(out.WebP)
			jpegSSIM[code] += sj
			webpSSIM[code] += sw
			count[code]++
			if os.Getenv("HAYBALE_WEBP_SWEEP") != "" && code == 2 {
				sweep(t, file, ref, len(out.Data), sj)
			}
		}
	}
	var jb, wb int
	for code := 1; code < NumSizes; code++ {
		if count[code] == 0 {
			continue
		}
		n := float64(count[code])
		t.Logf("size %s over %d photos: JPEG %d B mean SSIM %.4f | WebP %d B mean SSIM %.4f | WebP saves %.1f%%",
			Specs()[code].Letter, count[code], jpegBytes[code], jpegSSIM[code]/n, webpBytes[code], webpSSIM[code]/n,
			100*(1-float64(webpBytes[code])/float64(jpegBytes[code])))
		if webpSSIM[code]/n < jpegSSIM[code]/n-0.01 {
			t.Errorf("size %s: WebP mean SSIM %.4f is below the JPEG's %.4f", Specs()[code].Letter, webpSSIM[code]/n, jpegSSIM[code]/n)
		}
		jb += jpegBytes[code]
		wb += webpBytes[code]
	}
	if wb >= jb {
		t.Errorf("WebP outputs total %d bytes, not fewer than the JPEGs' %d", wb, jb)
	}
}

// sweep logs the SSIM and size of ref encoded as WebP at several qualities.
func sweep(t *testing.T, file string, ref image.Image, jpegLen int, jpegSSIM float64) {
	var line bytes.Buffer
	fmt.Fprintf(&line, "%s m JPEG q%d %d B %.4f; WebP:", file, JPEGQuality, jpegLen, jpegSSIM)
	for q := 66; q <= 90; q += 4 {
		var buf bytes.Buffer
		if err := gwebp.Encode(&buf, ref, gwebp.Options{Quality: q, Method: webpMethod}); err != nil {
			t.Fatal(err)
		}
		m, err := decodeWebP(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		line.WriteString(" q" + strconv.Itoa(q) + fmt.Sprintf(" %d B %.4f;", buf.Len(), ssim(ref, m)))
	}
	t.Log(line.String())
}
