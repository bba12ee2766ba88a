package resizer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"image/png"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/gen2brain/avif"
	"github.com/gen2brain/heic"
	gwebp "github.com/gen2brain/webp"
	"golang.org/x/image/webp"
	"golang.org/x/sync/semaphore"

	"github.com/haybale/haybale/internal/thumbhash"
)

// Defaults of Options.
const (
	DefaultMaxBytes     = 32 << 20   // 32 MiB
	DefaultMaxPixels    = 80_000_000 // 80 megapixels
	DefaultDecodeMemory = 1 << 30    // 1 GiB
)

// JPEGQuality is the quality of every JPEG output.
const JPEGQuality = 85

// WebPQuality is the quality of every lossy WebP output. It was chosen so
// that the WebP's SSIM against the resized pixels matches the JPEG's at
// JPEGQuality, measured on the photo corpus (TestWebPQualityMatchesJPEG,
// bench/RESULTS.md).
const WebPQuality = 82

// webpMethod is libwebp's speed/size trade-off (0 fastest .. 6 smallest).
const webpMethod = 4

// Options configures a Resizer. A zero field takes its default.
type Options struct {
	// MaxBytes is the longest accepted input in bytes. Default
	// DefaultMaxBytes (32 MiB).
	MaxBytes int64
	// MaxPixels is the largest accepted width×height, as declared by the
	// image header and checked before decoding. For GIF the logical screen
	// counts, for WebP the canvas. Default DefaultMaxPixels (80 MP).
	MaxPixels int64
	// MaxConcurrent is how many images may be decoded, resized and encoded
	// at once; further calls to Process wait for a slot. Default
	// runtime.NumCPU().
	MaxConcurrent int
	// DecodeMemory is the memory budget of decoding and resizing, in
	// bytes, shared by every call to Process on this Resizer. Each image
	// is charged the estimate of Info.Memory, from its header, before it
	// is decoded; an image whose estimate exceeds the whole budget is
	// ErrTooLarge, others wait until the images in progress leave room.
	// Use one Resizer per process so that the budget is the process's.
	// Default DefaultDecodeMemory (1 GiB).
	DecodeMemory int64
	// NoWebP turns off the WebP encoding made beside each JPEG or PNG
	// output (Image.WebP stays nil). WebP outputs are made by default.
	NoWebP bool
}

// Resizer decodes uploads and produces the four sizes. It is safe for
// concurrent use; construct it with New.
type Resizer struct {
	opts Options
	// memory is the decode memory budget, in bytes (Options.DecodeMemory).
	// It is taken before a slot: a caller holding a slot never waits for
	// memory, so the two cannot deadlock.
	memory *semaphore.Weighted
	// inUse is the part of the budget charged now, for MemoryInUse.
	inUse atomic.Int64
	// slots bounds concurrent decodes: a send takes a slot.
	slots chan struct{}
}

// New returns a Resizer with the given options, defaults filled in.
func New(opts Options) *Resizer {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxPixels <= 0 {
		opts.MaxPixels = DefaultMaxPixels
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = runtime.NumCPU()
	}
	if opts.DecodeMemory <= 0 {
		opts.DecodeMemory = DefaultDecodeMemory
	}
	return &Resizer{
		opts:   opts,
		memory: semaphore.NewWeighted(opts.DecodeMemory),
		slots:  make(chan struct{}, opts.MaxConcurrent),
	}
}

// MemoryInUse returns the bytes of the decode memory budget charged to the
// images being decoded and resized now.
func (r *Resizer) MemoryInUse() int64 { return r.inUse.Load() }

// Options returns the options in effect, defaults filled in.
func (r *Resizer) Options() Options { return r.opts }

// NumSizes is the number of outputs; size codes are 0..NumSizes-1.
const NumSizes = 4

// Spec is one row of the size table.
type Spec struct {
	// Letter names the size in URLs: "t", "s", "m" or "l".
	Letter string
	// Box is the side of the square box in pixels.
	Box int
	// Crop is true for a fill: the centre square of the image scaled to the
	// box (t). Otherwise the image is fitted inside the box.
	Crop bool
}

// Specs returns the size table, indexed by size code.
func Specs() [NumSizes]Spec {
	return [NumSizes]Spec{
		{Letter: "t", Box: 150, Crop: true},
		{Letter: "s", Box: 480},
		{Letter: "m", Box: 1080},
		{Letter: "l", Box: 2048},
	}
}

// Dimensions returns the width and height of each output, indexed by size
// code, for an upright source of width×height pixels (both at least 1). t is
// a square of min(150, shorter side); the others fit the source inside their
// box, never upscaled, rounding to the nearest pixel and at least 1.
func Dimensions(width, height int) [NumSizes]image.Point {
	var d [NumSizes]image.Point
	for i, s := range Specs() {
		if s.Crop {
			side := min(s.Box, width, height)
			d[i] = image.Pt(side, side)
			continue
		}
		d[i] = fit(width, height, s.Box)
	}
	return d
}

// fit returns w×h scaled to fit inside box×box, or unchanged if it does.
func fit(w, h, box int) image.Point {
	switch {
	case w <= box && h <= box:
		return image.Pt(w, h)
	case w >= h:
		return image.Pt(box, max(1, (2*h*box+w)/(2*w)))
	default:
		return image.Pt(max(1, (2*w*box+h)/(2*h)), box)
	}
}

// Info describes an input as read from its header.
type Info struct {
	Format Format
	// Width and Height are those of the upright image: after the EXIF
	// orientation, which swaps them for orientations 5 to 8.
	Width, Height int
	// Orientation is the JPEG EXIF orientation, 1..8; 1 when absent or
	// invalid and for other formats. HEIC and AVIF are turned upright by
	// their decoders (irot and imir), so theirs is 1 too.
	Orientation int
	// Memory is the estimate, from the header, of the bytes that decoding
	// and resizing the image need at most: the decoded pixels with the
	// decoder's own transients (a progressive JPEG's coefficients, a CMYK
	// or RGB JPEG's converted copy, an interlaced PNG's passes) and the
	// resizing buffers. See memory.go for the table it follows.
	Memory int64
}

// storedSize returns the size of the image as stored, before orientation.
func (in Info) storedSize() (w, h int) {
	if in.Orientation >= 5 {
		return in.Height, in.Width
	}
	return in.Width, in.Height
}

// Probe checks data against the limits and reads its format, size and
// orientation from the header, without decoding the pixels. It returns the
// same errors as Process for everything a header reveals; a successful Probe
// does not mean the pixels decode.
func (r *Resizer) Probe(data []byte) (info Info, err error) {
	if len(data) == 0 {
		return Info{}, ErrEmpty
	}
	if int64(len(data)) > r.opts.MaxBytes {
		return Info{}, fmt.Errorf("%w: %d bytes, over the %d-byte limit", ErrTooLarge, len(data), r.opts.MaxBytes)
	}
	f, err := Sniff(data)
	if err != nil {
		return Info{}, err
	}
	info = Info{Format: f, Orientation: 1}
	var jh jpegHeader
	switch f {
	case JPEG:
		jh = scanJPEG(data)
		if name := unsupportedSOF(jh.sof); name != "" {
			return Info{}, fmt.Errorf("%w: %s", ErrUnsupported, name)
		}
		if jh.orientation != 0 {
			info.Orientation = jh.orientation
		}
	case WebP:
		if webpAnimated(data) {
			return Info{}, fmt.Errorf("%w: animated WebP", ErrUnsupported)
		}
	}
	var cfg image.Config
	if f == HEIC || f == AVIF {
		// The size comes from the ispe box: the decoders' own
		// DecodeConfig would start the decoder.
		hi, err := readHEIF(data)
		if err != nil {
			return Info{}, err
		}
		cfg.Width, cfg.Height = hi.width, hi.height
		if hi.rotation%2 == 1 {
			cfg.Width, cfg.Height = hi.height, hi.width
		}
	} else if cfg, err = decodeConfig(f, data); err != nil {
		return Info{}, err
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return Info{}, fmt.Errorf("%w: %s header declares %dx%d pixels", ErrCorrupt, f, cfg.Width, cfg.Height)
	}
	// A HEIF declares each side in 32 bits, so the product could
	// overflow: a side alone over the limit is refused first.
	if int64(cfg.Width) > r.opts.MaxPixels || int64(cfg.Height) > r.opts.MaxPixels {
		return Info{}, fmt.Errorf("%w: image is %dx%d, over the %s MP limit",
			ErrTooLarge, cfg.Width, cfg.Height, megapixels(r.opts.MaxPixels))
	}
	if px := int64(cfg.Width) * int64(cfg.Height); px > r.opts.MaxPixels {
		return Info{}, fmt.Errorf("%w: image is %dx%d (%s MP), over the %s MP limit",
			ErrTooLarge, cfg.Width, cfg.Height, megapixels(px), megapixels(r.opts.MaxPixels))
	}
	info.Memory = estimateMemory(f, data, &jh, cfg.Width, cfg.Height, !r.opts.NoWebP)
	if info.Memory > r.opts.DecodeMemory {
		return Info{}, fmt.Errorf("%w: decoding the %dx%d %s needs about %s, over the %s decode memory budget",
			ErrTooLarge, cfg.Width, cfg.Height, f, mib(info.Memory), mib(r.opts.DecodeMemory))
	}
	info.Width, info.Height = cfg.Width, cfg.Height
	if info.Orientation >= 5 {
		info.Width, info.Height = cfg.Height, cfg.Width
	}
	return info, nil
}

// megapixels formats a pixel count for a message: "4290", "12.2", "0.001".
func megapixels(px int64) string {
	mp := float64(px) / 1e6
	if mp >= 100 {
		return strconv.FormatFloat(mp, 'f', 0, 64)
	}
	return strconv.FormatFloat(mp, 'g', 3, 64)
}

// Image is one encoded output.
type Image struct {
	// Letter is the size letter: "t", "s", "m" or "l".
	Letter string
	// Width and Height are the pixel size of the encoded image.
	Width, Height int
	// ContentType is "image/jpeg" or "image/png".
	ContentType string
	// Data is the encoded image. It carries no metadata but, for a JPEG,
	// the upload's ICC colour profile when it has one that is not sRGB
	// (see icc.go).
	Data []byte
	// Source is true when Data is the upload's own JPEG data, stripped of
	// its metadata, rather than a re-encoding (see passthrough.go).
	Source bool
	// WebP is the same pixels encoded as WebP: lossy at WebPQuality when
	// Data is a JPEG, lossless (alpha kept) when Data is a PNG. It carries
	// no metadata. Nil when Options.NoWebP is set.
	WebP []byte
}

// Result is the outcome of Process.
type Result struct {
	// Format is the sniffed input format.
	Format Format
	// Width and Height are the size of the upright source image.
	Width, Height int
	// Orientation is the EXIF orientation that was applied (1 = none).
	Orientation int
	// Images holds the outputs, indexed by size code (0 = t ... 3 = l).
	Images [NumSizes]Image
	// ThumbHash is the ThumbHash placeholder of the upright image (about
	// 25 bytes; see internal/thumbhash), made from s scaled to fit
	// 100×100.
	ThumbHash []byte
}

// Process decodes data, orients it upright and returns the four sizes. It
// charges the image's memory estimate (Info.Memory) to the decode memory
// budget, then takes a decode slot (see Options.DecodeMemory and
// MaxConcurrent), waiting for both in arrival order, and returns ctx's
// error if ctx ends before they are free or while working. Rejected
// inputs give an error wrapping ErrEmpty, ErrUnsupported, ErrTooLarge or
// ErrCorrupt. Process never panics.
func (r *Resizer) Process(ctx context.Context, data []byte) (res *Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			res, err = nil, panicError(p)
		}
	}()
	info, err := r.Probe(data)
	if err != nil {
		return nil, err
	}
	if err := r.acquire(ctx, info.Memory); err != nil {
		return nil, err
	}
	defer r.release(info.Memory)
	img, err := decode(info, data)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	icc := carriedICC(info.Format, data)
	var own []byte // the upload itself, stripped (passthrough.go)
	if info.Format == JPEG {
		jh := scanJPEG(data)
		if own = strippedJPEG(data, &jh); own != nil && icc != nil {
			own = jpegWithICC(own, icc)
		}
	}
	res, err = produce(ctx, img, info, !r.opts.NoWebP, icc)
	if err != nil || own == nil {
		return res, err
	}
	for code := 1; code < NumSizes; code++ {
		im := &res.Images[code]
		if im.ContentType == "image/jpeg" && im.Width == info.Width && im.Height == info.Height && len(own) < len(im.Data) {
			im.Data = bytes.Clone(own)
			im.Source = true
		}
	}
	return res, nil
}

// acquire charges mem bytes to the decode memory budget and then takes a
// decode slot, or returns ctx's error with nothing held.
func (r *Resizer) acquire(ctx context.Context, mem int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.memory.Acquire(ctx, mem); err != nil {
		return err
	}
	select {
	case r.slots <- struct{}{}:
		r.inUse.Add(mem)
		return nil
	case <-ctx.Done():
		r.memory.Release(mem)
		return ctx.Err()
	}
}

// release gives back what acquire took.
func (r *Resizer) release(mem int64) {
	<-r.slots
	r.inUse.Add(-mem)
	r.memory.Release(mem)
}

// decodeConfig reads the header of data with the decoder of f.
func decodeConfig(f Format, data []byte) (image.Config, error) {
	cfg, err := guard(f, func() (image.Config, error) {
		rd := bytes.NewReader(data)
		switch f {
		case JPEG:
			return jpeg.DecodeConfig(rd)
		case PNG:
			return png.DecodeConfig(rd)
		case GIF:
			return gif.DecodeConfig(rd)
		case WebP:
			return webp.DecodeConfig(rd)
		}
		return image.Config{}, fmt.Errorf("%w: %s", ErrUnsupported, f)
	})
	if err != nil {
		return image.Config{}, decodeError(err)
	}
	return cfg, nil
}

// decode decodes the pixels of data, which Probe described as info. A GIF's
// first frame is drawn on its logical screen. A decoded size that differs
// from the header is ErrCorrupt.
func decode(info Info, data []byte) (image.Image, error) {
	img, err := guard(info.Format, func() (image.Image, error) {
		rd := bytes.NewReader(data)
		switch info.Format {
		case JPEG:
			return jpeg.Decode(rd)
		case PNG:
			return png.Decode(rd)
		case GIF:
			return gif.Decode(rd)
		case WebP:
			return webp.Decode(rd)
		case HEIC:
			return heic.Decode(rd)
		case AVIF:
			return avif.Decode(rd)
		}
		return nil, fmt.Errorf("%w: %s", ErrUnsupported, info.Format)
	})
	if err != nil {
		return nil, decodeError(err)
	}
	w, h := info.storedSize()
	want := image.Rect(0, 0, w, h)
	if info.Format == GIF && img.Bounds() != want && img.Bounds().In(want) {
		canvas := image.NewRGBA(want) // transparent where the frame is not
		draw.Draw(canvas, img.Bounds(), img, img.Bounds().Min, draw.Src)
		img = canvas
	}
	if img.Bounds() != want {
		return nil, fmt.Errorf("%w: decoded %s is %dx%d, header says %dx%d",
			ErrCorrupt, info.Format, img.Bounds().Dx(), img.Bounds().Dy(), w, h)
	}
	if info.Format == WebP {
		webpFullRange(img)
	}
	return img, nil
}

// errDecoderPanic marks a panic recovered from a decoder; decodeError
// classifies it as ErrCorrupt like any other decoder error.
var errDecoderPanic = errors.New("decoder panicked")

// guard calls a decoder of format f, turning a panic into an error.
func guard[T any](f Format, decode func() (T, error)) (v T, err error) {
	defer func() {
		if p := recover(); p != nil {
			var zero T
			v, err = zero, fmt.Errorf("%s %w: %v", f, errDecoderPanic, p)
		}
	}()
	return decode()
}

// produce resizes the decoded img (as stored, before orientation) to every
// size and encodes each one while the next is being resized.
//
// Each size is resampled from the previous, smaller-but-sufficient one: l
// from the decoded image, m from l, s from m, and t from the smallest of s,
// m, l and the decoded image whose shorter side covers t. The orientation is
// applied to each output, after resizing, so the big image is never rotated;
// boxes are square, so the stored-space sizes are the upright ones swapped.
//
// icc, when not nil, is the colour profile carried into the opaque
// outputs (icc.go).
func produce(ctx context.Context, img image.Image, info Info, withWebP bool, icc []byte) (*Result, error) {
	opaque := isOpaque(img)
	src := working(img, opaque)
	dims := Dimensions(info.Width, info.Height)
	if info.Orientation >= 5 {
		for i, d := range dims {
			dims[i] = image.Pt(d.Y, d.X)
		}
	}
	res := &Result{Format: info.Format, Width: info.Width, Height: info.Height, Orientation: info.Orientation}

	var (
		wg   sync.WaitGroup
		errs [NumSizes]error
	)
	// Also on a panic: no encoder outlives the decode slot.
	defer wg.Wait()
	encodeAsync := func(code int, m image.Image) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if p := recover(); p != nil {
					errs[code] = panicError(p)
				}
			}()
			res.Images[code], errs[code] = encode(Specs()[code].Letter, orient(m, info.Orientation), opaque, withWebP, icc)
		}()
	}

	var levels [NumSizes]image.Image
	prev := src
	for code := NumSizes - 1; code >= 1; code-- {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		f := catmullRom
		if prev == src {
			f = lanczos3
		}
		levels[code] = resize(prev, prev.Bounds(), dims[code].X, dims[code].Y, f)
		if code == NumSizes-1 || levels[code] != levels[code+1] {
			encodeAsync(code, levels[code]) // else the bytes are copied below
		}
		prev = levels[code]
	}
	// t: a centre square of the smallest level that still covers it.
	base := src
	for _, m := range levels[1:] {
		if b := m.Bounds(); min(b.Dx(), b.Dy()) >= dims[0].X {
			base = m
			break
		}
	}
	b := base.Bounds()
	side := min(b.Dx(), b.Dy())
	x0, y0 := b.Min.X+(b.Dx()-side)/2, b.Min.Y+(b.Dy()-side)/2
	f := catmullRom
	if base == src {
		f = lanczos3
	}
	levels[0] = resize(base, image.Rect(x0, y0, x0+side, y0+side), dims[0].X, dims[0].Y, f)
	encodeAsync(0, levels[0])
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	// A small image is the same for s, m and l: encoded once, copied.
	for code := NumSizes - 2; code >= 1; code-- {
		if levels[code] == levels[code+1] {
			res.Images[code] = res.Images[code+1]
			res.Images[code].Letter = Specs()[code].Letter
			res.Images[code].Data = bytes.Clone(res.Images[code+1].Data)
			res.Images[code].WebP = bytes.Clone(res.Images[code+1].WebP)
		}
	}
	hash, err := Placeholder(res.Images[1].Data)
	if err != nil {
		return nil, fmt.Errorf("resizer: placeholder: %w", err)
	}
	res.ThumbHash = hash
	return res, nil
}

// Placeholder returns the ThumbHash (internal/thumbhash) of a stored
// output, normally s: the image decoded, scaled to fit 100×100 and
// hashed. Process sets Result.ThumbHash from the s it encoded, so the
// gateway can compute the same bytes again from the stored s alone. data
// must be a JPEG or PNG output of at most 2048 pixels on each side.
func Placeholder(data []byte) ([]byte, error) {
	f, err := Sniff(data)
	if err != nil {
		return nil, err
	}
	if f != JPEG && f != PNG {
		return nil, fmt.Errorf("%w: a placeholder is made from a JPEG or PNG output, not %s", ErrUnsupported, f)
	}
	cfg, err := decodeConfig(f, data)
	if err != nil {
		return nil, err
	}
	if box := Specs()[NumSizes-1].Box; cfg.Width < 1 || cfg.Height < 1 || cfg.Width > box || cfg.Height > box {
		return nil, fmt.Errorf("%w: a placeholder is made from an output of at most %dx%d, not %dx%d",
			ErrTooLarge, box, box, cfg.Width, cfg.Height)
	}
	img, err := decode(Info{Format: f, Width: cfg.Width, Height: cfg.Height, Orientation: 1}, data)
	if err != nil {
		return nil, err
	}
	src := working(img, isOpaque(img))
	d := fit(cfg.Width, cfg.Height, thumbhash.MaxSide)
	return thumbhash.Encode(resize(src, src.Bounds(), d.X, d.Y, catmullRom))
}

// encode encodes img as JPEG (quality JPEGQuality) when opaque, else as
// PNG, and, when withWebP is set, as lossy (opaque) or lossless WebP. The
// opaque encodings carry icc when it is not nil.
func encode(letter string, img image.Image, opaque, withWebP bool, icc []byte) (Image, error) {
	var buf bytes.Buffer
	out := Image{Letter: letter, Width: img.Bounds().Dx(), Height: img.Bounds().Dy()}
	var err error
	if opaque {
		out.ContentType = "image/jpeg"
		err = jpeg.Encode(&buf, img, &jpeg.Options{Quality: JPEGQuality})
	} else {
		out.ContentType = "image/png"
		err = png.Encode(&buf, img)
	}
	if err != nil {
		return Image{}, fmt.Errorf("resizer: encoding %s: %w", letter, err)
	}
	out.Data = buf.Bytes()
	if opaque && icc != nil {
		out.Data = jpegWithICC(out.Data, icc)
	}
	if withWebP {
		var wb bytes.Buffer
		opts := gwebp.Options{Quality: WebPQuality, Method: webpMethod, Lossless: !opaque}
		if err := gwebp.Encode(&wb, img, opts); err != nil {
			return Image{}, fmt.Errorf("resizer: encoding %s as WebP: %w", letter, err)
		}
		out.WebP = wb.Bytes()
		if opaque && icc != nil {
			out.WebP = webpWithICC(out.WebP, icc, out.Width, out.Height, false)
		}
	}
	return out, nil
}
