package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/haybale/haybale/store/volume"
)

// TestStoreVerifiedMappingsFlag: --verified-mappings defaults to the
// store's default bound, passed as the store's default option (0: run
// without them, with a log line, where the kernel cannot give them), 0
// turns verified mappings off (a negative store option), another bound
// is asked for as it is, and a negative value is refused with the flag's
// name.
func TestStoreVerifiedMappingsFlag(t *testing.T) {
	f, err := parseStoreFlags(t)
	if err != nil || f.verifiedMaps != volume.DefaultVerifiedMappings || verifiedMappingsOption(f.verifiedMaps) != 0 {
		t.Fatalf("default: %v, %d, store option %d, want 0 (the store's default)", err, f.verifiedMaps, verifiedMappingsOption(f.verifiedMaps))
	}
	if f, err := parseStoreFlags(t, "--verified-mappings", "0"); err != nil || verifiedMappingsOption(f.verifiedMaps) >= 0 {
		t.Fatalf("--verified-mappings 0: %v, store option %d, want negative (off)", err, verifiedMappingsOption(f.verifiedMaps))
	}
	if f, err := parseStoreFlags(t, "--verified-mappings", "100"); err != nil || verifiedMappingsOption(f.verifiedMaps) != 100 {
		t.Fatalf("--verified-mappings 100: %v", err)
	}
	if _, err := parseStoreFlags(t, "--verified-mappings", "-3"); err == nil || !strings.Contains(err.Error(), "--verified-mappings") {
		t.Fatalf("--verified-mappings -3: %v, want an error naming the flag", err)
	}
}

// TestStoreDirectReadsFlag: --direct-reads is on by default with the
// default window, can be turned off, and a window out of bounds is refused
// with the flag's name.
func TestStoreDirectReadsFlag(t *testing.T) {
	f, err := parseStoreFlags(t)
	if err != nil || !f.directReads || f.directWindow != volume.DefaultDirectWindow {
		t.Fatalf("default: %v, direct %v, window %d", err, f.directReads, f.directWindow)
	}
	if f, err := parseStoreFlags(t, "--direct-reads=false"); err != nil || f.directReads {
		t.Fatalf("--direct-reads=false: %v, direct %v", err, f != nil && f.directReads)
	}
	for _, w := range []string{"0", "-1", "100000000"} {
		if _, err := parseStoreFlags(t, "--direct-window", w); err == nil || !strings.Contains(err.Error(), "--direct-window") {
			t.Fatalf("--direct-window %s: %v, want an error naming the flag", w, err)
		}
	}
}

// parseStoreFlags parses `haybale store` flags (with a --dir of its own
// before args) and validates them.
func parseStoreFlags(t *testing.T, args ...string) (*storeFlags, error) {
	var f storeFlags
	fs := pflag.NewFlagSet("store", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse(append([]string{"--dir", t.TempDir()}, args...)); err != nil {
		return nil, err
	}
	return &f, f.validate()
}
