//go:build !linux

package volume

import (
	"errors"

	"github.com/haybale/haybale/internal/vfs"
)

// datMap maps a volume's file on Linux (see mapped_linux.go). Elsewhere
// volumes read with pread only: mapDat maps nothing, so no datMap exists
// and none of its methods is ever called.
type datMap struct {
	data   []byte
	fd     int
	direct vfs.File
}

func mapDat(vfs.File, int64) (*datMap, error) { return nil, nil }

func (*datMap) acquire()                 { panic("volume: no mappings on this system") }
func (*datMap) release()                 { panic("volume: no mappings on this system") }
func (*datMap) covers(int64, int) bool   { return false }
func (*datMap) resident(int64, int) bool { return false }

func (*datMap) ReadAt([]byte, int64) (int, error) { return 0, errMapFault }

var errMapFault = errors.New("volume: fault reading the mapped file")

func copyMapped([]byte, []byte, int64) error { return errMapFault }

// nowaitReader is never used where volumes are not mapped.
type nowaitReader struct{ m *datMap }

func (nowaitReader) ReadAt([]byte, int64) (int, error) { return 0, ErrWouldBlock }

// preadReader is never used where volumes are not mapped.
type preadReader struct{ m *datMap }

func (preadReader) ReadAt([]byte, int64) (int, error) { return 0, errMapFault }

// coldReader is never used where volumes are not mapped.
type coldReader struct{ m *datMap }

func (coldReader) ReadAt([]byte, int64) (int, error) { return 0, errMapFault }
