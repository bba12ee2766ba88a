// Package token signs and verifies the write tokens that the directory hands
// out with every key assignment and that stores check before they append or
// delete a needle.
//
// A token is a JWT (RFC 7519) signed with HMAC-SHA256 over the cluster
// secret. Its claims bind it to one logical volume and one key range and give
// it an expiry:
//
//	{"vid": 7, "ks": 1000, "kn": 100, "iat": 1700000000, "exp": 1700000600}
//
// grants writes and deletes of keys 1000 .. 1099 on volume 7 until the expiry
// (Unix seconds). Verification accepts a clock skew of Leeway between the
// directory and the stores. The only signing method accepted is HS256, so a
// token cannot pick its own algorithm ("none", RS256 with the secret as a
// public key).
//
// Every verification failure wraps exactly one of the sentinel errors
// (ErrMissing, ErrMalformed, ErrForged, ErrExpired, ErrWrongVolume,
// ErrKeyOutOfRange), and all of them wrap ErrInvalid, so a server maps
// errors.Is(err, ErrInvalid) to codes.Unauthenticated.
//
// The secret lives in a file (LoadSecret, LoadOrCreateSecret). A generated
// secret is 32 random bytes written as 64 hex digits with mode 0600; a
// secret written by an operator may be any text of at least MinSecretLen
// bytes, surrounding white space ignored, and every process of the cluster
// must read the same bytes.
package token
