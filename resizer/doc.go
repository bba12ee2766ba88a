// Package resizer turns one uploaded image into the four stored sizes of a
// photo: it sniffs and validates the format, decodes, applies the JPEG EXIF
// orientation and encodes the t, s, m and l variants of the size table.
// It has no network code; the gateway maps its errors to HTTP statuses.
//
// # Accepted input
//
// The format is sniffed from the bytes, never from a file name or a
// client-supplied Content-Type. Accepted: JPEG (baseline, extended sequential
// or progressive Huffman; 1, 3 or 4 components; MPO and Ultra HDR files count
// as JPEG because their first image is one), PNG (any depth, palette, alpha),
// GIF (the first frame, drawn on the logical screen), still WebP (lossy,
// lossless, alpha), HEIC and AVIF (the primary image, upright after its
// irot and imir properties; an EXIF orientation inside a HEIF is not
// applied). Everything else is [ErrUnsupported]: animated WebP, TIFF, BMP,
// HEIF of other codecs, lossless, hierarchical and arithmetic-coded JPEG,
// text and unknown bytes. Decoders are called explicitly (image/jpeg,
// image/png, image/gif, golang.org/x/image/webp, github.com/gen2brain/heic
// and github.com/gen2brain/avif, which run libheif and libavif compiled to
// WebAssembly with wazero, so no cgo; the first HEIC or AVIF decode of a
// process compiles the module, several seconds); the global
// image.RegisterFormat registry is not consulted, so nothing depends on
// which packages were linked. A HEIF's size is read from its primary item's
// ispe box (heif.go), never by starting the decoder.
//
// # Limits
//
// All limits are fields of [Options]; a zero field takes its default.
//
//   - MaxBytes, default 32 MiB (DefaultMaxBytes): longer input is
//     [ErrTooLarge] before anything is parsed.
//   - MaxPixels, default 80 megapixels (DefaultMaxPixels): the width and
//     height declared in the header (image.DecodeConfig; for GIF the logical
//     screen, for WebP the canvas) are checked before any full decode, because
//     Go cannot recover from running out of memory. Larger images are
//     [ErrTooLarge].
//   - DecodeMemory, default 1 GiB (DefaultDecodeMemory): the memory budget of
//     decoding and resizing, shared by every Process call on the Resizer (a
//     golang.org/x/sync/semaphore weighted by bytes). Probe estimates from
//     the header what the image needs at most ([Info].Memory): the decoded
//     pixels at the decoder's bytes per sample, the decoder's transients
//     (a progressive JPEG keeps 4 bytes of coefficients per sample; a CMYK
//     or RGB JPEG is converted into a 4-byte copy; an interlaced PNG decodes
//     seven passes first) and the resizing buffers; memory.go has the table.
//     An image whose estimate exceeds the whole budget is [ErrTooLarge]
//     before anything is decoded: a 469 KB progressive 8944×8944 4:4:4 JPEG
//     asks for 1.2 GB (1.9 GB as CMYK) and is refused at the default. Others
//     wait, in arrival order, until the images in progress leave room for
//     their estimate, so the decodes of one Resizer never hold more than the
//     budget. The estimate is checked against the bytes Process really
//     allocates (TestMemoryEstimateBoundsAllocations); it is about twice
//     that for large images and more for small ones, whose fixed costs
//     dominate. Go's heap also holds garbage until the next collection, so
//     give the process a soft memory limit (GOMEMLIMIT) near the budget
//     plus its other needs.
//   - MaxConcurrent, default runtime.NumCPU(): at most this many decodes (and
//     the resizing and encoding that follow them) run at once; further calls
//     wait, honouring their context. Memory is taken first, then a slot.
//
// # Errors
//
// Every rejection wraps exactly one of [ErrEmpty] (400), [ErrUnsupported]
// (415), [ErrTooLarge] (413) or [ErrCorrupt] (422); test with errors.Is. The
// message names the cause. A panic inside a decoder is recovered and reported
// as [ErrCorrupt]; no input makes Process panic. A cancelled context returns
// the context's error.
//
// # Output
//
// The sizes follow the table in DESIGN.md (see [Spec]): t is a 150×150
// centre-crop fill (a square of the shorter side when that is under 150), s,
// m and l fit inside 480, 1080 and 2048. Nothing is upscaled, no side is ever
// zero pixels, and an image already inside a box keeps its own size
// (re-encoded, or its own data: see below). Width and height are those of
// the upright image, after the EXIF orientation (JPEG APP1 "Exif", values 1
// to 8; other values are ignored) has been applied.
//
// Opaque images are encoded as baseline JPEG at quality 85, images with any
// non-opaque pixel as PNG. Beside each, unless Options.NoWebP is set, the
// same pixels are encoded as WebP ([Image].WebP): lossy at [WebPQuality]
// for a JPEG, lossless (alpha kept) for a PNG, with libwebp compiled to
// WebAssembly (github.com/gen2brain/webp). The encoders write no metadata,
// so EXIF (GPS included), XMP and comments of the upload are never copied.
// The one exception is colour: an upload's ICC profile that is not sRGB
// (a phone's Display P3, say) is carried into the JPEG (APP2) and lossy
// WebP (ICCP) outputs, so colour-managed browsers show the upload's
// colours; icc.go has the rule and the layouts.
//
// A size that the upload already fits is the upload's own JPEG data,
// stripped of its metadata, when the upload is upright and its
// quantisation is at least as coarse as quality 85's ([Image].Source);
// passthrough.go has the rule. Re-encoding it could only add bytes and a
// generation of loss.
//
// Each Result also carries a ThumbHash placeholder of the photo
// ([Result].ThumbHash, internal/thumbhash), computed from the encoded s by
// [Placeholder] so that it can be computed again from the stored s alone.
//
// # Speed
//
// Resampling is done by this package, in fixed point, on 8-bit planes
// (resample.go): JPEG and lossy WebP images stay Y'CbCr from decode to
// encode, each chroma plane resampled at its own resolution; other images
// are converted row by row to premultiplied RGBA as the first reduction
// reads them, never as a whole. l is resampled from the decoded image with a
// Lanczos-3 filter, m from l and s from m with Catmull-Rom, and t from the
// smallest of s, m and l whose shorter side still covers it. The EXIF
// orientation is applied afterwards to each (small) output with imaging's
// Rotate/Flip/Transpose/Transverse, so the full-size image is never rotated.
// Each output is encoded while the next is being resized; an output equal
// to the next larger one is encoded once. All four sizes of a 12 MP JPEG
// take about 0.3 CPU-seconds, half of it in image/jpeg's decoder (see
// BenchmarkResize12MP). The WebP outputs cost several times that: libwebp
// runs as WebAssembly, about 3.5 more CPU-seconds for a 12 MP photo
// (BenchmarkWebPCost; Options.NoWebP turns them off).
package resizer
