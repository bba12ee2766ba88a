package needle

import (
	"fmt"
	"slices"
	"testing"
)

func TestOwnerEmpty(t *testing.T) {
	if got := Owner(1, nil); got != -1 {
		t.Fatalf("Owner(nil) = %d, want -1", got)
	}
	if got := Owner(1, []string{"a"}); got != 0 {
		t.Fatalf("Owner of one node = %d, want 0", got)
	}
}

// TestOwnerGolden pins the hash: the cache tier and the directory must agree
// across versions, so a change of owners is a compatibility break.
func TestOwnerGolden(t *testing.T) {
	nodes := []string{"cache1:8080", "cache2:8080", "cache3:8080"}
	var got []int
	for key := uint64(1); key <= 12; key++ {
		got = append(got, Owner(key, nodes))
	}
	want := []int{2, 0, 2, 1, 1, 2, 0, 0, 2, 1, 1, 1}
	if !slices.Equal(got, want) {
		t.Fatalf("owners of keys 1..12 = %v, want %v", got, want)
	}
}

func TestOwnerStableUnderReordering(t *testing.T) {
	nodes := []string{"a:1", "b:1", "c:1", "d:1", "e:1"}
	rev := slices.Clone(nodes)
	slices.Reverse(rev)
	for key := uint64(1); key < 5000; key++ {
		a, b := nodes[Owner(key, nodes)], rev[Owner(key, rev)]
		if a != b {
			t.Fatalf("key %d: owner %s in one order, %s in another", key, a, b)
		}
		if again := Owner(key, nodes); nodes[again] != a {
			t.Fatalf("key %d: owner changed between calls", key)
		}
	}
}

func TestOwnerBalanced(t *testing.T) {
	const n, keys = 8, 80000
	nodes := make([]string, n)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("cache%d.example.com:8080", i)
	}
	counts := make([]int, n)
	// Sequential keys, as the sequencer issues them.
	for key := uint64(1); key <= keys; key++ {
		counts[Owner(key, nodes)]++
	}
	mean := keys / n
	for i, c := range counts {
		if c < mean*9/10 || c > mean*11/10 {
			t.Errorf("node %d owns %d keys, mean %d (counts %v)", i, c, mean, counts)
		}
	}
}

func TestOwnerMinimalMovement(t *testing.T) {
	nodes := []string{"n0", "n1", "n2", "n3"}
	grown := append(slices.Clone(nodes), "n4")
	const keys = 40000
	moved := 0
	for key := uint64(1); key <= keys; key++ {
		before := nodes[Owner(key, nodes)]
		after := grown[Owner(key, grown)]
		if before != after {
			if after != "n4" {
				t.Fatalf("key %d moved from %s to %s, not to the new node", key, before, after)
			}
			moved++
		}
	}
	// About 1/5 of the keys should move to the new node.
	if moved < keys/5*8/10 || moved > keys/5*12/10 {
		t.Fatalf("%d of %d keys moved, want about %d", moved, keys, keys/5)
	}
	// Removing the node again moves exactly those keys back.
	for key := uint64(1); key <= keys; key++ {
		if grown[Owner(key, grown)] != "n4" && nodes[Owner(key, nodes)] != grown[Owner(key, grown)] {
			t.Fatalf("key %d not owned by n4 changed owner", key)
		}
	}
}

func TestOwnerDuplicatesAndLongNames(t *testing.T) {
	long := string(make([]byte, 300))
	nodes := []string{"x", long, "x"}
	for key := uint64(1); key < 1000; key++ {
		if got := Owner(key, nodes); got == 2 {
			t.Fatalf("key %d: the duplicate at index 2 won over index 0", key)
		}
	}
}

func BenchmarkOwner(b *testing.B) {
	nodes := []string{"cache1:8080", "cache2:8080", "cache3:8080", "cache4:8080"}
	for i := 0; b.Loop(); i++ {
		Owner(uint64(i), nodes)
	}
}
