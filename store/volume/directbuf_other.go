//go:build !linux

package volume

// mapSlab maps nothing where volumes do not read direct (only Linux does):
// the pool stays empty.
func mapSlab() ([]byte, error) { return nil, nil }

func unmapSlab([]byte) {}
