package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// GRPCECFileSource is a volume.ECFileSource reading from another store's
// EcShardCopy RPC.
type GRPCECFileSource struct{ Client storepb.StoreClient }

// CopyECFile implements volume.ECFileSource.
func (g GRPCECFileSource) CopyECFile(ctx context.Context, vid uint32, name string, fn func(chunk []byte, off, total int64) error) error {
	stream, err := g.Client.EcShardCopy(ctx, &storepb.EcShardCopyRequest{Vid: vid, Name: name})
	if err != nil {
		return err
	}
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(c.GetData(), int64(c.GetOffset()), int64(c.GetTotalSize())); err != nil {
			return err
		}
	}
}

// swapEC replaces the open EC volume vid (if any) by a fresh open of its
// files, and closes the old one once its reads are done.
func (s *Store) swapEC(ctx context.Context, vid uint32) (*volume.ECVolume, error) {
	e, err := volume.OpenEC(ctx, s.opts.Dir, vid, s.ecOptions())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		e.Close()
		return nil, volume.ErrClosed
	}
	old := s.mu.ec[vid]
	if old != nil && old.SyncPending() {
		// Reopened from the same journal: still not synced.
		e.HoldUntilSynced()
	}
	s.mu.ec[vid] = e
	delete(s.mu.failed, vid)
	delete(s.mu.ecRepair, vid)
	s.mu.Unlock()
	if old != nil {
		if err := old.Close(); err != nil {
			s.opts.Logger.Warn("closing the former EC volume", "vid", vid, "err", err)
		}
	}
	return e, nil
}

// MountECShards makes this store a holder of the listed shards of EC
// volume vid, copied from src with the index (and the journal when the
// store has none yet), and serves the volume with every shard it then
// holds. A plain replica of the same volume and generation held here is
// replaced: it stops taking deletes, its tombstones of needles the EC
// volume still holds live are journaled, and its files are removed once
// the EC form serves (after a crash in between, ResolveEC keeps the EC
// form). A writable plain volume, or one of another generation, makes it
// refuse. A volume new to this store waits (HoldUntilSynced) for a sync of
// its journal with the other holders (SyncEC; EcShardMount runs one at
// once) before it serves reads, when the store has ECHolders.
func (s *Store) MountECShards(ctx context.Context, vid uint32, shards []int, src volume.ECFileSource) (*volume.ECVolume, error) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	plain, err := s.Volume(vid)
	if err == nil {
		if st, _ := plain.State(); st == volume.StateWritable {
			return nil, fmt.Errorf("%w: volume %d is held here as a writable plain volume", volume.ErrExists, vid)
		}
	} else {
		plain = nil
	}
	if err := volume.InstallEC(ctx, s.opts.FS, s.opts.Dir, vid, shards, src); err != nil {
		return nil, err
	}
	if plain != nil {
		e, err := volume.OpenEC(ctx, s.opts.Dir, vid, s.ecOptions())
		if err == nil && e.Superblock().Generation != plain.Superblock().Generation {
			e.Close()
			err = fmt.Errorf("%w: the EC volume is of generation %d, the plain one here of %d",
				volume.ErrExists, e.Superblock().Generation, plain.Superblock().Generation)
		}
		if err != nil {
			// Leave the plain volume serving: the EC files must go.
			if rerr := volume.RemoveEC(s.opts.FS, s.opts.Dir, vid); rerr != nil {
				s.opts.Logger.Warn("cannot remove EC files beside a plain volume", "vid", vid, "err", rerr)
			}
			return nil, err
		}
		if err := plain.RetireForEC(); err != nil {
			e.Close()
			return nil, err
		}
		// A delete that reached this plain replica after the source took
		// its snapshot, but not the source, must not be lost with the
		// .dat: its tombstone goes into the EC journal.
		if n, err := journalTombstones(ctx, plain, e); err != nil {
			e.Close()
			return nil, fmt.Errorf("store: journal the plain replica's deletes of volume %d: %w", vid, err)
		} else if n > 0 {
			s.opts.Logger.Info("deletes of the replaced plain replica journaled", "vid", vid, "deletes", n)
		}
		if s.ecHolders() != nil {
			e.HoldUntilSynced()
		}
		s.mu.Lock()
		delete(s.mu.volumes, vid)
		s.mu.ec[vid] = e
		s.mu.Unlock()
		plain.Close()
		if err := volume.RemoveDat(s.opts.FS, s.opts.Dir, vid); err != nil {
			s.opts.Logger.Warn("cannot remove the replaced plain volume", "vid", vid, "err", err)
		}
		s.opts.Logger.Info("EC shards mounted in place of a plain replica", "vid", vid, "shards", shards)
		return e, nil
	}
	_, heldErr := s.ECVolume(vid)
	wasHeld := heldErr == nil
	e, err := s.swapEC(ctx, vid)
	if err != nil {
		return nil, err
	}
	if !wasHeld && s.ecHolders() != nil {
		// The journal was copied from one holder: it serves once it
		// holds the others' deletes too.
		e.HoldUntilSynced()
	}
	s.opts.Logger.Info("EC shards mounted", "vid", vid, "shards", shards, "held", e.Status().Local)
	return e, nil
}

// journalTombstones journals in e the deletes of the plain replica p that
// remove needles e still holds live, and returns how many.
func journalTombstones(ctx context.Context, p *volume.Volume, e *volume.ECVolume) (int, error) {
	ts, err := p.Tombstones(ctx)
	if err != nil {
		return 0, err
	}
	var dels []volume.ECDelete
	for _, t := range ts {
		live := false
		for _, sz := range needle.StoredSizes {
			live = live || (t.Size == needle.SizeAll || t.Size == sz) && e.Has(t.Key, sz)
		}
		if live {
			dels = append(dels, volume.ECDelete{Key: t.Key, Cookie: t.Cookie, Size: t.Size})
		}
	}
	return e.MergeJournal(ctx, dels)
}

// DeleteECShards removes the listed shards of EC volume vid from this
// store; it keeps serving the volume from its other shards and its peers.
func (s *Store) DeleteECShards(ctx context.Context, vid uint32, shards []int) (*volume.ECVolume, error) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	if _, err := s.ECVolume(vid); err != nil {
		return nil, err
	}
	if err := volume.RemoveECShards(s.opts.FS, s.opts.Dir, vid, shards); err != nil {
		return nil, err
	}
	e, err := s.swapEC(ctx, vid)
	if err != nil {
		return nil, err
	}
	s.opts.Logger.Info("EC shards removed", "vid", vid, "shards", shards, "held", e.Status().Local)
	return e, nil
}

// RemoveECVolume stops serving EC volume vid and removes all its files,
// index and journal last: once a decoded copy of the volume serves
// elsewhere, this store's EC form is redundant. Reads in flight finish on
// the closed volume's files before it closes. After a crash part way, the
// index remains and the store serves the volume as before (without the
// removed shards) until it is asked again.
func (s *Store) RemoveECVolume(ctx context.Context, vid uint32) error {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	e, err := s.ECVolume(vid)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.mu.ec[vid] == e {
		delete(s.mu.ec, vid)
	}
	s.mu.Unlock()
	if err := e.Close(); err != nil {
		s.opts.Logger.Warn("closing the removed EC volume", "vid", vid, "err", err)
	}
	if err := volume.RemoveEC(s.opts.FS, s.opts.Dir, vid); err != nil {
		return fmt.Errorf("store: remove EC volume %d: %w", vid, err)
	}
	s.opts.Logger.Info("EC volume removed", "vid", vid)
	return nil
}

// RebuildECShards regenerates the listed shards of EC volume vid on this
// store from 10 others (local or its peers') and serves them.
func (s *Store) RebuildECShards(ctx context.Context, vid uint32, shards []int) (*volume.ECVolume, error) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	e, err := s.ECVolume(vid)
	if err != nil {
		return nil, err
	}
	if err := e.RebuildShards(ctx, shards, nil); err != nil {
		return nil, err
	}
	if e, err = s.swapEC(ctx, vid); err != nil {
		return nil, err
	}
	s.opts.Logger.Info("EC shards rebuilt", "vid", vid, "shards", shards, "held", e.Status().Local)
	return e, nil
}

// shardList converts and checks the shard ids of a request.
func shardList(ids []uint32) ([]int, error) {
	var out []int
	for _, id := range ids {
		if id >= volume.ECShards {
			return nil, status.Errorf(codes.InvalidArgument, "shard %d outside 0..%d", id, volume.ECShards-1)
		}
		out = append(out, int(id))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// EcShardCopy implements storepb.StoreServer.
func (g *grpcService) EcShardCopy(req *storepb.EcShardCopyRequest, stream storepb.Store_EcShardCopyServer) error {
	e, err := g.srv.store.ECVolume(req.GetVid())
	if err != nil {
		if errors.Is(err, ErrVolumeNotHere) {
			return status.Errorf(codes.NotFound, "EC volume %d is not on this store", req.GetVid())
		}
		return status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	err = e.CopyFile(stream.Context(), req.GetName(), func(chunk []byte, off, total int64) error {
		return stream.Send(&storepb.EcShardCopyResponse{Offset: uint64(off), Data: chunk, TotalSize: uint64(total)})
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, volume.ErrECFileName):
		return status.Errorf(codes.InvalidArgument, "%v", err)
	case errors.Is(err, volume.ErrShardUnavailable):
		return status.Errorf(codes.NotFound, "%v", err)
	}
	return volumeError(req.GetVid(), err)
}

// EcShardMount implements storepb.StoreServer.
func (g *grpcService) EcShardMount(ctx context.Context, req *storepb.EcShardMountRequest) (*storepb.EcShardMountResponse, error) {
	if req.GetVid() == 0 || req.GetSourceGrpcAddr() == "" {
		return nil, status.Error(codes.InvalidArgument, "vid and source_grpc_addr are required")
	}
	shards, err := shardList(req.GetShards())
	if err != nil {
		return nil, err
	}
	// The source must be a store of the cluster.
	conn, err := rpc.Dial(g.srv.opts.Credentials, req.GetSourceGrpcAddr(), []pki.Role{pki.RoleStore})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "source %s: %v", req.GetSourceGrpcAddr(), err)
	}
	defer conn.Close()
	e, err := g.srv.store.MountECShards(ctx, req.GetVid(), shards, GRPCECFileSource{Client: storepb.NewStoreClient(conn)})
	if err == nil && g.srv.store.ecHolders() != nil {
		// The journal came from one holder: merge the others' now. A
		// failure is logged; the periodic sync retries.
		if _, serr := g.srv.store.SyncEC(ctx, req.GetVid()); serr != nil {
			g.srv.opts.Logger.Warn("EC sync after a mount failed; the periodic sync retries", "vid", req.GetVid(), "err", serr)
		}
		e, err = g.srv.store.ECVolume(req.GetVid())
	}
	if err != nil {
		switch {
		case errors.Is(err, volume.ErrExists):
			return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
		case errors.Is(err, volume.ErrNotEC):
			return nil, status.Errorf(codes.DataLoss, "the copy from %s does not check: %v", req.GetSourceGrpcAddr(), err)
		case status.Code(err) != codes.Unknown:
			// The source answered with an error (or could not be reached).
			return nil, status.Errorf(codes.Unavailable, "source %s: %v", req.GetSourceGrpcAddr(), err)
		}
		return nil, volumeError(req.GetVid(), err)
	}
	return &storepb.EcShardMountResponse{Volume: ecVolumeInfo(e)}, nil
}

// EcShardDelete implements storepb.StoreServer.
func (g *grpcService) EcShardDelete(ctx context.Context, req *storepb.EcShardDeleteRequest) (*storepb.EcShardDeleteResponse, error) {
	if req.GetVid() == 0 {
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	}
	if req.GetRemoveVolume() {
		err := g.srv.store.RemoveECVolume(ctx, req.GetVid())
		if errors.Is(err, ErrVolumeNotHere) {
			return nil, status.Errorf(codes.NotFound, "EC volume %d is not on this store", req.GetVid())
		}
		if err != nil {
			return nil, volumeError(req.GetVid(), err)
		}
		return &storepb.EcShardDeleteResponse{}, nil
	}
	shards, err := shardList(req.GetShards())
	if err != nil {
		return nil, err
	}
	e, err := g.srv.store.DeleteECShards(ctx, req.GetVid(), shards)
	if err != nil {
		if errors.Is(err, ErrVolumeNotHere) {
			return nil, status.Errorf(codes.NotFound, "EC volume %d is not on this store", req.GetVid())
		}
		return nil, volumeError(req.GetVid(), err)
	}
	return &storepb.EcShardDeleteResponse{Volume: ecVolumeInfo(e)}, nil
}

// EcRebuild implements storepb.StoreServer.
func (g *grpcService) EcRebuild(ctx context.Context, req *storepb.EcRebuildRequest) (*storepb.EcRebuildResponse, error) {
	if req.GetVid() == 0 {
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	}
	shards, err := shardList(req.GetShards())
	if err != nil {
		return nil, err
	}
	e, err := g.srv.store.RebuildECShards(ctx, req.GetVid(), shards)
	switch {
	case err == nil:
		return &storepb.EcRebuildResponse{Volume: ecVolumeInfo(e)}, nil
	case errors.Is(err, ErrVolumeNotHere):
		return nil, status.Errorf(codes.NotFound, "EC volume %d is not on this store", req.GetVid())
	case errors.Is(err, volume.ErrUnrecoverable):
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	return nil, volumeError(req.GetVid(), err)
}
