package needle

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// SizeCode is a needle's alternate key: which resolution of a photo it holds.
type SizeCode uint32

// Size codes. These values are stored in needles and never change.
const (
	SizeThumb    SizeCode = 0 // t: 150x150 centre crop
	SizeSmall    SizeCode = 1 // s: fits inside 480
	SizeMedium   SizeCode = 2 // m: fits inside 1080
	SizeLarge    SizeCode = 3 // l: fits inside 2048
	SizeOriginal SizeCode = 4 // o: the uploaded original, when kept

	// WebP variants: the WebP encoding of a resized size, written in the
	// same batch as the photo's other sizes. Each is WebPOffset plus the
	// code of the size it encodes; its URL letter is that size's.
	SizeThumbWebP  SizeCode = 8  // t.webp
	SizeSmallWebP  SizeCode = 9  // s.webp
	SizeMediumWebP SizeCode = 10 // m.webp
	SizeLargeWebP  SizeCode = 11 // l.webp

	// SizeAll in a tombstone deletes every size of the photo.
	SizeAll SizeCode = 0xFFFFFFFF
)

// WebPOffset is the distance from a resized size's code to its WebP
// variant's.
const WebPOffset = 8

// PhotoSizes lists the four resized sizes every photo has, in the order
// they are written.
var PhotoSizes = [4]SizeCode{SizeThumb, SizeSmall, SizeMedium, SizeLarge}

// WebPSizes lists the WebP variants of PhotoSizes, in the order they are
// written: after every size of PhotoSizes (see store/volume's index).
var WebPSizes = [4]SizeCode{SizeThumbWebP, SizeSmallWebP, SizeMediumWebP, SizeLargeWebP}

// StoredSizes lists every size code a needle may hold (every code Valid
// accepts), in ascending order.
var StoredSizes = [...]SizeCode{
	SizeThumb, SizeSmall, SizeMedium, SizeLarge, SizeOriginal,
	SizeThumbWebP, SizeSmallWebP, SizeMediumWebP, SizeLargeWebP,
}

const sizeLetters = "tsmlo"

// IsWebP reports whether s is the WebP variant of a resized size.
func (s SizeCode) IsWebP() bool { return s >= SizeThumbWebP && s <= SizeLargeWebP }

// WebP returns the WebP variant of a resized size (t, s, m, l), s itself
// when it is one already, and false for a size without a WebP variant.
func (s SizeCode) WebP() (SizeCode, bool) {
	switch {
	case s <= SizeLarge:
		return s + WebPOffset, true
	case s.IsWebP():
		return s, true
	}
	return s, false
}

// Base returns the size a WebP variant encodes, and s itself for every
// other code.
func (s SizeCode) Base() SizeCode {
	if s.IsWebP() {
		return s - WebPOffset
	}
	return s
}

// Letter returns the size's URL letter ("t", "s", "m", "l", "o"; a WebP
// variant has the letter of the size it encodes), or "" for a code
// without one.
func (s SizeCode) Letter() string {
	s = s.Base()
	if s < SizeCode(len(sizeLetters)) {
		return sizeLetters[s : s+1]
	}
	return ""
}

// Valid reports whether s names one stored size: 0..4 or a WebP variant
// 8..11 (SizeAll is not one).
func (s SizeCode) Valid() bool { return s <= SizeOriginal || s.IsWebP() }

// String returns the letter ("t", or "t.webp" for a WebP variant), or the
// number for codes without one.
func (s SizeCode) String() string {
	if l := s.Letter(); l != "" {
		if s.IsWebP() {
			return l + ".webp"
		}
		return l
	}
	if s == SizeAll {
		return "all"
	}
	return strconv.FormatUint(uint64(s), 10)
}

// ParseSizeLetter returns the size code for a URL letter.
func ParseSizeLetter(letter string) (SizeCode, error) {
	if len(letter) == 1 {
		if i := strings.IndexByte(sizeLetters, letter[0]); i >= 0 {
			return SizeCode(i), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown size %q (want one of t, s, m, l, o)", ErrBadID, letter)
}

// ContentType is the needle's one-byte content type code.
type ContentType uint8

// Content type codes. These values are stored in needles and never change.
const (
	TypeUnknown ContentType = 0
	TypeJPEG    ContentType = 1
	TypePNG     ContentType = 2
	TypeGIF     ContentType = 3
	TypeWebP    ContentType = 4
)

var contentTypes = [...]struct{ mime, ext string }{
	TypeUnknown: {"application/octet-stream", ""},
	TypeJPEG:    {"image/jpeg", "jpg"},
	TypePNG:     {"image/png", "png"},
	TypeGIF:     {"image/gif", "gif"},
	TypeWebP:    {"image/webp", "webp"},
}

// Valid reports whether t is a known content type code.
func (t ContentType) Valid() bool { return int(t) < len(contentTypes) }

// MIME returns the media type for HTTP Content-Type headers.
func (t ContentType) MIME() string {
	if !t.Valid() {
		return contentTypes[TypeUnknown].mime
	}
	return contentTypes[t].mime
}

// Ext returns the usual file extension without the dot ("" when unknown).
func (t ContentType) Ext() string {
	if !t.Valid() {
		return ""
	}
	return contentTypes[t].ext
}

// ContentTypeFromMIME returns the code for a media type, or TypeUnknown.
func ContentTypeFromMIME(mime string) ContentType {
	for i, c := range contentTypes {
		if i > 0 && c.mime == mime {
			return ContentType(i)
		}
	}
	return TypeUnknown
}

// ErrBadID is returned for a malformed photo ID or image path.
var ErrBadID = errors.New("needle: malformed photo ID or image path")

// PhotoID names a photo: its logical volume, key and cookie. Its text form
// is "<vid>-<key hex>-<cookie as 16 hex digits>", e.g.
// "7-1f4a9-8c3e77d2a1b0c4f5".
type PhotoID struct {
	Vid    uint32
	Key    uint64
	Cookie uint64
}

// String formats the ID in its canonical text form.
func (id PhotoID) String() string {
	b := make([]byte, 0, 48)
	b = strconv.AppendUint(b, uint64(id.Vid), 10)
	b = append(b, '-')
	b = strconv.AppendUint(b, id.Key, 16)
	b = append(b, '-')
	const hexdigits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, hexdigits[(id.Cookie>>uint(shift))&0xf])
	}
	return string(b)
}

// ParsePhotoID parses the canonical text form. Only the canonical form is
// accepted (decimal vid without leading zeros, lower-case hex key without
// leading zeros, exactly 16 lower-case hex cookie digits, key > 0), so
// every photo has exactly one ID and one set of URLs.
func ParsePhotoID(s string) (PhotoID, error) {
	var id PhotoID
	vidStr, rest, ok1 := strings.Cut(s, "-")
	keyStr, cookieStr, ok2 := strings.Cut(rest, "-")
	if !ok1 || !ok2 {
		return id, fmt.Errorf("%w: %q is not <vid>-<key>-<cookie>", ErrBadID, clip(s))
	}
	vid, err := parseCanonical(vidStr, 10, 32)
	if err != nil {
		return id, fmt.Errorf("%w: volume id %q", ErrBadID, clip(vidStr))
	}
	key, err := parseCanonical(keyStr, 16, 64)
	if err != nil || key == 0 {
		return id, fmt.Errorf("%w: key %q", ErrBadID, clip(keyStr))
	}
	if len(cookieStr) != 16 || !isLowerHex(cookieStr) {
		return id, fmt.Errorf("%w: cookie %q is not 16 lower-case hex digits", ErrBadID, clip(cookieStr))
	}
	cookie, err := strconv.ParseUint(cookieStr, 16, 64)
	if err != nil {
		return id, fmt.Errorf("%w: cookie %q", ErrBadID, clip(cookieStr))
	}
	return PhotoID{Vid: uint32(vid), Key: key, Cookie: cookie}, nil
}

// parseCanonical parses a number with no sign, no leading zeros (except
// "0" itself) and, for hex, only lower-case digits.
func parseCanonical(s string, base, bits int) (uint64, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') || (base == 16 && !isLowerHex(s)) {
		return 0, ErrBadID
	}
	for i := 0; i < len(s); i++ {
		if base == 10 && (s[i] < '0' || s[i] > '9') {
			return 0, ErrBadID
		}
	}
	return strconv.ParseUint(s, base, bits)
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// clip shortens hostile input before it is quoted in an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// ImagePathPrefix starts every image path.
const ImagePathPrefix = "/p/"

// WebPExt is the extension that names a size's WebP variant.
const WebPExt = "webp"

// ImagePath returns "/p/<photo ID>/<letter>[.<ext>]"; ext may be empty,
// except for a WebP variant, whose path always ends in ".webp" (ext, when
// given, must then be "webp" in any case).
func ImagePath(id PhotoID, size SizeCode, ext string) string {
	if ext == "" && size.IsWebP() {
		ext = WebPExt
	}
	p := ImagePathPrefix + id.String() + "/" + size.Letter()
	if ext != "" {
		p += "." + ext
	}
	return p
}

// ParseImagePath parses "/p/<photo ID>/<letter>[.<ext>]". The extension
// must be short and alphanumeric; it is returned without the dot. It
// chooses the needle:
//
//   - ".webp" (in any case) after t, s, m or l names the size's WebP
//     variant (size code 8 + the size's code);
//   - any other extension is cosmetic, as it always was: "m.jpg", "m.png"
//     and "m.jpeg" all name size m, whatever its Content-Type (which comes
//     from the needle); so does "o.webp", as the original has no variant;
//   - no extension names the size itself too; servers that hold WebP variants may
//     answer such a bare path with either, by the request's Accept header
//     (see internal/imagehttp.Choose).
func ParseImagePath(p string) (id PhotoID, size SizeCode, ext string, err error) {
	rest, ok := strings.CutPrefix(p, ImagePathPrefix)
	if !ok {
		return id, 0, "", fmt.Errorf("%w: path %q does not start with %s", ErrBadID, clip(p), ImagePathPrefix)
	}
	idStr, file, ok := strings.Cut(rest, "/")
	if !ok {
		return id, 0, "", fmt.Errorf("%w: path %q has no size", ErrBadID, clip(p))
	}
	if id, err = ParsePhotoID(idStr); err != nil {
		return id, 0, "", err
	}
	letter, ext, hasExt := strings.Cut(file, ".")
	if hasExt && !validExt(ext) {
		return id, 0, "", fmt.Errorf("%w: extension %q", ErrBadID, clip(ext))
	}
	if size, err = ParseSizeLetter(letter); err != nil {
		return id, 0, "", err
	}
	if strings.EqualFold(ext, WebPExt) {
		if w, ok := size.WebP(); ok {
			size = w
		}
	}
	return id, size, ext, nil
}

func validExt(ext string) bool {
	if ext == "" || len(ext) > 8 {
		return false
	}
	for i := 0; i < len(ext); i++ {
		c := ext[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
