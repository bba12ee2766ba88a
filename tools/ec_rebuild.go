package tools

import (
	"context"
	"fmt"

	"github.com/haybale/haybale/store/volume"
)

// ECRebuildResult is what ECRebuild reports for one EC volume.
type ECRebuildResult struct {
	Vid    uint32          `json:"vid"`
	Before volume.ECReport `json:"before"`
	// IndexRegenerated is set when the ecx was missing or damaged and was
	// rebuilt from the shards first; IndexProblem says what was wrong.
	IndexRegenerated *volume.ECRegenResult `json:"index_regenerated,omitempty"`
	IndexProblem     string                `json:"index_problem,omitempty"`
	Rebuilt          []int                 `json:"rebuilt"`
}

// ECRebuild verifies the EC volumes in dir (only vid when it is not zero)
// and regenerates their missing and damaged shards from the others. An
// index (ecx) that is missing or damaged is first rebuilt from the shards
// (byte-identical to the one the encode wrote; the journal is kept), and a
// journal whose header is damaged is rewritten with its intact records.
// Run it on a stopped store. A volume with nothing to repair is left
// alone; one that has more than 4 shards lost, or needles that stay
// unreadable, makes it return ErrCorrupt.
func ECRebuild(ctx context.Context, dir string, vid uint32, out Output) ([]ECRebuildResult, error) {
	vids, err := ecVids(dir, vid)
	if err != nil {
		return nil, err
	}
	var results []ECRebuildResult
	failed := 0
	for _, v := range vids {
		var regen *volume.ECRegenResult
		ixErr := volume.ECIndexOK(ctx, nil, dir, v)
		if ixErr != nil {
			out.printf("%s: EC volume %d: index unusable (%v): regenerating it from the shards\n", dir, v, ixErr)
			res, err := volume.RegenerateECXFiles(ctx, dir, v, volume.ECFilesOptions{})
			if err != nil {
				return results, fmt.Errorf("EC volume %d in %s: regenerate the index: %w", v, dir, err)
			}
			regen = &res
			out.printf("%s: EC volume %d: index regenerated, %d needles\n", dir, v, res.Needles)
		}
		if kept, err := volume.RepairECJournal(ctx, nil, dir, v); err != nil {
			return results, fmt.Errorf("EC volume %d in %s: journal: %w", v, dir, err)
		} else if kept > 0 {
			out.printf("%s: EC volume %d: journal header damaged: rewritten with its %d intact deletes\n", dir, v, kept)
		}
		prog, done := out.progress(fmt.Sprintf("ec verify %d", v))
		rep, err := volume.VerifyEC(ctx, dir, v, volume.ECFilesOptions{Progress: prog})
		done()
		if err != nil {
			return results, fmt.Errorf("EC volume %d in %s: %w", v, dir, err)
		}
		res := ECRebuildResult{Vid: v, Before: rep, IndexRegenerated: regen}
		if ixErr != nil {
			res.IndexProblem = ixErr.Error()
		}
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
