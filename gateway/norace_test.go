//go:build !race

package gateway

// raceEnabled reports whether the race detector is on.
const raceEnabled = false
