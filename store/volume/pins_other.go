//go:build !linux

package volume

import (
	"errors"

	"github.com/haybale/haybale/needle"
)

// DefaultVerifiedMappings is the store's default bound on verified
// mappings (which exist on Linux only; see pins_linux.go).
const DefaultVerifiedMappings = 14000

// Pins keeps verified mappings of needles of PinMin bytes or more on Linux (see
// pins_linux.go). Elsewhere NewPins fails, so none exists.
type Pins struct{}

// PinStats are the counters of a Pins.
type PinStats struct {
	Hits, Reverified, Evicted, Dropped int64
	Cached                             int
	Live                               int64
}

// NewPins fails: verified mappings need Linux's /proc/self/pagemap.
func NewPins(int) (*Pins, error) {
	return nil, errors.New("volume: verified mappings need Linux")
}

// Stats returns zero counters.
func (*Pins) Stats() PinStats { return PinStats{} }

func (*Pins) dropMap(*datMap) {}

func (*Volume) dropPinsLocked(uint64, uint32) {}

func (v *Volume) readPinned(*Pins, *datMap, uint64, uint64, needle.SizeCode, int64, int) (Ref, bool, bool, error) {
	return Ref{}, false, false, nil
}

// pin is a verified mapping, which exists on Linux only.
type pin struct{}

func (*Pins) release(*pin) {}

func (*pin) stillVerified(uint64) bool { return false }
