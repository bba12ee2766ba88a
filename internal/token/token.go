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
)

// ErrWeakSecret is returned by NewSigner and the secret loaders for a secret
// shorter than MinSecretLen.
var ErrWeakSecret = fmt.Errorf("token: secret shorter than %d bytes", MinSecretLen)

// MinSecretLen is the shortest secret accepted, in bytes.
const MinSecretLen = 16

// Leeway is the clock skew tolerated between the signer and the verifier.
const Leeway = 30 * time.Second

// Claims is what a token grants: writes and deletes of keys KeyStart ..
// KeyStart+KeyCount-1 on volume Vid until Expiry.
type Claims struct {
	Vid      uint32
	KeyStart uint64
	KeyCount uint64
	// Expiry is the end of validity; it is kept at one-second precision.
	Expiry time.Time
}

// Contains reports whether key lies in the claims' range.
func (c Claims) Contains(key uint64) bool {
	return key >= c.KeyStart && key-c.KeyStart < c.KeyCount
}

// jwtClaims is the JSON form of Claims.
type jwtClaims struct {
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
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwtClaims{
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
	return Claims{Vid: jc.Vid, KeyStart: jc.KeyStart, KeyCount: jc.KeyCount, Expiry: jc.ExpiresAt.Time}, nil
}

// Verify checks that token authorizes a write or delete of key on vid.
func (s *Signer) Verify(token string, vid uint32, key uint64) error {
	return s.AuthorizeWrite(token, vid, []uint64{key})
}

// AuthorizeWrite checks that token authorizes writes or deletes of every key
// in keys on vid. It is the store's write authorizer.
func (s *Signer) AuthorizeWrite(token string, vid uint32, keys []uint64) error {
	c, err := s.Parse(token)
	if err != nil {
		return err
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
