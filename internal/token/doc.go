// Package token signs and verifies the tokens that the directory hands out
// and that stores check before they append a needle: write tokens, with
// every key assignment, and delete tokens, for one photo.
//
// A token is a JWT (RFC 7519) signed with HMAC-SHA256 over the cluster
// secret. Its claims say what it allows, bind it to one logical volume and
// give it an expiry. A write token
//
//	{"op": "w", "vid": 7, "ks": 1000, "kn": 100, "iat": 1700000000, "exp": 1700000600}
//
// allows data needles (no tombstones) of keys 1000 .. 1099 on volume 7, the
// keys one Assign handed out, until the expiry (Unix seconds). A delete
// token
//
//	{"op": "d", "ck": 12345, "vid": 7, "ks": 1042, "kn": 1, "iat": ..., "exp": ...}
//
// allows tombstones (no data) for the one photo (7, 1042, cookie 12345);
// the store also checks that the stored needle carries that cookie before
// it writes the tombstone. A token without "op" is malformed. Verification accepts a clock skew of Leeway between the
// directory and the stores. The only signing method accepted is HS256, so a
// token cannot pick its own algorithm ("none", RS256 with the secret as a
// public key).
//
// Every verification failure wraps exactly one of the sentinel errors
// (ErrMissing, ErrMalformed, ErrForged, ErrExpired, ErrWrongVolume,
// ErrKeyOutOfRange, ErrWrongKind, ErrWrongPhoto), and all of them wrap ErrInvalid, so a server maps
// errors.Is(err, ErrInvalid) to codes.Unauthenticated.
//
// The secret lives in a file (LoadSecret, LoadOrCreateSecret). A generated
// secret is 32 random bytes written as 64 hex digits with mode 0600; a
// secret written by an operator may be any text of at least MinSecretLen
// bytes, surrounding white space ignored, and every process of the cluster
// must read the same bytes.
package token
