package store

import (
	"context"
	"runtime"
	"strings"
	"testing"
)

// TestStoreVerifiedMappingsOption: a bound the system cannot give is an
// error naming vm.max_map_count; a negative one turns verified mappings
// off, and the default turns them on (on Linux).
func TestStoreVerifiedMappingsOption(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("verified mappings need Linux")
	}
	if _, err := Open(context.Background(), Options{Dir: t.TempDir(), VerifiedMappings: 1 << 30}); err == nil || !strings.Contains(err.Error(), "max_map_count") {
		t.Fatalf("a bound of 1<<30: %v, want an error naming vm.max_map_count", err)
	}
	for _, c := range []struct {
		opt int
		on  bool
	}{{-1, false}, {0, true}, {16, true}} {
		s, err := Open(context.Background(), Options{Dir: t.TempDir(), VerifiedMappings: c.opt})
		if err != nil {
			t.Fatal(err)
		}
		if (s.pins != nil) != c.on || (s.volumeOptions().Pins != nil) != c.on {
			t.Errorf("VerifiedMappings %d: on %v, want %v", c.opt, s.pins != nil, c.on)
		}
		s.Close()
	}
}
