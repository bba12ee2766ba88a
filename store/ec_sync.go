package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// EC sync: indexes and deletion journals that converge.
//
// Every holder of an EC volume keeps its whole index (ecx) and deletion
// journal (ecj), and a delete goes to every holder; a holder that was down
// or unreachable misses it. The store therefore syncs each EC volume with
// the other holders the directory lists (Options.ECHolders): at start-up
// (before serving reads of the volume: see volume.ECVolume.HoldUntilSynced),
// when it mounts shards, every Options.ECSyncInterval, and when asked
// (EcIndexSync). A sync:
//
//  1. restores a lost or damaged index while other files of the volume
//     remain: copied from a holder (EcShardCopy of "ecx", checked), or,
//     when no holder has one, regenerated from the shards (the data shards
//     read locally or from the holders, rebuilt from parity as needed);
//  2. for every other holder, compares the journal digests (VolumeStatus);
//     when they differ, reads its journal (EcShardCopy of "ecj") and
//     appends, synced, the deletes this store lacks, applying them.
//
// Deletes are never undone, so every holder converges to the union of the
// journals: once a sync ran, no read serves a needle that a reachable
// holder journaled as deleted. A delete made while an encode places shards
// reaches the volume's former replicas, the ones the client knows of: the
// source's EC journal, or a plain replica that the placement then
// replaces (MountECShards journals its tombstones; once retired it refuses
// deletes, which still reach the others). The sync each mount runs, the
// one every holder runs when the placement ends (tools.ECEncodeCluster)
// and the periodic ones spread it to every holder, so the window the
// placement used to leave is closed.

// errECIndexLost marks an EC volume whose index must be restored.
var errECIndexLost = errors.New("store: EC index lost or damaged")

// ECPeer is another store holding an EC volume.
type ECPeer struct {
	// Addr is its gRPC address.
	Addr   string
	Client storepb.StoreClient
}

// ECHolderFinder names the other holders of an EC volume.
type ECHolderFinder interface {
	// ECHolders returns the stores, other than this one, that the
	// directory lists as holders of vid.
	ECHolders(ctx context.Context, vid uint32) ([]ECPeer, error)
}

// ECHolders implements ECHolderFinder with the directory's Lookup.
func (p *DirectoryShardPeers) ECHolders(ctx context.Context, vid uint32) ([]ECPeer, error) {
	resp, err := directorypb.NewDirectoryClient(p.dir).Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
	if err != nil {
		return nil, fmt.Errorf("directory lookup of volume %d: %w", vid, err)
	}
	self := ""
	if p.opts.Self != nil {
		self = p.opts.Self()
	}
	var peers []ECPeer
	for _, r := range resp.GetReplicas() {
		addr := r.GetGrpcAddr()
		if addr == "" || addr == self {
			continue
		}
		c, err := p.client(addr)
		if err != nil {
			p.opts.Logger.Warn("EC holder cannot be dialled", "vid", vid, "holder", addr, "err", err)
			continue
		}
		peers = append(peers, ECPeer{Addr: addr, Client: c})
	}
	return peers, nil
}

// ecHolders returns the holder finder, or nil.
func (s *Store) ecHolders() ECHolderFinder { return s.opts.ECHolders }

// ECSyncResult is what a sync of one EC volume did.
type ECSyncResult struct {
	Vid uint32 `json:"vid"`
	// IndexRestored is "" (the index was sound), "fetched" (copied from
	// a holder) or "regenerated" (rebuilt from the shards).
	IndexRestored string `json:"index_restored,omitempty"`
	// Added counts the deletes appended to this store's journal.
	Added int `json:"added"`
	// Reached lists the holders whose journals were compared (and read
	// when they differed); Unreached those that could not be.
	Reached   []string `json:"reached"`
	Unreached []string `json:"unreached,omitempty"`
}

// ecSyncTimeout bounds one holder's part of a sync.
const ecSyncTimeout = 30 * time.Second

// SyncEC syncs EC volume vid with the other holders (see the top of this
// file). It returns ErrVolumeNotHere when the store has no file of the
// volume, and an error when no holder list could be had or the index could
// not be restored; holders that do not answer are listed in Unreached and
// do not fail it.
func (s *Store) SyncEC(ctx context.Context, vid uint32) (ECSyncResult, error) {
	return s.syncEC(ctx, vid, nil)
}

// peerStatuses caches, for one pass of SyncAllEC, each holder's status of
// all its volumes: one VolumeStatus per holder and pass, not one per
// holder and EC volume. It is safe for concurrent use.
type peerStatuses struct {
	mu    sync.Mutex
	addrs map[string]*peerStatus
}

type peerStatus struct {
	once sync.Once
	vols map[uint32]*storepb.VolumeInfo
	err  error
}

// info returns peer p's status of vid, asking p for all its volumes the
// first time; (nil, nil) when p does not hold vid.
func (c *peerStatuses) info(ctx context.Context, p ECPeer, vid uint32) (*storepb.VolumeInfo, error) {
	c.mu.Lock()
	if c.addrs == nil {
		c.addrs = map[string]*peerStatus{}
	}
	ps := c.addrs[p.Addr]
	if ps == nil {
		ps = &peerStatus{}
		c.addrs[p.Addr] = ps
	}
	c.mu.Unlock()
	ps.once.Do(func() {
		resp, err := p.Client.VolumeStatus(ctx, &storepb.VolumeStatusRequest{})
		if err != nil {
			ps.err = err
			return
		}
		ps.vols = map[uint32]*storepb.VolumeInfo{}
		for _, v := range resp.GetVolumes() {
			ps.vols[v.GetVid()] = v
		}
	})
	return ps.vols[vid], ps.err
}

// syncEC is SyncEC, reading the holders' statuses through cache when it
// is not nil.
func (s *Store) syncEC(ctx context.Context, vid uint32, cache *peerStatuses) (ECSyncResult, error) {
	res := ECSyncResult{Vid: vid, Reached: []string{}}
	finder := s.ecHolders()
	if finder == nil {
		return res, errors.New("store: no directory to find the other holders of EC volumes")
	}
	s.mu.RLock()
	e := s.mu.ec[vid]
	repair := s.mu.ecRepair[vid]
	s.mu.RUnlock()
	if e == nil && !repair {
		return res, fmt.Errorf("%w: EC volume %d", ErrVolumeNotHere, vid)
	}
	peers, err := finder.ECHolders(ctx, vid)
	if err != nil {
		return res, err
	}
	if e == nil {
		if e, res.IndexRestored, err = s.restoreECIndex(ctx, vid, peers); err != nil {
			return res, err
		}
	}
	for _, p := range peers {
		added, err := s.mergeJournalFrom(ctx, e, p, cache)
		switch {
		case err == nil:
			res.Reached = append(res.Reached, p.Addr)
			res.Added += added
		case errors.Is(err, errNotHolder):
			// Listed (a plain replica during an encode), not an EC holder.
		case errors.Is(err, volume.ErrClosed):
			return res, err
		default:
			res.Unreached = append(res.Unreached, p.Addr)
			s.opts.Logger.Warn("EC journal sync: holder not read", "vid", vid, "holder", p.Addr, "err", err)
		}
	}
	e.JournalSynced()
	if res.Added > 0 || res.IndexRestored != "" {
		s.opts.Logger.Info("EC volume synced with its holders", "vid", vid, "deletes_added", res.Added,
			"index_restored", res.IndexRestored, "holders", len(res.Reached), "unreached", res.Unreached)
	}
	return res, nil
}

// errNotHolder is returned for a listed store that does not hold the
// volume in EC form.
var errNotHolder = errors.New("store: not an EC holder")

// mergeJournalFrom merges the journal of peer p into e when their digests
// differ, and returns how many deletes it added. The peer's status comes
// from cache when it is not nil.
func (s *Store) mergeJournalFrom(ctx context.Context, e *volume.ECVolume, p ECPeer, cache *peerStatuses) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, ecSyncTimeout)
	defer cancel()
	vid := e.Vid()
	var info *storepb.VolumeInfo
	if cache != nil {
		var err error
		if info, err = cache.info(ctx, p, vid); err != nil {
			return 0, err
		}
	} else {
		st, err := p.Client.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: vid})
		if status.Code(err) == codes.NotFound {
			return 0, errNotHolder
		}
		if err != nil {
			return 0, err
		}
		if len(st.GetVolumes()) == 1 {
			info = st.GetVolumes()[0]
		}
	}
	if info == nil || info.GetState() != storepb.VolumeState_VOLUME_STATE_EC {
		return 0, errNotHolder
	}
	mine := e.JournalDigest()
	if info.GetEcDeletedCount() == uint64(mine.Count) && info.GetEcJournalDigest() == mine.Sum {
		return 0, nil
	}
	var b []byte
	err := GRPCECFileSource{Client: p.Client}.CopyECFile(ctx, vid, "ecj", func(chunk []byte, off, total int64) error {
		if off != int64(len(b)) || total > maxJournalBytes {
			return fmt.Errorf("journal chunk at %d of %d bytes (have %d)", off, total, len(b))
		}
		b = append(b, chunk...)
		return nil
	})
	if status.Code(err) == codes.NotFound {
		return 0, errNotHolder
	}
	if err != nil {
		return 0, err
	}
	dels, gen, damaged, err := volume.ParseECJournal(b, vid)
	if err != nil {
		return 0, fmt.Errorf("journal of %s: %w", p.Addr, err)
	}
	if gen != e.Superblock().Generation {
		return 0, fmt.Errorf("journal of %s is of generation %d, this store's volume of %d", p.Addr, gen, e.Superblock().Generation)
	}
	if damaged > 0 {
		s.opts.Logger.Warn("EC journal of a holder has damaged records", "vid", vid, "holder", p.Addr, "damaged_records", damaged)
	}
	return e.MergeJournal(ctx, dels)
}

// maxJournalBytes bounds a holder's journal read into memory: 64 M
// deletes, far beyond what a 32 GiB volume can hold.
const maxJournalBytes = 24 << 26

// restoreECIndex restores the lost or damaged index of vid (from a holder,
// else from the shards), opens the volume held until its journal is
// synced, and serves it.
func (s *Store) restoreECIndex(ctx context.Context, vid uint32, peers []ECPeer) (*volume.ECVolume, string, error) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.RLock()
	e, repair := s.mu.ec[vid], s.mu.ecRepair[vid]
	s.mu.RUnlock()
	if e != nil {
		return e, "", nil // restored meanwhile
	}
	if !repair {
		return nil, "", fmt.Errorf("%w: EC volume %d", ErrVolumeNotHere, vid)
	}
	how := ""
	var errs []error
	for _, p := range peers {
		pctx, cancel := context.WithTimeout(ctx, ecSyncTimeout)
		err := volume.InstallECIndex(pctx, s.opts.FS, s.opts.Dir, vid, GRPCECFileSource{Client: p.Client})
		cancel()
		if err == nil {
			how = "fetched"
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", p.Addr, err))
	}
	if how == "" {
		res, err := volume.RegenerateECX(ctx, s.opts.Dir, vid, s.ecOptions())
		if err != nil {
			errs = append(errs, fmt.Errorf("regenerate from the shards: %w", err))
			return nil, "", fmt.Errorf("store: EC volume %d: index not restored: %w", vid, errors.Join(errs...))
		}
		how = "regenerated"
		s.opts.Logger.Warn("EC index regenerated from the shards", "vid", vid, "needles", res.Needles, "skipped_shards", res.SkippedShards)
	}
	if _, err := volume.RepairECJournal(ctx, s.opts.FS, s.opts.Dir, vid); err != nil {
		return nil, "", fmt.Errorf("store: EC volume %d: journal: %w", vid, err)
	}
	e, err := volume.OpenEC(ctx, s.opts.Dir, vid, s.ecOptions())
	if err != nil {
		return nil, "", fmt.Errorf("store: EC volume %d: open with the restored index: %w", vid, err)
	}
	e.HoldUntilSynced()
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		e.Close()
		return nil, "", volume.ErrClosed
	}
	s.mu.ec[vid] = e
	delete(s.mu.failed, vid)
	delete(s.mu.ecRepair, vid)
	s.mu.Unlock()
	s.opts.Logger.Info("EC index restored", "vid", vid, "how", how)
	return e, how, nil
}

// ecIndexLost reports whether vid is an EC volume whose index is lost or
// damaged here, to be restored by the sync.
func (s *Store) ecIndexLost(vid uint32) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.ecRepair[vid]
}

// ecSyncVids returns the EC volumes to sync: those served and those whose
// index is to be restored.
func (s *Store) ecSyncVids() []uint32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	vids := make([]uint32, 0, len(s.mu.ec)+len(s.mu.ecRepair))
	for vid := range s.mu.ec {
		vids = append(vids, vid)
	}
	for vid := range s.mu.ecRepair {
		vids = append(vids, vid)
	}
	slices.Sort(vids)
	return slices.Compact(vids)
}

// SyncAllEC syncs every EC volume of the store (see SyncEC), two at a
// time, asking each holder for its volumes' status once, and returns the
// results of those it could sync.
func (s *Store) SyncAllEC(ctx context.Context) []ECSyncResult {
	vids := s.ecSyncVids()
	cache := &peerStatuses{}
	results := make([]ECSyncResult, len(vids))
	ok := make([]bool, len(vids))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for i, vid := range vids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res, err := s.syncEC(ctx, vid, cache)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, volume.ErrClosed) {
					s.opts.Logger.Warn("EC sync failed", "vid", vid, "err", err)
				}
				return
			}
			results[i], ok[i] = res, true
		})
	}
	wg.Wait()
	var out []ECSyncResult
	for i := range results {
		if ok[i] {
			out = append(out, results[i])
		}
	}
	return out
}

// runECSync syncs every EC volume at once, then every interval, until ctx
// ends. A volume whose first sync failed (no directory yet) is retried
// after a few seconds rather than a whole interval.
func (s *Store) runECSync(ctx context.Context) {
	if s.ecHolders() == nil {
		return
	}
	interval := s.opts.ECSyncInterval
	for {
		s.SyncAllEC(ctx)
		wait := interval
		if s.ecWaiting() {
			wait = min(interval, 2*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// ecWaiting reports whether an EC volume still waits for its first sync or
// for its index.
func (s *Store) ecWaiting() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.mu.ecRepair) > 0 {
		return true
	}
	for _, e := range s.mu.ec {
		if e.SyncPending() {
			return true
		}
	}
	return false
}

// EcIndexSync implements storepb.StoreServer.
func (g *grpcService) EcIndexSync(ctx context.Context, req *storepb.EcIndexSyncRequest) (*storepb.EcIndexSyncResponse, error) {
	if req.GetVid() == 0 {
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	}
	res, err := g.srv.store.SyncEC(ctx, req.GetVid())
	switch {
	case err == nil:
	case errors.Is(err, ErrVolumeNotHere):
		return nil, status.Errorf(codes.NotFound, "no file of EC volume %d on this store", req.GetVid())
	case errors.Is(err, volume.ErrClosed):
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	case volume.IsCorruption(err):
		return nil, status.Errorf(codes.DataLoss, "%v", err)
	case g.srv.store.ecHolders() == nil:
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	default:
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	e, err := g.srv.store.ECVolume(req.GetVid())
	if err != nil {
		return nil, volumeError(req.GetVid(), err)
	}
	return &storepb.EcIndexSyncResponse{
		Volume: ecVolumeInfo(e), IndexRestored: res.IndexRestored, AddedDeletes: uint32(res.Added),
		Reached: res.Reached, Unreached: res.Unreached,
	}, nil
}
