package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// openECVolumes settles every vid that has files in both forms (see
// volume.ResolveEC), opens the EC volumes, and returns the plain vids that
// remain to be opened.
func (s *Store) openECVolumes(ctx context.Context, datVids []uint32) ([]uint32, error) {
	ecVids, err := volume.ECVolumesIn(s.opts.FS, s.opts.Dir)
	if err != nil {
		return nil, err
	}
	all := slices.Concat(datVids, ecVids)
	slices.Sort(all)
	all = slices.Compact(all)
	var plain []uint32
	for _, vid := range all {
		form, err := volume.ResolveEC(s.opts.FS, s.opts.Dir, vid)
		if err != nil {
			s.opts.Logger.Error("volume files cannot be settled", "vid", vid, "err", err)
			s.mu.failed[vid] = err
			continue
		}
		switch form {
		case volume.FormDat:
			plain = append(plain, vid)
		case volume.FormNone:
			if slices.Contains(ecVids, vid) {
				// Shards or a journal without an index (and no .dat): the
				// index was lost. The EC sync fetches it from another
				// holder, or regenerates it from the shards.
				err := fmt.Errorf("%w: EC volume %d has files here but no index", errECIndexLost, vid)
				s.opts.Logger.Error("EC volume has no index", "vid", vid)
				s.mu.failed[vid] = err
				s.mu.ecRepair[vid] = true
			}
		case volume.FormEC:
			e, err := volume.OpenEC(ctx, s.opts.Dir, vid, s.ecOptions())
			if err != nil && volume.ECIndexOK(ctx, s.opts.FS, s.opts.Dir, vid) == nil {
				// A sound index: the journal's header may be damaged.
				// Keep its intact records under a fresh header; the
				// sync brings back what the damage took.
				if kept, jerr := volume.RepairECJournal(ctx, s.opts.FS, s.opts.Dir, vid); jerr == nil {
					if e2, err2 := volume.OpenEC(ctx, s.opts.Dir, vid, s.ecOptions()); err2 == nil {
						s.opts.Logger.Warn("EC journal could not be loaded and was rewritten with its intact records", "vid", vid, "kept", kept, "err", err)
						e, err = e2, nil
					}
				}
			}
			if err != nil {
				if ctxErr := ctx.Err(); ctxErr != nil {
					return nil, ctxErr
				}
				if ierr := volume.ECIndexOK(ctx, s.opts.FS, s.opts.Dir, vid); ierr != nil {
					// Never served from a damaged index: the EC sync
					// replaces it.
					err = fmt.Errorf("%w: %w", errECIndexLost, ierr)
					s.mu.ecRepair[vid] = true
				}
				s.opts.Logger.Error("EC volume failed to open", "vid", vid, "err", err)
				s.mu.failed[vid] = err
				continue
			}
			st := e.Status()
			if st.JournalDamaged > 0 {
				s.opts.Logger.Warn("EC journal had damaged records; they were dropped and come back from the other holders",
					"vid", vid, "damaged_records", st.JournalDamaged)
			}
			if s.ecHolders() != nil {
				// It may have missed deletes while it was down.
				e.HoldUntilSynced()
			}
			s.opts.Logger.Info("EC volume opened", "vid", vid, "images", st.Images, "shards", st.Local, "damaged_shards", st.Damaged)
			s.mu.ec[vid] = e
		}
	}
	return plain, nil
}

func (s *Store) ecOptions() volume.ECOptions {
	return volume.ECOptions{FS: s.opts.FS, Peers: s.opts.ShardPeers, Direct: s.direct}
}

// ECVolume returns the open EC volume vid.
func (s *Store) ECVolume(vid uint32) (*volume.ECVolume, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e, ok := s.mu.ec[vid]; ok {
		return e, nil
	}
	if err, ok := s.mu.failed[vid]; ok {
		return nil, fmt.Errorf("store: volume %d failed to open: %w", vid, err)
	}
	return nil, fmt.Errorf("%w: %d", ErrVolumeNotHere, vid)
}

// ECVolumes returns the open EC volumes ordered by vid.
func (s *Store) ECVolumes() []*volume.ECVolume {
	s.mu.RLock()
	es := make([]*volume.ECVolume, 0, len(s.mu.ec))
	for _, e := range s.mu.ec {
		es = append(es, e)
	}
	s.mu.RUnlock()
	slices.SortFunc(es, func(a, b *volume.ECVolume) int { return cmp.Compare(a.Vid(), b.Vid()) })
	return es
}

// EncodeVolume erasure-codes the sealed volume vid in place: it writes the
// EC files beside the .dat (the ecx last, as the commit point), opens the
// EC volume and serves it instead of the plain one, then removes the .dat,
// its idx and its mark. A crash at any moment leaves one form complete:
// before the ecx is durable the .dat is the volume; after it, ResolveEC at
// the next start-up keeps the EC form and removes the .dat.
func (s *Store) EncodeVolume(ctx context.Context, vid uint32, opts volume.ECEncodeOptions) (volume.ECEncodeResult, error) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	v, err := s.Volume(vid)
	if err != nil {
		return volume.ECEncodeResult{}, err
	}
	opts.Retire = true
	res, err := v.EncodeEC(ctx, s.opts.Dir, opts)
	if err != nil {
		return res, err
	}
	e, err := volume.OpenEC(ctx, s.opts.Dir, vid, s.ecOptions())
	if err != nil {
		return res, fmt.Errorf("store: open the encoded volume %d: %w", vid, err)
	}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		e.Close()
		return res, volume.ErrClosed
	}
	delete(s.mu.volumes, vid)
	s.mu.ec[vid] = e
	s.mu.Unlock()
	// Close waits for the reads still using the plain volume.
	if err := v.Close(); err != nil {
		s.opts.Logger.Warn("closing the encoded plain volume", "vid", vid, "err", err)
	}
	if err := volume.RemoveDat(s.opts.FS, s.opts.Dir, vid); err != nil {
		// The EC form is committed; ResolveEC removes the .dat at the
		// next start-up.
		s.opts.Logger.Warn("cannot remove the encoded volume's .dat", "vid", vid, "err", err)
	}
	s.opts.Logger.Info("volume erasure-coded", "vid", vid, "needles", res.Needles, "shard_size", res.ShardSize)
	return res, nil
}

// DecodeVolume turns the EC volume vid back into a plain, sealed volume in
// place (see volume.ECVolume.DecodeTo): reads go on meanwhile, deletes
// wait. Once the new .dat is renamed into place (the commit point) the
// store serves it and removes the EC files; after a crash in between,
// ResolveEC at start-up keeps the newer .dat.
func (s *Store) DecodeVolume(ctx context.Context, vid uint32) (volume.ECDecodeResult, error) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	e, err := s.ECVolume(vid)
	if err != nil {
		return volume.ECDecodeResult{}, err
	}
	res, err := e.DecodeTo(ctx, volume.DatPath(s.opts.Dir, vid), nil)
	if err != nil {
		return res, err
	}
	v, err := volume.Open(ctx, s.opts.Dir, vid, s.volumeOptions())
	if err != nil {
		return res, fmt.Errorf("store: open the decoded volume %d: %w", vid, err)
	}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		v.Close()
		return res, volume.ErrClosed
	}
	delete(s.mu.ec, vid)
	s.mu.volumes[vid] = v
	s.mu.Unlock()
	if err := e.Close(); err != nil {
		s.opts.Logger.Warn("closing the decoded EC volume", "vid", vid, "err", err)
	}
	if err := volume.RemoveEC(s.opts.FS, s.opts.Dir, vid); err != nil {
		s.opts.Logger.Warn("cannot remove the decoded volume's EC files", "vid", vid, "err", err)
	}
	s.opts.Logger.Info("EC volume decoded", "vid", vid, "images", res.Images, "deletes", res.Deletes)
	return res, nil
}

// StoreShardClient is the part of the store gRPC client ShardPeers uses.
type StoreShardClient interface {
	EcShardRead(ctx context.Context, req *storepb.EcShardReadRequest, opts ...grpc.CallOption) (*storepb.EcShardReadResponse, error)
}

// maxShardRead is the most bytes one EcShardRead returns.
const maxShardRead = 16 << 20

// ShardPeers reads shard ranges from the stores that hold them, over the
// EcShardRead RPC: it is a volume.ShardReader for Options.ShardPeers. It is
// safe for concurrent use if Holders is.
type ShardPeers struct {
	// Holders returns clients of the stores holding shard of EC volume
	// vid, in the order to try them.
	Holders func(vid uint32, shard int) []StoreShardClient
}

// ReadShard implements volume.ShardReader.
func (p ShardPeers) ReadShard(ctx context.Context, vid uint32, shard int, b []byte, off int64) error {
	var errs []error
	for _, c := range p.Holders(vid, shard) {
		done := 0
		var err error
		for done < len(b) && err == nil {
			n := min(len(b)-done, maxShardRead)
			var resp *storepb.EcShardReadResponse
			resp, err = c.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: vid, Shard: uint32(shard), Offset: uint64(off) + uint64(done), Length: uint32(n)})
			if err == nil && len(resp.GetData()) != n {
				err = fmt.Errorf("peer answered %d bytes, want %d", len(resp.GetData()), n)
			}
			if err == nil {
				copy(b[done:], resp.GetData())
				done += n
			}
		}
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("%w: shard %d of volume %d from peers: %w", volume.ErrShardUnavailable, shard, vid, errors.Join(errs...))
}

// EcShardRead implements storepb.StoreServer.
func (g *grpcService) EcShardRead(ctx context.Context, req *storepb.EcShardReadRequest) (*storepb.EcShardReadResponse, error) {
	switch {
	case req.GetVid() == 0:
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	case req.GetShard() >= volume.ECShards:
		return nil, status.Errorf(codes.InvalidArgument, "shard %d outside 0..%d", req.GetShard(), volume.ECShards-1)
	case req.GetLength() > maxShardRead:
		return nil, status.Errorf(codes.InvalidArgument, "length %d over the %d-byte limit", req.GetLength(), maxShardRead)
	case req.GetOffset() > uint64(volume.MaxSize):
		return nil, status.Errorf(codes.InvalidArgument, "offset %d out of range", req.GetOffset())
	}
	e, err := g.srv.store.ECVolume(req.GetVid())
	b := make([]byte, req.GetLength())
	switch {
	case err == nil:
		err = e.ReadShard(ctx, int(req.GetShard()), b, int64(req.GetOffset()))
	case g.srv.store.ecIndexLost(req.GetVid()):
		// The index is lost here, the shards are not: peers regenerating
		// the index read them.
		err = volume.ReadShardFile(g.srv.store.opts.FS, g.srv.store.opts.Dir, req.GetVid(), int(req.GetShard()), b, int64(req.GetOffset()))
		if errors.Is(err, volume.ErrShardUnavailable) {
			return nil, status.Errorf(codes.NotFound, "%v", err)
		}
	case errors.Is(err, ErrVolumeNotHere):
		return nil, status.Errorf(codes.NotFound, "EC volume %d is not on this store", req.GetVid())
	default:
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	switch {
	case err == nil:
		return &storepb.EcShardReadResponse{Data: b}, nil
	case errors.Is(err, volume.ErrInvalid):
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	case errors.Is(err, volume.ErrShardUnavailable):
		if e.HoldsShard(int(req.GetShard())) {
			return nil, status.Errorf(codes.Unavailable, "%v", err)
		}
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	return nil, volumeError(req.GetVid(), err)
}

// EcEncode implements storepb.StoreServer.
func (g *grpcService) EcEncode(ctx context.Context, req *storepb.EcEncodeRequest) (*storepb.EcEncodeResponse, error) {
	if req.GetVid() == 0 {
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	}
	if req.GetLargeBlock() > 1<<40 || req.GetSmallBlock() > 1<<40 {
		return nil, status.Error(codes.InvalidArgument, "block sizes over 1 TiB")
	}
	if _, err := g.volume(req.GetVid()); err != nil {
		return nil, err
	}
	res, err := g.srv.store.EncodeVolume(ctx, req.GetVid(), volume.ECEncodeOptions{
		LargeBlock: int64(req.GetLargeBlock()), SmallBlock: int64(req.GetSmallBlock()),
	})
	switch {
	case err == nil:
	case errors.Is(err, volume.ErrNotSealed):
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	case errors.Is(err, volume.ErrExists):
		return nil, status.Errorf(codes.AlreadyExists, "%v", err)
	case errors.Is(err, ErrVolumeNotHere):
		return nil, status.Errorf(codes.NotFound, "%v", err)
	default:
		return nil, volumeError(req.GetVid(), err)
	}
	return &storepb.EcEncodeResponse{
		DataSize: uint64(res.DataSize), ShardSize: uint64(res.ShardSize),
		Needles: uint32(res.Needles), Straddling: uint32(res.Straddling),
	}, nil
}

// ecDelete journals a delete on an EC volume (see grpcService.Delete).
func ecDelete(ctx context.Context, e *volume.ECVolume, key, cookie uint64, size needle.SizeCode) (*storepb.DeleteResponse, error) {
	count := uint32(0)
	for _, s := range needle.StoredSizes {
		if (size == needle.SizeAll || s == size) && e.Has(key, s) {
			count++
		}
	}
	freed, err := e.Delete(ctx, key, cookie, size)
	switch {
	case errors.Is(err, volume.ErrNotFound):
		return &storepb.DeleteResponse{}, nil
	case err != nil:
		return nil, volumeError(e.Vid(), err)
	}
	return &storepb.DeleteResponse{DeletedCount: count, FreedBytes: uint64(freed)}, nil
}

// ecRead answers a Read of a needle of an EC volume (see grpcService.Read).
func (g *grpcService) ecRead(ctx context.Context, e *volume.ECVolume, req *storepb.ReadRequest) (*storepb.ReadResponse, error) {
	size := needle.SizeCode(req.GetSizeCode())
	n, raw, err := e.Read(ctx, req.GetKey(), req.GetCookie(), size, nil)
	switch {
	case errors.Is(err, volume.ErrUnrecoverable):
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	case err != nil:
		if volume.IsCorruption(err) {
			g.srv.reportCorrupt(req.GetVid(), req.GetKey(), size, err)
		}
		return nil, volumeError(req.GetVid(), err)
	}
	return readResponse(n, raw, req.GetIncludeRaw(), e.Locate), nil
}

// ecVolumeInfo converts an EC volume's status to its wire form.
func ecVolumeInfo(e *volume.ECVolume) *storepb.VolumeInfo {
	st := e.Status()
	sb := e.Superblock()
	info := &storepb.VolumeInfo{
		Vid:                  st.Vid,
		State:                storepb.VolumeState_VOLUME_STATE_EC,
		ReadOnlyReason:       "erasure-coded",
		SizeBytes:            uint64(st.DataSize),
		SizeLimitBytes:       uint64(st.DataSize),
		NeedleCount:          uint64(st.Images),
		DeletedBytes:         uint64(max(st.DataSize-volume.SuperblockSize-st.LiveBytes, 0)),
		CompactionGeneration: st.Generation,
		CreatedUnixNano:      sb.Created,
		EcDeletedCount:       uint64(st.Deletes),
		EcJournalDigest:      st.JournalDigest,
	}
	for _, i := range st.Local {
		info.EcShardIds = append(info.EcShardIds, uint32(i))
	}
	return info
}

// EcDecode implements storepb.StoreServer.
func (g *grpcService) EcDecode(ctx context.Context, req *storepb.EcDecodeRequest) (*storepb.EcDecodeResponse, error) {
	if req.GetVid() == 0 {
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	}
	res, err := g.srv.store.DecodeVolume(ctx, req.GetVid())
	switch {
	case err == nil:
	case errors.Is(err, ErrVolumeNotHere):
		return nil, status.Errorf(codes.NotFound, "EC volume %d is not on this store", req.GetVid())
	case errors.Is(err, volume.ErrUnrecoverable):
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	case errors.Is(err, volume.ErrExists):
		return nil, status.Errorf(codes.AlreadyExists, "%v", err)
	default:
		return nil, volumeError(req.GetVid(), err)
	}
	v, err := g.srv.store.Volume(req.GetVid())
	if err != nil {
		return nil, volumeError(req.GetVid(), err)
	}
	return &storepb.EcDecodeResponse{Volume: volumeInfo(v.Status()), Deletes: uint32(res.Deletes), ReclaimedBytes: uint64(max(res.Reclaimed, 0))}, nil
}
