//go:build !race

package resizer

const raceEnabled = false
