package tools

import (
	"context"
	"fmt"

	"github.com/haybale/haybale/store/volume"
)

// Verify reads every needle of the volume file at path and checks its
// checksum, reporting live, deleted and damaged needles and the byte ranges
// of damage. It returns ErrCorrupt when anything is damaged or torn.
func Verify(ctx context.Context, path string, out Output) (volume.FileReport, error) {
	prog, done := out.progress("verify " + path)
	rep, err := volume.InspectFile(ctx, path, volume.InspectOptions{Progress: prog})
	done()
	if err != nil {
		return rep, err
	}
	if err := out.json(rep); err != nil {
		return rep, err
	}
	out.printf("%s: volume %d, generation %d, %d bytes\n", path, rep.Vid, rep.Generation, rep.Size)
	out.printf("  needles:  %d (tombstones included)\n", rep.Needles)
	out.printf("  live:     %d images, %d bytes\n", rep.Live, rep.LiveBytes)
	out.printf("  deleted:  %d needles, %d bytes reclaimable by compaction\n", rep.Dead, rep.DeadBytes)
	out.printf("  tombstones: %d, %d bytes (kept by compaction)\n", rep.Tombstones, rep.TombstoneBytes)
	for _, d := range rep.Corrupt {
		out.printf("  CORRUPT:  bytes [%d, %d): %s\n", d.Start, d.End, d.Cause)
	}
	if rep.TornTail != nil {
		out.printf("  TORN TAIL: bytes [%d, %d): %s (a store opening this volume cuts it off)\n",
			rep.TornTail.Start, rep.TornTail.End, rep.TornTail.Cause)
	}
	if !rep.Healthy() {
		out.printf("  result:   DAMAGED\n")
		return rep, fmt.Errorf("%w: %d damaged stretch(es)%s in %s", ErrCorrupt, len(rep.Corrupt), tornNote(rep), path)
	}
	out.printf("  result:   ok\n")
	return rep, nil
}

func tornNote(rep volume.FileReport) string {
	if rep.TornTail != nil {
		return " and a torn tail"
	}
	return ""
}
