package tools

import (
	"context"
	"errors"
	"fmt"

	"github.com/haybale/haybale/store/volume"
)

// ECDecode turns the EC volume in dir (vid, or the only one there when vid
// is zero) back into a plain volume file at outPath, applying the deletes
// of its journal. Needles come out byte-identical to the encoded ones. It
// returns ErrCorrupt when some bytes cannot be read or rebuilt.
func ECDecode(ctx context.Context, dir string, vid uint32, outPath string, out Output) (volume.ECDecodeResult, error) {
	vids, err := ecVids(dir, vid)
	if err != nil {
		return volume.ECDecodeResult{}, err
	}
	if len(vids) != 1 {
		return volume.ECDecodeResult{}, fmt.Errorf("%s holds EC volumes %v: choose one with --vid", dir, vids)
	}
	prog, done := out.progress(fmt.Sprintf("ec decode %d", vids[0]))
	res, err := volume.DecodeEC(ctx, dir, vids[0], outPath, volume.ECFilesOptions{Progress: prog})
	done()
	if errors.Is(err, volume.ErrUnrecoverable) || volume.IsCorruption(err) {
		return res, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if err != nil {
		return res, err
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("%s: EC volume %d decoded into %s\n", dir, res.Vid, outPath)
	out.printf("  volume:   generation %d, %d bytes, %d live images\n", res.Generation, res.Size, res.Images)
	out.printf("  journal:  %d deletes applied, %d bytes reclaimed\n", res.Deletes, res.Reclaimed)
	return res, nil
}
