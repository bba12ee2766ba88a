package tools

import (
	"context"
	"fmt"

	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// ECEncodeOptions choose the block sizes of an EC encode; zero picks the
// defaults (1 GiB large, 1 MiB small blocks).
type ECEncodeOptions struct {
	LargeBlock, SmallBlock int64
}

// ECEncode encodes the volume file at path (named <vid>.dat, on a stopped
// store) into Reed-Solomon (10,4) EC files in outDir: <vid>.ec00..ec13, the
// <vid>.ecx index and an empty <vid>.ecj journal. The .dat is not changed.
func ECEncode(ctx context.Context, path, outDir string, opts ECEncodeOptions, out Output) (volume.ECEncodeResult, error) {
	prog, done := out.progress("ec encode " + path)
	res, err := volume.EncodeECFile(ctx, path, outDir, volume.Options{},
		volume.ECEncodeOptions{LargeBlock: opts.LargeBlock, SmallBlock: opts.SmallBlock, Progress: prog})
	done()
	if err != nil {
		return res, err
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("%s: volume %d encoded into %s\n", path, res.Vid, outDir)
	out.printf("  data:       %d bytes, %d live needles (%d bytes)\n", res.DataSize, res.Needles, res.LiveBytes)
	out.printf("  rows:       %d of %d-byte blocks, %d of %d-byte blocks\n", res.LargeRows, res.LargeBlock, res.SmallRows, res.SmallBlock)
	out.printf("  shards:     %d x %d bytes (%.2fx the volume)\n", volume.ECShards, res.ShardSize,
		float64(volume.ECShards*res.ShardSize)/float64(max(res.DataSize, 1)))
	out.printf("  straddling: %d needles cross a block boundary (%s)\n", res.Straddling, percent(res.Straddling, res.Needles))
	return res, nil
}

func percent(part, whole int) string {
	if whole == 0 {
		return "0%"
	}
	return fmt.Sprintf("%.2f%%", 100*float64(part)/float64(whole))
}

// ECEncodeOnlineResult is what ECEncodeOnline reports.
type ECEncodeOnlineResult struct {
	Store      string `json:"store"`
	Vid        uint32 `json:"vid"`
	DataSize   uint64 `json:"data_size"`
	ShardSize  uint64 `json:"shard_size"`
	Needles    uint32 `json:"needles"`
	Straddling uint32 `json:"straddling"`
}

// ECEncodeOnline asks the store at addr to erasure-code its sealed volume
// vid in place (the EcEncode RPC): the store writes the shards beside the
// .dat, serves the EC volume from then on on the same image paths, and
// removes the .dat. Spreading the shards over other stores is not part of
// it.
func ECEncodeOnline(ctx context.Context, creds *rpc.Credentials, addr string, vid uint32, opts ECEncodeOptions, out Output) (ECEncodeOnlineResult, error) {
	res := ECEncodeOnlineResult{Store: addr, Vid: vid}
	if opts.LargeBlock < 0 || opts.SmallBlock < 0 {
		return res, fmt.Errorf("block sizes must not be negative")
	}
	sc, closeFn, err := dialStore(creds, addr)
	if err != nil {
		return res, err
	}
	defer closeFn()
	resp, err := sc.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: vid, LargeBlock: uint64(opts.LargeBlock), SmallBlock: uint64(opts.SmallBlock)})
	if err != nil {
		return res, fmt.Errorf("EC encode volume %d on %s: %w", vid, addr, err)
	}
	res.DataSize, res.ShardSize, res.Needles, res.Straddling = resp.GetDataSize(), resp.GetShardSize(), resp.GetNeedles(), resp.GetStraddling()
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("volume %d on %s: encoded %d bytes into %d shards of %d bytes; %d needles, %d straddling a block\n",
		vid, addr, res.DataSize, volume.ECShards, res.ShardSize, res.Needles, res.Straddling)
	return res, nil
}
