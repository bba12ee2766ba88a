package needle

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// Owner picks the node that owns key among nodes by rendezvous
// (highest-random-weight) hashing and returns its index, or -1 when nodes is
// empty.
//
// Every node gets the score xxhash64(node || key as 8 little-endian bytes);
// the node with the highest score owns the key, ties going to the smaller
// node name. Hence:
//
//   - the owner depends only on the set of node names, not on their order,
//     so every process configured with the same nodes agrees (the
//     directory's URL builder and the cache tier both call Owner);
//   - keys spread evenly over the nodes;
//   - adding a node moves to it only the keys it now owns (about 1/(n+1) of
//     them), and removing a node moves only the keys it owned.
//
// Node names are compared as given: "cache1:8080" and "http://cache1:8080"
// are different nodes. A name listed twice counts once (the first index is
// returned). Owner costs one hash per node and allocates nothing for names
// up to 56 bytes.
func Owner(key uint64, nodes []string) int {
	best := -1
	var bestScore uint64
	var buf [64]byte
	for i, node := range nodes {
		b := append(buf[:0], node...)
		b = binary.LittleEndian.AppendUint64(b, key)
		score := xxhash.Sum64(b)
		if best < 0 || score > bestScore || (score == bestScore && node < nodes[best]) {
			best, bestScore = i, score
		}
	}
	return best
}
