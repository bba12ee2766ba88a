package directory

import "fmt"

// VolumeState is the state of a logical volume or of one replica, as the
// directory keeps it. It is persisted by name (see MarshalText), so the
// numbering may change without touching stored state.
type VolumeState uint8

// The volume states.
const (
	// StateUnknown: not reported yet, or missing from the store's report.
	StateUnknown VolumeState = iota
	// StateWritable: takes new photos.
	StateWritable
	// StateReadOnly: serves reads and deletes; no new photos.
	StateReadOnly
	// StateSealed: compacted for good, read-only.
	StateSealed
	// StateEC: erasure-coded; its data lives in shards.
	StateEC
	// StateFailed: the store could not open it.
	StateFailed
)

var volumeStateNames = [...]string{
	StateUnknown:  "unknown",
	StateWritable: "writable",
	StateReadOnly: "read-only",
	StateSealed:   "sealed",
	StateEC:       "ec",
	StateFailed:   "failed",
}

// String returns the state's name: "writable", "read-only", "sealed",
// "ec", "failed" or "unknown".
func (s VolumeState) String() string {
	if int(s) < len(volumeStateNames) {
		return volumeStateNames[s]
	}
	return fmt.Sprintf("VolumeState(%d)", uint8(s))
}

// MarshalText implements encoding.TextMarshaler: the state's name.
func (s VolumeState) MarshalText() ([]byte, error) {
	if int(s) >= len(volumeStateNames) {
		return nil, fmt.Errorf("directory: invalid volume state %d", uint8(s))
	}
	return []byte(volumeStateNames[s]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *VolumeState) UnmarshalText(b []byte) error {
	for i, n := range volumeStateNames {
		if n == string(b) {
			*s = VolumeState(i)
			return nil
		}
	}
	return fmt.Errorf("directory: unknown volume state %q", b)
}

// v1VolumeState converts a state of the version 1 state file, which stored
// the wire enum's numbers (UNSPECIFIED 0, WRITABLE 1, READ_ONLY 2, SEALED 3,
// EC 4, FAILED 5).
func v1VolumeState(n int32) (VolumeState, error) {
	if n < 0 || int(n) >= len(volumeStateNames) {
		return 0, fmt.Errorf("directory: unknown version 1 volume state %d", n)
	}
	return VolumeState(n), nil
}
