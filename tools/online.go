package tools

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// dialStore connects to a store's gRPC address with creds (an operator's
// certificate on a TLS plane); the server must be a store.
func dialStore(creds *rpc.Credentials, addr string) (storepb.StoreClient, func(), error) {
	conn, err := rpc.Dial(creds, addr, []pki.Role{pki.RoleStore})
	if err != nil {
		return nil, nil, fmt.Errorf("store %s: %w", addr, err)
	}
	return storepb.NewStoreClient(conn), func() { conn.Close() }, nil
}

// OnlineCompactResult is what CompactOnline reports.
type OnlineCompactResult struct {
	Store          string        `json:"store"`
	Vid            uint32        `json:"vid"`
	Generation     uint32        `json:"generation"`
	SizeBefore     uint64        `json:"size_before"`
	SizeAfter      uint64        `json:"size_after"`
	ReclaimedBytes uint64        `json:"reclaimed_bytes"`
	CopiedNeedles  uint64        `json:"copied_needles"`
	CorruptNeedles uint64        `json:"corrupt_needles"`
	Duration       time.Duration `json:"duration_ns"`
}

// CompactOnline asks the store at addr to compact volume vid while it keeps
// serving reads and taking writes, and reports the bytes reclaimed.
func CompactOnline(ctx context.Context, creds *rpc.Credentials, addr string, vid uint32, out Output) (OnlineCompactResult, error) {
	res := OnlineCompactResult{Store: addr, Vid: vid}
	sc, closeFn, err := dialStore(creds, addr)
	if err != nil {
		return res, err
	}
	defer closeFn()
	resp, err := sc.Compact(ctx, &storepb.CompactRequest{Vid: vid})
	if err != nil {
		return res, fmt.Errorf("compact volume %d on %s: %w", vid, addr, err)
	}
	res.Generation = resp.GetVolume().GetCompactionGeneration()
	res.SizeBefore, res.SizeAfter = resp.GetSizeBefore(), resp.GetSizeAfter()
	res.ReclaimedBytes, res.CopiedNeedles, res.CorruptNeedles = resp.GetReclaimedBytes(), resp.GetCopiedNeedles(), resp.GetCorruptNeedles()
	res.Duration = time.Duration(resp.GetDurationMs()) * time.Millisecond
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("volume %d on %s: generation %d, %d -> %d bytes, %d bytes reclaimed, %d needles copied in %v\n",
		vid, addr, res.Generation, res.SizeBefore, res.SizeAfter, res.ReclaimedBytes, res.CopiedNeedles, res.Duration)
	if res.CorruptNeedles > 0 {
		out.printf("volume %d on %s: %d damaged needles were left out; sync the volume from a healthy replica\n", vid, addr, res.CorruptNeedles)
		return res, fmt.Errorf("%w: %d damaged needles in volume %d on %s", ErrCorrupt, res.CorruptNeedles, vid, addr)
	}
	return res, nil
}

// ReplicaSyncResult is what ReplicaSync reports.
type ReplicaSyncResult struct {
	Vid    uint32 `json:"vid"`
	From   string `json:"from"`
	To     string `json:"to"`
	Bytes  uint64 `json:"bytes"`
	Images uint64 `json:"images"`
	State  string `json:"state"`
}

// ReplicaSync makes the copy of volume vid on the store at to a verified
// copy of the one on the store at from: the target pulls the volume
// (resuming an interrupted pull), verifies every needle, rebuilds its idx
// and serves it. Run it again after an interruption to resume.
func ReplicaSync(ctx context.Context, creds *rpc.Credentials, vid uint32, from, to string, out Output) (ReplicaSyncResult, error) {
	res := ReplicaSyncResult{Vid: vid, From: from, To: to}
	sc, closeFn, err := dialStore(creds, to)
	if err != nil {
		return res, err
	}
	defer closeFn()
	stream, err := sc.ReplicateVolume(ctx, &storepb.ReplicateVolumeRequest{Vid: vid, SourceGrpcAddr: from})
	if err != nil {
		return res, fmt.Errorf("replicate volume %d from %s to %s: %w", vid, from, to, err)
	}
	progs := map[string]func(done, total int64){}
	ends := map[string]func(){}
	defer func() {
		for _, end := range ends {
			end()
		}
	}()
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return res, fmt.Errorf("replicate volume %d: the store ended without finishing", vid)
		}
		if err != nil {
			return res, fmt.Errorf("replicate volume %d from %s to %s: %w", vid, from, to, err)
		}
		if p.GetPhase() == "done" {
			v := p.GetVolume()
			res.Bytes, res.Images, res.State = v.GetSizeBytes(), v.GetNeedleCount(), v.GetState().String()
			break
		}
		prog, ok := progs[p.GetPhase()]
		if !ok {
			prog, ends[p.GetPhase()] = out.progress(p.GetPhase() + " volume " + fmt.Sprint(vid))
			progs[p.GetPhase()] = prog
		}
		if prog != nil {
			prog(int64(p.GetCopiedBytes()), int64(p.GetTotalBytes()))
		}
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("volume %d: %s now serves a verified copy from %s (%d bytes, %d images)\n", vid, to, from, res.Bytes, res.Images)
	return res, nil
}
