package thumbhash

import (
	"encoding/hex"
	"image"
	"image/color"
	"math"
	"testing"
)

// fill returns a w×h image painted by f.
func fill(w, h int, f func(x, y int) color.NRGBA) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, f(x, y))
		}
	}
	return img
}

// mean returns the alpha-weighted mean colour of img and its mean alpha.
func mean(img *image.NRGBA) (r, g, b, a float64) {
	var n float64
	for i := 0; i < len(img.Pix); i += 4 {
		al := float64(img.Pix[i+3])
		r += float64(img.Pix[i]) * al
		g += float64(img.Pix[i+1]) * al
		b += float64(img.Pix[i+2]) * al
		a += al
		n++
	}
	if a > 0 {
		r, g, b = r/a, g/a, b/a
	}
	return r, g, b, a / n
}

func TestRoundTrip(t *testing.T) {
	cases := []struct {
		name  string
		img   *image.NRGBA
		ratio float64 // the recorded aspect ratio
	}{
		{"solid orange 100x75", fill(100, 75, func(x, y int) color.NRGBA { return color.NRGBA{230, 120, 30, 255} }), 7.0 / 5},
		{"blue-to-green portrait 60x100", fill(60, 100, func(x, y int) color.NRGBA {
			return color.NRGBA{20, uint8(2 * y), uint8(255 - 2*y), 255}
		}), 4.0 / 7},
		{"square stripes 50x50", fill(50, 50, func(x, y int) color.NRGBA {
			if x/5%2 == 0 {
				return color.NRGBA{200, 200, 200, 255}
			}
			return color.NRGBA{40, 40, 40, 255}
		}), 1},
		{"red disc on transparent 80x80", fill(80, 80, func(x, y int) color.NRGBA {
			if (x-40)*(x-40)+(y-40)*(y-40) < 30*30 {
				return color.NRGBA{220, 20, 20, 255}
			}
			return color.NRGBA{0, 0, 0, 0}
		}), 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hash, err := Encode(c.img)
			if err != nil {
				t.Fatal(err)
			}
			if len(hash) < 5 || len(hash) > 30 {
				t.Errorf("hash is %d bytes, want about 25", len(hash))
			}
			ratio, err := AspectRatio(hash)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(ratio-c.ratio) > 1e-9 {
				t.Errorf("aspect ratio %v, want %v", ratio, c.ratio)
			}
			wantR, wantG, wantB, wantA := mean(c.img)
			avg, err := AverageColor(hash)
			if err != nil {
				t.Fatal(err)
			}
			const tol = 12 // the DC terms are 6-bit
			if math.Abs(float64(avg.R)-wantR) > tol || math.Abs(float64(avg.G)-wantG) > tol || math.Abs(float64(avg.B)-wantB) > tol {
				t.Errorf("average colour %v, want about %.0f,%.0f,%.0f", avg, wantR, wantG, wantB)
			}
			img, err := Decode(hash)
			if err != nil {
				t.Fatal(err)
			}
			b := img.Bounds()
			if max(b.Dx(), b.Dy()) != 32 || math.Abs(float64(b.Dx())/float64(b.Dy())-ratio) > 0.05 {
				t.Errorf("decoded %dx%d for ratio %v", b.Dx(), b.Dy(), ratio)
			}
			r, g, bl, a := mean(img)
			if math.Abs(r-wantR) > 2*tol || math.Abs(g-wantG) > 2*tol || math.Abs(bl-wantB) > 2*tol {
				t.Errorf("decoded mean colour %.0f,%.0f,%.0f, want about %.0f,%.0f,%.0f", r, g, bl, wantR, wantG, wantB)
			}
			if math.Abs(a-wantA) > 0.1*255 {
				t.Errorf("decoded mean alpha %.0f, want about %.0f", a, wantA)
			}
		})
	}
}

// TestGradientDirection checks that the AC terms carry structure: a
// left-dark, right-bright image decodes darker on its left.
func TestGradientDirection(t *testing.T) {
	img := fill(90, 60, func(x, y int) color.NRGBA { v := uint8(x * 255 / 89); return color.NRGBA{v, v, v, 255} })
	hash, err := Encode(img)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Decode(hash)
	if err != nil {
		t.Fatal(err)
	}
	w, h := out.Bounds().Dx(), out.Bounds().Dy()
	left, right := out.NRGBAAt(2, h/2).R, out.NRGBAAt(w-3, h/2).R
	if int(right)-int(left) < 120 {
		t.Errorf("left %d, right %d: the gradient was lost", left, right)
	}
}

// TestVector pins the bytes of one hash so that a change to the encoder
// is noticed: an opaque 4×2 image of two colours.
func TestVector(t *testing.T) {
	img := fill(4, 2, func(x, y int) color.NRGBA {
		if x < 2 {
			return color.NRGBA{255, 0, 0, 255}
		}
		return color.NRGBA{0, 0, 255, 255}
	})
	hash, err := Encode(img)
	if err != nil {
		t.Fatal(err)
	}
	avg, _ := AverageColor(hash)
	if avg.A != 255 || hash[2]&0x80 != 0 {
		t.Errorf("an opaque image recorded alpha: %x", hash)
	}
	if hash[4]&0x80 == 0 {
		t.Errorf("a 4x2 image not recorded as landscape: %x", hash)
	}
	if got, want := hex.EncodeToString(hash), "15f602fcaa69554f8a888885888c8f87f88878"; got != want {
		t.Errorf("hash %s, want %s", got, want)
	}
}

func TestErrors(t *testing.T) {
	if _, err := Encode(image.NewNRGBA(image.Rect(0, 0, 101, 10))); err == nil {
		t.Error("a 101-pixel-wide image was accepted")
	}
	if _, err := Encode(image.NewNRGBA(image.Rect(0, 0, 0, 10))); err == nil {
		t.Error("an empty image was accepted")
	}
	for _, h := range [][]byte{nil, {1, 2, 3}, {0, 0, 0x80, 0, 0}} {
		if _, err := Decode(h); err == nil {
			t.Errorf("Decode(%x) succeeded", h)
		}
	}
	full, _ := Encode(fill(10, 10, func(x, y int) color.NRGBA { return color.NRGBA{uint8(x * 20), 9, 9, 255} }))
	if _, err := Decode(full[:len(full)-3]); err == nil {
		t.Error("a truncated hash decoded")
	}
}
