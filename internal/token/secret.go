package token

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// GeneratedSecretLen is the number of random bytes in a generated secret.
const GeneratedSecretLen = 32

// LoadSecret reads the secret in path: the file's bytes without surrounding
// white space. It fails with ErrWeakSecret when they are shorter than
// MinSecretLen.
func LoadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < MinSecretLen {
		return nil, fmt.Errorf("%w: %s", ErrWeakSecret, path)
	}
	return b, nil
}

// LoadOrCreateSecret loads the secret in path, or, when the file does not
// exist, generates one (GeneratedSecretLen bytes from crypto/rand, written as
// hex) and stores it with mode 0600. The file appears atomically with its
// whole content, so processes racing to create it all end up with the same
// secret. The parent directory is created if missing.
func LoadOrCreateSecret(path string) ([]byte, error) {
	b, err := LoadSecret(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return b, err
	}
	raw := make([]byte, GeneratedSecretLen)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("token: generate secret: %w", err)
	}
	text := []byte(hex.EncodeToString(raw) + "\n")
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("token: %w", err)
	}
	if _, err := tmp.Write(text); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("token: write secret: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("token: write secret: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("token: write secret: %w", err)
	}
	// Link fails when path exists, so a concurrent creator's secret wins
	// and is the one loaded below.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("token: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return LoadSecret(path)
}
