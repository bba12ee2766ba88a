package token

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Verification errors. Each wraps ErrInvalid.
var (
	// ErrInvalid is wrapped by every verification error: the write is not
	// authorized.
	ErrInvalid = errors.New("token: invalid write token")
	// ErrMissing is returned when a write carries no token at all.
	ErrMissing = fmt.Errorf("%w: missing", ErrInvalid)
	// ErrMalformed is returned when the token does not parse as a JWT with
	// the claims this package writes.
	ErrMalformed = fmt.Errorf("%w: malformed", ErrInvalid)
	// ErrForged is returned when the signature does not match the secret, or
	// the token names a signing method other than HS256.
	ErrForged = fmt.Errorf("%w: bad signature", ErrInvalid)
	// ErrExpired is returned when the token's expiry (plus Leeway) has
	// passed, or it is not valid yet.
	ErrExpired = fmt.Errorf("%w: expired", ErrInvalid)
	// ErrWrongVolume is returned when the token was issued for another vid.
	ErrWrongVolume = fmt.Errorf("%w: issued for another volume", ErrInvalid)
	// ErrKeyOutOfRange is returned when a key lies outside the token's range.
	ErrKeyOutOfRange = fmt.Errorf("%w: key outside the token's range", ErrInvalid)
	// ErrWrongKind is returned when a delete token is used for a write or
	// a write token for a delete.
	ErrWrongKind = fmt.Errorf("%w: wrong kind of token", ErrInvalid)
	// ErrWrongPhoto is returned when a delete token names another photo
	// (key or cookie) than the one deleted.
	ErrWrongPhoto = fmt.Errorf("%w: issued for another photo", ErrInvalid)
)

// ErrWeakSecret is returned by NewSigner and the secret loaders for a secret
// shorter than MinSecretLen.
var ErrWeakSecret = fmt.Errorf("token: secret shorter than %d bytes", MinSecretLen)

// MinSecretLen is the shortest secret accepted, in bytes.
const MinSecretLen = 16

// Leeway is the clock skew tolerated between the signer and the verifier.
const Leeway = 30 * time.Second

// Kind is what a token allows.
type Kind uint8

// The kinds of token.
const (
	// KindWrite allows data needles for the keys KeyStart ..
	// KeyStart+KeyCount-1 on volume Vid (the keys an Assign just handed
	// out), and nothing else.
	KindWrite Kind = iota
	// KindDelete allows tombstones for the one photo (Vid, KeyStart,
	// Cookie), KeyCount 1, and nothing else.
	KindDelete
)

// String returns "write" or "delete".
func (k Kind) String() string {
	switch k {
	case KindWrite:
		return "write"
	case KindDelete:
		return "delete"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Claims is what a token grants: for a write token, data needles of keys
// KeyStart .. KeyStart+KeyCount-1 on volume Vid; for a delete token,
// tombstones of photo (Vid, KeyStart, Cookie); both until Expiry.
type Claims struct {
	Kind     Kind
	Vid      uint32
	KeyStart uint64
	KeyCount uint64
	// Cookie is the photo's cookie in a delete token; 0 in a write token.
	Cookie uint64
	// Expiry is the end of validity; it is kept at one-second precision.
	Expiry time.Time
}

// Contains reports whether key lies in the claims' range.
func (c Claims) Contains(key uint64) bool {
	return key >= c.KeyStart && key-c.KeyStart < c.KeyCount
}

// jwtClaims is the JSON form of Claims. Op is "w" (write) or "d" (delete);
// a token without it is malformed.
type jwtClaims struct {
	Op       string `json:"op"`
	Cookie   uint64 `json:"ck,omitempty"`
	Vid      uint32 `json:"vid"`
	KeyStart uint64 `json:"ks"`
	KeyCount uint64 `json:"kn"`
	jwt.RegisteredClaims
}

// Signer signs and verifies tokens with one secret. It is safe for
// concurrent use. Signer satisfies the store's write authorizer
// (AuthorizeWrite).
type Signer struct {
	secret []byte
	now    func() time.Time
}

// NewSigner returns a Signer for secret, which must be at least MinSecretLen
// bytes. The secret is copied.
func NewSigner(secret []byte) (*Signer, error) {
	if len(secret) < MinSecretLen {
		return nil, ErrWeakSecret
	}
	return &Signer{secret: append([]byte(nil), secret...), now: time.Now}, nil
}

// Sign returns the signed token for c. The range must not be empty or wrap
// around, and the expiry must be set.
func (s *Signer) Sign(c Claims) (string, error) {
	if c.KeyStart == 0 || c.KeyCount == 0 || c.KeyStart-1 > math.MaxUint64-c.KeyCount {
		return "", fmt.Errorf("token: bad key range %d+%d", c.KeyStart, c.KeyCount)
	}
	if c.Expiry.IsZero() {
		return "", errors.New("token: no expiry")
	}
	var op string
	switch c.Kind {
	case KindWrite:
		if c.Cookie != 0 {
			return "", errors.New("token: a write token carries no cookie")
		}
		op = "w"
	case KindDelete:
		if c.KeyCount != 1 {
			return "", fmt.Errorf("token: a delete token names one key, not %d", c.KeyCount)
		}
		op = "d"
	default:
		return "", fmt.Errorf("token: unknown kind %v", c.Kind)
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwtClaims{
		Op:       op,
		Cookie:   c.Cookie,
		Vid:      c.Vid,
		KeyStart: c.KeyStart,
		KeyCount: c.KeyCount,
		RegisteredClaims: jwt.RegisteredClaims{
			IssuedAt:  jwt.NewNumericDate(s.now()),
			ExpiresAt: jwt.NewNumericDate(c.Expiry),
		},
	})
	out, err := t.SignedString(s.secret)
	if err != nil {
		return "", fmt.Errorf("token: sign: %w", err)
	}
	return out, nil
}

// Parse verifies the token's signature and expiry and returns its claims,
// without checking them against a write.
func (s *Signer) Parse(token string) (Claims, error) {
	if token == "" {
		return Claims{}, ErrMissing
	}
	var jc jwtClaims
	_, err := jwt.ParseWithClaims(token, &jc, func(*jwt.Token) (any, error) { return s.secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(Leeway),
		jwt.WithTimeFunc(s.now),
	)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return Claims{}, ErrExpired
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return Claims{}, ErrForged
	default:
		return Claims{}, fmt.Errorf("%w (%v)", ErrMalformed, err)
	}
	if jc.KeyStart == 0 || jc.KeyCount == 0 || jc.ExpiresAt == nil {
		return Claims{}, fmt.Errorf("%w (empty key range)", ErrMalformed)
	}
	c := Claims{Vid: jc.Vid, KeyStart: jc.KeyStart, KeyCount: jc.KeyCount, Cookie: jc.Cookie, Expiry: jc.ExpiresAt.Time}
	switch jc.Op {
	case "w":
		c.Kind = KindWrite
	case "d":
		c.Kind = KindDelete
		if c.KeyCount != 1 {
			return Claims{}, fmt.Errorf("%w (delete token for %d keys)", ErrMalformed, c.KeyCount)
		}
	default:
		return Claims{}, fmt.Errorf("%w (no kind)", ErrMalformed)
	}
	return c, nil
}

// Verify checks that token is a write token allowing key on vid.
func (s *Signer) Verify(token string, vid uint32, key uint64) error {
	return s.AuthorizeWrite(token, vid, []uint64{key})
}

// AuthorizeWrite checks that token is a write token allowing data needles
// for every key in keys on vid. It is half of the store's write
// authorizer.
func (s *Signer) AuthorizeWrite(token string, vid uint32, keys []uint64) error {
	c, err := s.Parse(token)
	if err != nil {
		return err
	}
	if c.Kind != KindWrite {
		return fmt.Errorf("%w (a %v token used for a write)", ErrWrongKind, c.Kind)
	}
	if c.Vid != vid {
		return fmt.Errorf("%w (token for volume %d, write to %d)", ErrWrongVolume, c.Vid, vid)
	}
	for _, k := range keys {
		if !c.Contains(k) {
			return fmt.Errorf("%w (key %x, token covers %x..%x)", ErrKeyOutOfRange, k, c.KeyStart, c.KeyStart+(c.KeyCount-1))
		}
	}
	return nil
}

// AuthorizeDelete checks that token is a delete token for the photo (vid,
// key, cookie). It is the other half of the store's write authorizer.
func (s *Signer) AuthorizeDelete(token string, vid uint32, key, cookie uint64) error {
	c, err := s.Parse(token)
	if err != nil {
		return err
	}
	if c.Kind != KindDelete {
		return fmt.Errorf("%w (a %v token used for a delete)", ErrWrongKind, c.Kind)
	}
	if c.Vid != vid {
		return fmt.Errorf("%w (token for volume %d, delete on %d)", ErrWrongVolume, c.Vid, vid)
	}
	if c.KeyStart != key || c.Cookie != cookie {
		return fmt.Errorf("%w (token for key %x, delete of %x)", ErrWrongPhoto, c.KeyStart, key)
	}
	return nil
}
