package token

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

func mustSigner(t *testing.T, secret []byte) *Signer {
	t.Helper()
	s, err := NewSigner(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustSign(t *testing.T, s *Signer, c Claims) string {
	t.Helper()
	tok, err := s.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVerify(t *testing.T) {
	s := mustSigner(t, testSecret)
	other := mustSigner(t, []byte("another secret, sixteen or more"))
	valid := Claims{Vid: 7, KeyStart: 1000, KeyCount: 100, Expiry: time.Now().Add(time.Minute)}
	good := mustSign(t, s, valid)
	expired := mustSign(t, s, Claims{Vid: 7, KeyStart: 1000, KeyCount: 100, Expiry: time.Now().Add(-time.Hour)})
	forged := mustSign(t, other, valid)

	// A token whose payload was edited to cover more keys, signature kept.
	parts := strings.Split(good, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(payload), `"kn":100`, `"kn":100000`, 1)
	if edited == string(payload) {
		t.Fatalf("payload %s has no kn claim", payload)
	}
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(edited)) + "." + parts[2]

	// alg "none" must not be accepted.
	none := jwt.NewWithClaims(jwt.SigningMethodNone, jwtClaims{Vid: 7, KeyStart: 1000, KeyCount: 100,
		RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute))}})
	noneTok, err := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	// A validly signed token without an expiry.
	noExp := jwt.NewWithClaims(jwt.SigningMethodHS256, jwtClaims{Vid: 7, KeyStart: 1000, KeyCount: 100})
	noExpTok, err := noExp.SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		token string
		vid   uint32
		key   uint64
		want  error
	}{
		{"valid first key", good, 7, 1000, nil},
		{"valid last key", good, 7, 1099, nil},
		{"missing", "", 7, 1000, ErrMissing},
		{"garbage", "not-a-token", 7, 1000, ErrMalformed},
		{"expired", expired, 7, 1000, ErrExpired},
		{"forged", forged, 7, 1000, ErrForged},
		{"tampered", tampered, 7, 1050, ErrForged},
		{"alg none", noneTok, 7, 1000, ErrForged},
		{"no expiry", noExpTok, 7, 1000, ErrMalformed},
		{"wrong vid", good, 8, 1000, ErrWrongVolume},
		{"key below", good, 7, 999, ErrKeyOutOfRange},
		{"key above", good, 7, 1100, ErrKeyOutOfRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Verify(tc.token, tc.vid, tc.key)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestSentinelsDistinct(t *testing.T) {
	all := []error{ErrMissing, ErrMalformed, ErrForged, ErrExpired, ErrWrongVolume, ErrKeyOutOfRange}
	for i, a := range all {
		for j, b := range all {
			if i != j && errors.Is(a, b) {
				t.Errorf("%v matches %v", a, b)
			}
		}
	}
}

func TestAuthorizeWriteBatch(t *testing.T) {
	s := mustSigner(t, testSecret)
	tok := mustSign(t, s, Claims{Vid: 3, KeyStart: 10, KeyCount: 2, Expiry: time.Now().Add(time.Minute)})
	if err := s.AuthorizeWrite(tok, 3, []uint64{10, 10, 11, 11}); err != nil {
		t.Fatalf("batch inside the range: %v", err)
	}
	if err := s.AuthorizeWrite(tok, 3, []uint64{10, 12}); !errors.Is(err, ErrKeyOutOfRange) {
		t.Fatalf("batch leaving the range: %v", err)
	}
}

func TestLeewayAndClock(t *testing.T) {
	s := mustSigner(t, testSecret)
	now := time.Unix(1_700_000_000, 0)
	s.now = func() time.Time { return now }
	tok := mustSign(t, s, Claims{Vid: 1, KeyStart: 1, KeyCount: 1, Expiry: now.Add(time.Minute)})
	now = now.Add(time.Minute + Leeway/2)
	if err := s.Verify(tok, 1, 1); err != nil {
		t.Fatalf("within the leeway: %v", err)
	}
	now = now.Add(Leeway)
	if err := s.Verify(tok, 1, 1); !errors.Is(err, ErrExpired) {
		t.Fatalf("after the leeway: %v", err)
	}
}

func TestParseRoundTrip(t *testing.T) {
	s := mustSigner(t, testSecret)
	want := Claims{Vid: 1 << 31, KeyStart: 1<<63 + 5, KeyCount: 1 << 40, Expiry: time.Now().Add(time.Hour).Truncate(time.Second)}
	got, err := s.Parse(mustSign(t, s, want))
	if err != nil {
		t.Fatal(err)
	}
	if got.Vid != want.Vid || got.KeyStart != want.KeyStart || got.KeyCount != want.KeyCount || !got.Expiry.Equal(want.Expiry) {
		t.Fatalf("Parse = %+v, want %+v", got, want)
	}
}

func TestSignRejects(t *testing.T) {
	s := mustSigner(t, testSecret)
	exp := time.Now().Add(time.Minute)
	for _, c := range []Claims{
		{Vid: 1, KeyStart: 0, KeyCount: 1, Expiry: exp},
		{Vid: 1, KeyStart: 1, KeyCount: 0, Expiry: exp},
		{Vid: 1, KeyStart: ^uint64(0), KeyCount: 2, Expiry: exp},
		{Vid: 1, KeyStart: 1, KeyCount: 1},
	} {
		if _, err := s.Sign(c); err == nil {
			t.Errorf("Sign(%+v) succeeded", c)
		}
	}
	if _, err := s.Sign(Claims{Vid: 1, KeyStart: ^uint64(0), KeyCount: 1, Expiry: exp}); err != nil {
		t.Errorf("the last key alone: %v", err)
	}
	if _, err := NewSigner([]byte("short")); !errors.Is(err, ErrWeakSecret) {
		t.Errorf("NewSigner(short) = %v", err)
	}
}

func TestLoadOrCreateSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "secret")
	a, err := LoadOrCreateSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 2*GeneratedSecretLen {
		t.Fatalf("generated secret has %d bytes", len(a))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Fatalf("secret file mode %o, want 600", mode)
	}
	b, err := LoadOrCreateSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) {
		t.Fatal("a second load generated a new secret")
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "sub", "*.tmp"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}

	weak := filepath.Join(dir, "weak")
	if err := os.WriteFile(weak, []byte("  tiny\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateSecret(weak); !errors.Is(err, ErrWeakSecret) {
		t.Fatalf("weak secret: %v", err)
	}
	if _, err := LoadSecret(filepath.Join(dir, "absent")); err == nil {
		t.Fatal("LoadSecret of a missing file succeeded")
	}
}

func TestLoadOrCreateSecretRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	const n = 8
	got := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { got[i], errs[i] = LoadOrCreateSecret(path) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if string(got[i]) != string(got[0]) {
			t.Fatalf("creator %d got a different secret", i)
		}
	}
}

func TestDeleteTokens(t *testing.T) {
	s, _ := NewSigner([]byte("0123456789abcdef0123"))
	exp := time.Now().Add(time.Minute)
	del := mustSign(t, s, Claims{Kind: KindDelete, Vid: 3, KeyStart: 10, KeyCount: 1, Cookie: 99, Expiry: exp})
	write := mustSign(t, s, Claims{Vid: 3, KeyStart: 10, KeyCount: 1, Expiry: exp})
	if err := s.AuthorizeDelete(del, 3, 10, 99); err != nil {
		t.Fatalf("delete token refused for its photo: %v", err)
	}
	for _, tc := range []struct {
		name   string
		err    error
		target error
	}{
		{"delete token used for a write", s.AuthorizeWrite(del, 3, []uint64{10}), ErrWrongKind},
		{"write token used for a delete", s.AuthorizeDelete(write, 3, 10, 99), ErrWrongKind},
		{"another cookie", s.AuthorizeDelete(del, 3, 10, 98), ErrWrongPhoto},
		{"another key", s.AuthorizeDelete(del, 3, 11, 99), ErrWrongPhoto},
		{"another volume", s.AuthorizeDelete(del, 4, 10, 99), ErrWrongVolume},
	} {
		if !errors.Is(tc.err, tc.target) || !errors.Is(tc.err, ErrInvalid) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.target)
		}
	}
	if _, err := s.Sign(Claims{Kind: KindDelete, Vid: 3, KeyStart: 10, KeyCount: 2, Cookie: 1, Expiry: exp}); err == nil {
		t.Error("a delete token for two keys was signed")
	}
	if _, err := s.Sign(Claims{Kind: KindWrite, Vid: 3, KeyStart: 10, KeyCount: 2, Cookie: 1, Expiry: exp}); err == nil {
		t.Error("a write token with a cookie was signed")
	}
	// A token without a kind (as an older signer wrote them) is malformed.
	old := jwt.NewWithClaims(jwt.SigningMethodHS256, jwtClaims{Vid: 3, KeyStart: 10, KeyCount: 1,
		RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(exp)}})
	str, err := old.SignedString(s.secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AuthorizeWrite(str, 3, []uint64{10}); !errors.Is(err, ErrMalformed) {
		t.Errorf("a token without a kind: %v, want ErrMalformed", err)
	}
}
