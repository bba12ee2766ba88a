package tools

import (
	"context"
	"fmt"

	"github.com/haybale/haybale/store/volume"
)

// ECRebuildResult is what ECRebuild reports for one EC volume.
type ECRebuildResult struct {
	Vid     uint32          `json:"vid"`
	Before  volume.ECReport `json:"before"`
	Rebuilt []int           `json:"rebuilt"`
}

// ECRebuild verifies the EC volumes in dir (only vid when it is not zero)
// and regenerates their missing and damaged shards from the others. Run it
// on a stopped store. A volume with nothing to repair is left alone; one
// that has more than 4 shards lost, or needles that stay unreadable, makes
// it return ErrCorrupt.
func ECRebuild(ctx context.Context, dir string, vid uint32, out Output) ([]ECRebuildResult, error) {
	vids, err := ecVids(dir, vid)
	if err != nil {
		return nil, err
	}
	var results []ECRebuildResult
	failed := 0
	for _, v := range vids {
		prog, done := out.progress(fmt.Sprintf("ec verify %d", v))
		rep, err := volume.VerifyEC(ctx, dir, v, volume.ECFilesOptions{Progress: prog})
		done()
		if err != nil {
			return results, fmt.Errorf("EC volume %d in %s: %w", v, dir, err)
		}
		res := ECRebuildResult{Vid: v, Before: rep}
		switch {
		case rep.Healthy():
			out.printf("%s: EC volume %d: all %d shards intact, nothing to rebuild\n", dir, v, volume.ECShards)
		case !rep.Recoverable():
			failed++
			printECReport(out, dir, rep)
			out.printf("  cannot rebuild: shards %v lost, at most %d can be rebuilt\n", rep.Lost(), volume.ECParityShards)
		default:
			prog, done := out.progress(fmt.Sprintf("ec rebuild %d", v))
			res.Rebuilt, err = volume.RebuildEC(ctx, dir, v, rep.Damaged, volume.ECFilesOptions{Progress: prog})
			done()
			if err != nil {
				return results, fmt.Errorf("EC volume %d in %s: %w", v, dir, err)
			}
			out.printf("%s: EC volume %d: rebuilt shards %v\n", dir, v, res.Rebuilt)
			after, err := volume.VerifyEC(ctx, dir, v, volume.ECFilesOptions{})
			if err != nil {
				return results, err
			}
			if !after.Healthy() {
				failed++
				printECReport(out, dir, after)
			}
		}
		results = append(results, res)
	}
	if err := out.json(results); err != nil {
		return results, err
	}
	if failed > 0 {
		return results, fmt.Errorf("%w: %d EC volume(s) in %s could not be fully repaired", ErrCorrupt, failed, dir)
	}
	return results, nil
}
