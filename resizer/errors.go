package resizer

import (
	"errors"
	"fmt"
	"image/jpeg"
	"image/png"
)

// The error classes. Every error returned for a rejected input wraps exactly
// one of them (test with errors.Is); the wrapping message names the cause.
var (
	// ErrEmpty is returned for an empty input (HTTP 400).
	ErrEmpty = errors.New("resizer: empty image")
	// ErrUnsupported is returned when the bytes are not an accepted format:
	// an unknown or unaccepted signature (TIFF, BMP, JPEG XL, text, ...),
	// an animated WebP, or a JPEG or PNG feature Go cannot decode, such as
	// lossless or arithmetic-coded JPEG (HTTP 415).
	ErrUnsupported = errors.New("resizer: unsupported image format")
	// ErrTooLarge is returned when the input is longer than Options.MaxBytes
	// or its header declares more than Options.MaxPixels pixels (HTTP 413).
	ErrTooLarge = errors.New("resizer: image too large")
	// ErrCorrupt is returned when the bytes claim an accepted format but
	// cannot be decoded: truncated, bad checksum, invalid entropy data, zero
	// width or height, or a panic inside a decoder (HTTP 422).
	ErrCorrupt = errors.New("resizer: corrupt image")
)

// decodeError classifies an error of a decoder: unsupported features become
// ErrUnsupported, everything else ErrCorrupt. The decoder's error stays
// reachable through errors.Is and errors.As.
func decodeError(err error) error {
	for _, class := range []error{ErrEmpty, ErrUnsupported, ErrTooLarge, ErrCorrupt} {
		if errors.Is(err, class) {
			return err // already classified
		}
	}
	var ju jpeg.UnsupportedError
	var pu png.UnsupportedError
	if errors.As(err, &ju) || errors.As(err, &pu) {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}

// panicError is the error for a panic recovered outside a decoder. It wraps
// none of the classes: it is a bug in this package, not a property of the
// input.
func panicError(p any) error {
	return fmt.Errorf("resizer: internal error: %v", p)
}
