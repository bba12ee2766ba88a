package directory

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// snapshot is a consistent-enough picture for one request: the persisted
// records overlaid with what the stores reported since this process
// started, and each store's liveness.
type snapshot struct {
	now     time.Time
	stores  map[string]StoreRecord
	alive   map[string]bool
	seen    map[string]bool // heard from since this process started
	vols    map[string]map[uint32]*storepb.VolumeInfo
	volumes []VolumeRecord
}

func (s *Server) snapshot() *snapshot {
	sn := &snapshot{
		now:    time.Now(),
		stores: map[string]StoreRecord{},
		alive:  map[string]bool{},
		seen:   map[string]bool{},
		vols:   map[string]map[uint32]*storepb.VolumeInfo{},
	}
	for _, st := range s.fsm.Stores() {
		sn.stores[st.ID] = st
	}
	sn.volumes = s.fsm.Volumes()
	s.live.Lock()
	for id, ls := range s.live.stores {
		st, ok := sn.stores[id]
		if !ok {
			continue // not recorded yet
		}
		r := ls.req
		st.GRPCAddr, st.HTTPAddr, st.PublicURL, st.Rack = r.GetGrpcAddr(), r.GetHttpAddr(), r.GetPublicUrl(), r.GetRack()
		st.FreeBytes = r.GetFreeBytes()
		st.LastHeartbeatUnixNano = ls.seen.UnixNano()
		st.Vids = st.Vids[:0:0]
		for vid := range ls.vols {
			st.Vids = append(st.Vids, vid)
		}
		slices.Sort(st.Vids)
		sn.stores[id] = st
		sn.alive[id] = s.aliveLocked(id, sn.now)
		sn.seen[id] = true
		sn.vols[id] = ls.vols
	}
	s.live.Unlock()
	return sn
}

// replicaState returns the freshest report of the replica: the live one
// when the store heartbeated since this process started.
func (sn *snapshot) replicaState(r ReplicaRecord) VolumeReport {
	vols, ok := sn.vols[r.StoreID]
	if !ok {
		return r.VolumeReport
	}
	v, ok := vols[r.Vid]
	if !ok {
		return VolumeReport{Vid: r.Vid, Reason: "missing from the store's report"}
	}
	return VolumeReport{Vid: v.GetVid(), State: v.GetState(), Reason: v.GetReadOnlyReason(), SizeBytes: v.GetSizeBytes(),
		SizeLimit: v.GetSizeLimitBytes(), NeedleCount: v.GetNeedleCount(), DeletedBytes: v.GetDeletedBytes()}
}

// effectiveState is the state a volume has for Assign and the views: its
// logical state, made read-only while it is allocating, under-replicated,
// or has a replica that is dead, missing or not writable.
func (s *Server) effectiveState(sn *snapshot, v VolumeRecord) (storepb.VolumeState, string) {
	if v.State != storepb.VolumeState_VOLUME_STATE_WRITABLE {
		return v.State, v.Reason
	}
	ro := storepb.VolumeState_VOLUME_STATE_READ_ONLY
	if v.Allocating {
		return ro, "allocating"
	}
	if len(v.Replicas) < s.opts.Replication {
		return ro, fmt.Sprintf("under-replicated: %d of %d replicas", len(v.Replicas), s.opts.Replication)
	}
	for _, r := range v.Replicas {
		if !sn.alive[r.StoreID] {
			return ro, fmt.Sprintf("store %s is not heartbeating", r.StoreID)
		}
		if rs := sn.replicaState(r); rs.State != storepb.VolumeState_VOLUME_STATE_WRITABLE {
			return ro, fmt.Sprintf("store %s: %s", r.StoreID, describeState(rs.State, rs.Reason))
		}
	}
	return storepb.VolumeState_VOLUME_STATE_WRITABLE, ""
}

// sizeLimit is the volume's limit, or the server's when it has none.
func (s *Server) sizeLimit(v VolumeRecord) uint64 {
	return cmp.Or(v.SizeLimit, s.opts.VolumeSizeLimit)
}

// volumeView merges the replicas' reports into the view of v.
func (s *Server) volumeView(sn *snapshot, v VolumeRecord) *directorypb.VolumeView {
	state, reason := s.effectiveState(sn, v)
	out := &directorypb.VolumeView{Vid: v.Vid, State: state, ReadOnlyReason: reason, SizeLimitBytes: s.sizeLimit(v)}
	for _, r := range v.Replicas {
		out.ReplicaStoreIds = append(out.ReplicaStoreIds, r.StoreID)
		rs := sn.replicaState(r)
		out.SizeBytes = max(out.SizeBytes, rs.SizeBytes)
		out.NeedleCount = max(out.NeedleCount, rs.NeedleCount)
		out.DeletedBytes = max(out.DeletedBytes, rs.DeletedBytes)
	}
	return out
}

// storeState is a store's liveness in the views.
func (s *Server) storeState(sn *snapshot, id string) directorypb.StoreState {
	switch {
	case sn.alive[id]:
		return directorypb.StoreState_STORE_STATE_ALIVE
	case !sn.seen[id] && sn.now.Sub(s.started) <= MissedHeartbeats*s.opts.HeartbeatInterval:
		return directorypb.StoreState_STORE_STATE_UNSPECIFIED // not heard from since start, yet
	default:
		return directorypb.StoreState_STORE_STATE_DEAD
	}
}

func (s *Server) storeInfo(sn *snapshot, st StoreRecord) *directorypb.StoreInfo {
	return &directorypb.StoreInfo{
		Id: st.ID, GrpcAddr: st.GRPCAddr, HttpAddr: st.HTTPAddr, PublicUrl: st.PublicURL, Rack: st.Rack,
		FreeBytes: st.FreeBytes, LastHeartbeatUnixNano: st.LastHeartbeatUnixNano,
		State: s.storeState(sn, st.ID), Vids: slices.Clone(st.Vids),
	}
}

// replicas returns v's replicas with their addresses: live ones holding the
// volume first, the others after them, each group in record order.
func (s *Server) replicas(sn *snapshot, v VolumeRecord) []*directorypb.Replica {
	var good, bad []*directorypb.Replica
	for _, r := range v.Replicas {
		st := sn.stores[r.StoreID]
		rep := &directorypb.Replica{StoreId: r.StoreID, GrpcAddr: st.GRPCAddr, HttpAddr: st.HTTPAddr, PublicUrl: st.PublicURL, Rack: st.Rack}
		rs := sn.replicaState(r)
		if sn.alive[r.StoreID] && rs.State != storepb.VolumeState_VOLUME_STATE_UNSPECIFIED && rs.State != storepb.VolumeState_VOLUME_STATE_FAILED {
			good = append(good, rep)
		} else {
			bad = append(bad, rep)
		}
	}
	return append(good, bad...)
}
