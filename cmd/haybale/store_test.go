package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/haybale/haybale/store/volume"
)

// TestStoreVerifiedMappingsFlag: --verified-mappings defaults to the
// store's default bound, 0 turns verified mappings off (a negative store
// option), and a negative value is refused with the flag's name.
func TestStoreVerifiedMappingsFlag(t *testing.T) {
	parse := func(args ...string) (*storeFlags, error) {
		var f storeFlags
		fs := pflag.NewFlagSet("store", pflag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(append([]string{"--dir", t.TempDir()}, args...)); err != nil {
			return nil, err
		}
		return &f, f.validate()
	}
	f, err := parse()
	if err != nil || f.verifiedMaps != volume.DefaultVerifiedMappings || verifiedMappingsOption(f.verifiedMaps) != volume.DefaultVerifiedMappings {
		t.Fatalf("default: %v, %d", err, f.verifiedMaps)
	}
	if f, err := parse("--verified-mappings", "0"); err != nil || verifiedMappingsOption(f.verifiedMaps) >= 0 {
		t.Fatalf("--verified-mappings 0: %v, store option %d, want negative (off)", err, verifiedMappingsOption(f.verifiedMaps))
	}
	if f, err := parse("--verified-mappings", "100"); err != nil || verifiedMappingsOption(f.verifiedMaps) != 100 {
		t.Fatalf("--verified-mappings 100: %v", err)
	}
	if _, err := parse("--verified-mappings", "-3"); err == nil || !strings.Contains(err.Error(), "--verified-mappings") {
		t.Fatalf("--verified-mappings -3: %v, want an error naming the flag", err)
	}
}
