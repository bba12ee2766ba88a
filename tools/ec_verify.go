package tools

import (
	"context"
	"fmt"

	"github.com/haybale/haybale/store/volume"
)

// ecVids returns vid when it is not zero, else every EC volume in dir.
func ecVids(dir string, vid uint32) ([]uint32, error) {
	if vid != 0 {
		return []uint32{vid}, nil
	}
	vids, err := volume.ECVolumesIn(nil, dir)
	if err != nil {
		return nil, err
	}
	if len(vids) == 0 {
		return nil, fmt.Errorf("%s holds no EC volume (no <vid>.ecx or <vid>.ecNN files)", dir)
	}
	return vids, nil
}

// ECVerify checks the EC volumes in dir (only vid when it is not zero):
// the index and journal, every shard's header, the parity of every row,
// and that every live needle reads. It returns ErrCorrupt when a shard is
// missing or damaged or a needle cannot be read.
func ECVerify(ctx context.Context, dir string, vid uint32, out Output) ([]volume.ECReport, error) {
	vids, err := ecVids(dir, vid)
	if err != nil {
		return nil, err
	}
	var reps []volume.ECReport
	damaged := 0
	for _, v := range vids {
		prog, done := out.progress(fmt.Sprintf("ec verify %d", v))
		rep, err := volume.VerifyEC(ctx, dir, v, volume.ECFilesOptions{Progress: prog})
		done()
		if err != nil {
			return reps, fmt.Errorf("EC volume %d in %s: %w", v, dir, err)
		}
		reps = append(reps, rep)
		printECReport(out, dir, rep)
		if !rep.Healthy() {
			damaged++
		}
	}
	if err := out.json(reps); err != nil {
		return reps, err
	}
	if damaged > 0 {
		return reps, fmt.Errorf("%w: %d of %d EC volume(s) in %s damaged", ErrCorrupt, damaged, len(reps), dir)
	}
	return reps, nil
}

func printECReport(out Output, dir string, rep volume.ECReport) {
	out.printf("%s: EC volume %d, generation %d, %d bytes encoded\n", dir, rep.Vid, rep.Generation, rep.DataSize)
	out.printf("  live:     %d images, %d journaled deletes\n", rep.Images, rep.Deletes)
	out.printf("  shards:   %d of %d present, missing %v, damaged %v\n",
		volume.ECShards-len(rep.Missing), volume.ECShards, rep.Missing, rep.Damaged)
	for _, p := range rep.Problems {
		out.printf("  PROBLEM:  %s\n", p)
	}
	switch {
	case rep.Healthy():
		out.printf("  result:   ok\n")
	case rep.Recoverable():
		out.printf("  result:   DAMAGED, recoverable: run haybale ec rebuild\n")
	default:
		out.printf("  result:   DAMAGED, %d needle(s) unrecoverable\n", rep.Unreadable)
	}
}
