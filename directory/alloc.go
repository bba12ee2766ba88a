package directory

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// volumeSecretSize is the size of the needle secret drawn for each new
// volume (see AllocateVolumeRequest.volume_secret).
const volumeSecretSize = 8

// allocTimeout bounds one volume allocation, all stores included.
const allocTimeout = 30 * time.Second

// nearFull is the fill fraction from which a writable volume no longer
// counts as room for new photos when deciding to allocate.
const nearFull = 0.9

// assignable returns the volumes Assign may use, and how many of them are
// below nearFull.
func (s *Server) assignable(sn *snapshot) (vols []VolumeRecord, roomy int) {
	for _, v := range sn.volumes {
		if st, _ := s.effectiveState(sn, v); st != storepb.VolumeState_VOLUME_STATE_WRITABLE {
			continue
		}
		limit := s.sizeLimit(v)
		var size uint64
		for _, r := range v.Replicas {
			size = max(size, sn.replicaState(r).SizeBytes)
		}
		if size >= limit {
			continue
		}
		vols = append(vols, v)
		if float64(size) < nearFull*float64(limit) {
			roomy++
		}
	}
	return vols, roomy
}

// growSync allocates one volume, sharing the work with concurrent callers,
// and waits for it or for ctx.
func (s *Server) growSync(ctx context.Context) error {
	ch := s.allocs.DoChan("grow", func() (any, error) { return nil, s.allocateVolume(s.baseCtx) })
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// growAsync allocates volumes in the background until MinWritable have
// room, unless it already runs.
func (s *Server) growAsync() {
	if s.baseCtx.Err() != nil || !s.growing.CompareAndSwap(false, true) {
		return
	}
	s.goFunc(func() {
		defer s.growing.Store(false)
		for s.baseCtx.Err() == nil {
			if _, roomy := s.assignable(s.snapshot()); roomy >= s.opts.MinWritable {
				return
			}
			if err := s.growSync(s.baseCtx); err != nil {
				if s.baseCtx.Err() == nil {
					s.opts.Logger.Warn("cannot allocate a volume ahead of need", "err", err)
				}
				return
			}
		}
	})
}

// placement picks Replication live stores for a new volume: stores with
// MinStoreFreeBytes free, on distinct racks as far as the racks allow
// (stores without a rack label count as racks of their own), preferring the
// stores with the fewest writable volumes and then the most free space.
func (s *Server) placement(sn *snapshot) ([]StoreRecord, error) {
	r := s.opts.Replication
	var live, roomy []StoreRecord
	for _, id := range slices.Sorted(maps.Keys(sn.stores)) {
		st := sn.stores[id]
		if !sn.alive[id] {
			continue
		}
		live = append(live, st)
		if st.FreeBytes >= s.opts.MinStoreFreeBytes {
			roomy = append(roomy, st)
		}
	}
	if len(live) < r {
		return nil, status.Errorf(codes.Unavailable, "need %d live stores for replication %d, have %d", r, r, len(live))
	}
	if len(roomy) < r {
		return nil, status.Errorf(codes.Unavailable, "need %d live stores with %d bytes free for replication %d, have %d", r, s.opts.MinStoreFreeBytes, r, len(roomy))
	}
	load := map[string]int{}
	for _, v := range sn.volumes {
		if st, _ := s.effectiveState(sn, v); st == storepb.VolumeState_VOLUME_STATE_WRITABLE {
			for _, rep := range v.Replicas {
				load[rep.StoreID]++
			}
		}
	}
	rand.Shuffle(len(roomy), func(i, j int) { roomy[i], roomy[j] = roomy[j], roomy[i] })
	slices.SortStableFunc(roomy, func(a, b StoreRecord) int {
		return cmp.Or(cmp.Compare(load[a.ID], load[b.ID]), cmp.Compare(b.FreeBytes, a.FreeBytes))
	})
	var picked []StoreRecord
	racks := map[string]bool{}
	for _, st := range roomy { // first pass: one store per rack
		if len(picked) < r && (st.Rack == "" || !racks[st.Rack]) {
			picked = append(picked, st)
			racks[st.Rack] = true
		}
	}
	for _, st := range roomy { // then fill from racks already used
		if len(picked) < r && !slices.ContainsFunc(picked, func(p StoreRecord) bool { return p.ID == st.ID }) {
			picked = append(picked, st)
		}
	}
	return picked, nil
}

// allocateVolume creates one new volume on Replication stores: it records
// the volume (allocating), asks each store to create it, and makes it
// writable when all succeeded. A failed allocation leaves the volume
// read-only, so its vid is never reused.
func (s *Server) allocateVolume(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, allocTimeout)
	defer cancel()
	sn := s.snapshot()
	stores, err := s.placement(sn)
	if err != nil {
		s.metrics.allocations.WithLabelValues("unplaceable").Inc()
		return err
	}
	limit := s.opts.VolumeSizeLimit
	// One needle secret for the volume, the same on every replica, so the
	// replicas stay byte-identical.
	secret := make([]byte, volumeSecretSize)
	if _, err := crand.Read(secret); err != nil {
		return status.Errorf(codes.Internal, "volume secret: %v", err)
	}
	rec := VolumeRecord{SizeLimit: limit, Allocating: true, State: storepb.VolumeState_VOLUME_STATE_WRITABLE, CreatedUnixNano: time.Now().UnixNano()}
	for _, st := range stores {
		rec.Replicas = append(rec.Replicas, ReplicaRecord{StoreID: st.ID, VolumeReport: VolumeReport{State: storepb.VolumeState_VOLUME_STATE_WRITABLE, SizeLimit: limit}})
	}
	// A store may report an unknown vid (adopted) between MaxVid and the
	// apply; then try the next one.
	for attempt := 0; ; attempt++ {
		rec.Vid = s.fsm.MaxVid() + 1
		if rec.Vid == 0 {
			return status.Error(codes.ResourceExhausted, "no volume id left")
		}
		for i := range rec.Replicas {
			rec.Replicas[i].Vid = rec.Vid
		}
		err := s.fsm.Apply(Command{Type: CmdCreateVolume, Volume: &rec})
		if err == nil {
			break
		}
		if !errors.Is(err, ErrVolumeExists) || attempt >= 3 {
			s.metrics.allocations.WithLabelValues("error").Inc()
			return status.Errorf(codes.Unavailable, "record new volume: %v", err)
		}
	}
	vid := rec.Vid
	infos := make([]*storepb.VolumeInfo, len(stores))
	g, gctx := errgroup.WithContext(ctx)
	for i, st := range stores {
		g.Go(func() error {
			c, err := s.storeClient(st.GRPCAddr)
			if err != nil {
				return err
			}
			resp, err := c.AllocateVolume(gctx, &storepb.AllocateVolumeRequest{Vid: vid, SizeLimitBytes: limit, VolumeSecret: secret})
			if err != nil {
				return fmt.Errorf("store %s: %w", st.ID, err)
			}
			infos[i] = resp.GetVolume()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		s.metrics.allocations.WithLabelValues("error").Inc()
		reason := "allocation failed: " + err.Error()
		s.opts.Logger.Error("volume allocation failed", "vid", vid, "err", err)
		if aerr := s.fsm.Apply(Command{Type: CmdSetVolumeState, Vid: vid, State: storepb.VolumeState_VOLUME_STATE_READ_ONLY, Reason: reason}); aerr != nil {
			s.opts.Logger.Error("cannot record the failed allocation", "vid", vid, "err", aerr)
		}
		if v, ok := s.fsm.Volume(vid); ok {
			s.markReplicasReadOnly(ctx, v, reason)
		}
		return status.Errorf(codes.Unavailable, "allocate volume %d: %v", vid, err)
	}
	// Make the new replicas visible before the stores' next heartbeats.
	s.live.Lock()
	for i, st := range stores {
		if ls, ok := s.live.stores[st.ID]; ok && infos[i] != nil {
			vols := maps.Clone(ls.vols)
			vols[vid] = infos[i]
			ls.vols = vols
		}
	}
	s.live.Unlock()
	if err := s.fsm.Apply(Command{Type: CmdSetVolumeState, Vid: vid, State: storepb.VolumeState_VOLUME_STATE_WRITABLE}); err != nil {
		s.metrics.allocations.WithLabelValues("error").Inc()
		return status.Errorf(codes.Unavailable, "record volume %d: %v", vid, err)
	}
	s.metrics.allocations.WithLabelValues("ok").Inc()
	ids := make([]string, len(stores))
	for i, st := range stores {
		ids[i] = st.ID
	}
	s.opts.Logger.Info("volume allocated", "vid", vid, "stores", ids, "size_limit", limit)
	return nil
}
