package tools

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
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

// ECDecodeOnlineResult is what ECDecodeOnline reports.
type ECDecodeOnlineResult struct {
	Store     string `json:"store"`
	Vid       uint32 `json:"vid"`
	Size      uint64 `json:"size"`
	Images    uint64 `json:"images"`
	Deletes   uint32 `json:"deletes"`
	Reclaimed uint64 `json:"reclaimed_bytes"`
}

// ECDecodeOnline asks the store at addr to turn its EC volume vid back into
// a plain, sealed volume in place (the EcDecode RPC).
func ECDecodeOnline(ctx context.Context, creds *rpc.Credentials, addr string, vid uint32, out Output) (ECDecodeOnlineResult, error) {
	res := ECDecodeOnlineResult{Store: addr, Vid: vid}
	sc, closeFn, err := dialStore(creds, addr)
	if err != nil {
		return res, err
	}
	defer closeFn()
	resp, err := sc.EcDecode(ctx, &storepb.EcDecodeRequest{Vid: vid})
	if status.Code(err) == codes.DataLoss || status.Code(err) == codes.Unavailable {
		return res, fmt.Errorf("%w: EC decode volume %d on %s: %w", ErrCorrupt, vid, addr, err)
	}
	if err != nil {
		return res, fmt.Errorf("EC decode volume %d on %s: %w", vid, addr, err)
	}
	v := resp.GetVolume()
	res.Size, res.Images, res.Deletes, res.Reclaimed = v.GetSizeBytes(), v.GetNeedleCount(), resp.GetDeletes(), resp.GetReclaimedBytes()
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("volume %d on %s: decoded into a plain volume of %d bytes, %d images; %d journaled deletes applied, %d bytes reclaimed\n",
		vid, addr, res.Size, res.Images, res.Deletes, res.Reclaimed)
	return res, nil
}
