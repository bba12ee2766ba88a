package resizer

import (
	"bytes"
	"fmt"
	"unicode/utf8"
)

// Format is an accepted input format, as sniffed from the bytes.
type Format string

// The accepted input formats.
const (
	JPEG Format = "jpeg"
	PNG  Format = "png"
	GIF  Format = "gif"
	WebP Format = "webp"
	HEIC Format = "heic"
	AVIF Format = "avif"
)

// Sniff returns the format of data judged from its leading bytes only. It
// returns an error wrapping ErrEmpty for empty data and ErrUnsupported for
// any other signature, naming it when it is a well-known one (TIFF, BMP,
// JPEG XL, ...). HEIC and AVIF are ISO media files whose ftyp box names an
// HEVC or AV1 brand, major or compatible. A recognised signature does not mean the rest decodes.
func Sniff(data []byte) (Format, error) {
	switch {
	case len(data) == 0:
		return "", ErrEmpty
	case len(data) >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF:
		return JPEG, nil
	case bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")):
		return PNG, nil
	case bytes.HasPrefix(data, []byte("GIF87a")), bytes.HasPrefix(data, []byte("GIF89a")):
		return GIF, nil
	case len(data) >= 12 && string(data[0:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		return WebP, nil
	case heifBrand(data) != "":
		return heifBrand(data), nil
	}
	return "", fmt.Errorf("%w: %s", ErrUnsupported, unsupportedName(data))
}

// unsupportedName names the content of data for an error message.
func unsupportedName(data []byte) string {
	head := data[:min(len(data), 16)]
	switch {
	case bytes.HasPrefix(head, []byte("II*\x00")), bytes.HasPrefix(head, []byte("MM\x00*")):
		return "TIFF"
	case len(head) >= 12 && string(head[4:8]) == "ftyp":
		switch string(head[8:12]) {
		case "avif", "avis":
			return "AVIF"
		case "mif1", "msf1":
			return "HEIF without an HEVC or AV1 brand"
		}
		return fmt.Sprintf("ISO media (brand %q)", head[8:12])
	case bytes.HasPrefix(head, []byte("BM")):
		return "BMP"
	case bytes.HasPrefix(head, []byte("\xFF\x0A")),
		bytes.HasPrefix(head, []byte("\x00\x00\x00\x0CJXL \r\n\x87\n")):
		return "JPEG XL"
	case bytes.HasPrefix(head, []byte("\x00\x00\x00\x0CjP  \r\n\x87\n")),
		bytes.HasPrefix(head, []byte("\xFF\x4F\xFF\x51")):
		return "JPEG 2000"
	case bytes.HasPrefix(head, []byte("%PDF-")):
		return "PDF"
	case len(head) >= 12 && string(head[0:4]) == "RIFF":
		return fmt.Sprintf("RIFF (%q)", head[8:12])
	case looksLikeText(data):
		return "text"
	}
	return "no known image signature"
}

// looksLikeText reports whether the first 512 bytes of data are valid UTF-8
// without control characters other than whitespace.
func looksLikeText(data []byte) bool {
	b := data[:min(len(data), 512)]
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n <= 1 {
			// An invalid byte, or a rune cut by the 512-byte window.
			return len(b) < utf8.UTFMax && len(data) > 512
		}
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0x7F {
			return false
		}
		b = b[n:]
	}
	return true
}

// webpAnimated reports whether a WebP file (already sniffed) declares
// animation in its VP8X chunk. golang.org/x/image/webp decodes still images
// only.
func webpAnimated(data []byte) bool {
	// RIFF header (12 bytes), then the first chunk: FourCC, size, payload.
	// The VP8X payload starts with a flags byte; bit 1 is animation.
	return len(data) >= 21 && string(data[12:16]) == "VP8X" && data[20]&0x02 != 0
}
