package tools

import (
	"context"

	"github.com/haybale/haybale/store/volume"
)

// CompactFile compacts the volume file at path offline: only live needles
// are kept, the compaction generation is bumped and the files are swapped
// atomically. Run it on a stopped store.
func CompactFile(ctx context.Context, path string, out Output) (volume.CompactResult, error) {
	prog, done := out.progress("compact " + path)
	res, err := volume.CompactFile(ctx, path, volume.Options{}, volume.CompactOptions{Progress: prog})
	done()
	if err != nil {
		return res, err
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("%s: generation %d, %d -> %d bytes, %d bytes reclaimed, %d needles copied in %v\n",
		path, res.Generation, res.SizeBefore, res.SizeAfter, res.Reclaimed, res.Copied, res.Duration.Round(1e6))
	if res.CorruptNeedle > 0 {
		out.printf("%s: %d damaged needles were left out; restore them from a replica\n", path, res.CorruptNeedle)
	}
	return res, nil
}
