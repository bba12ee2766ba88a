// Package imagehttp writes the HTTP answers of the image path
// (/p/<photo ID>/<size>[.<ext>]) that stores and caches share, so the two
// tiers answer byte for byte alike and a CDN can use either as its origin.
//
// It owns the answer contract of DESIGN.md's "Store HTTP" section:
//
//   - Every image answer carries "X-Content-Type-Options: nosniff", and
//     its Content-Type is one of image/jpeg, image/png, image/gif and
//     image/webp: an image with any other type is refused with 502,
//     "X-Haybale-Error: corrupt" (IsImageContentType), never served.
//   - 200: Content-Type, Content-Length, ETag (the needle checksum as 16
//     quoted lower-case hex digits, see AppendETag), Last-Modified (the
//     append time in whole seconds), "Cache-Control: public,
//     max-age=31536000, immutable" and "Accept-Ranges: bytes".
//   - Preconditions in the order of RFC 9110 section 13.2.2: If-Match (412),
//     If-Unmodified-Since (412), If-None-Match (304, weak comparison),
//     If-Modified-Since (304). A 304 carries ETag, Last-Modified and
//     Cache-Control, and no Content-Type.
//   - One byte range gives 206 with Content-Range; an unsatisfiable or
//     malformed one gives 416 with a JSON error (and "Content-Range: bytes
//     */<size>" when unsatisfiable); several ranges, or another unit, give
//     the whole body (200). If-Range is honoured.
//   - The path names the needle: "<size>.webp" the size's WebP variant,
//     any other extension the size itself; a bare "<size>" of t, s, m or l
//     is the WebP variant when Accept lists image/webp (else, or when the
//     photo has none, the size itself), and every answer to it, 404s
//     included, carries "Vary: Accept" (Choose).
//   - Every missing image (unknown key, wrong cookie, deleted) is the same
//     404 with "Cache-Control: public, max-age=60" (NotFound).
//   - A malformed image path is 400 with a JSON error naming the problem.
//   - Other errors are JSON bodies {"error": "..."} with
//     "X-Content-Type-Options: nosniff"; those that tell a cache or CDN why
//     the image was not served add "Cache-Control: no-store" and an
//     X-Haybale-Error header (Failure, and the Error* constants).
//
// The package imports only the standard library and package needle (for
// the image media types), and allocates little: the store's read path
// uses it without an allocation of its own beyond the header values. Every function is safe for concurrent use; the package
// holds no mutable state.
package imagehttp
