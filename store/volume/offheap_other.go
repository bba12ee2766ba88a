//go:build !unix

package volume

// mapAnon reports that this system maps nothing: index memory comes from
// the Go heap.
func mapAnon(int) ([]byte, bool) { return nil, false }

func unmapAnon([]byte) bool { return false }
