package directory

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// StoreState is a store's liveness as this node sees it.
type StoreState uint8

// The store states.
const (
	// StoreUnknown: not heard from since this node started leading, within
	// the grace period; or this node does not lead.
	StoreUnknown StoreState = iota
	// StoreAlive: heartbeating.
	StoreAlive
	// StoreDead: silent for MissedHeartbeats intervals.
	StoreDead
)

// String returns "alive", "dead" or "unknown".
func (s StoreState) String() string {
	switch s {
	case StoreAlive:
		return "alive"
	case StoreDead:
		return "dead"
	}
	return "unknown"
}

// StoreInfo describes a store: its record, with the freshest figures this
// node has, and its liveness.
type StoreInfo struct {
	StoreRecord
	State StoreState
}

// VolumeView describes a logical volume: its effective state (the logical
// state, read-only while a replica is dead, missing or not writable) and
// the largest figures of its replicas.
type VolumeView struct {
	Vid          uint32
	State        VolumeState
	Reason       string
	Replicas     []string // store ids
	SizeBytes    uint64
	SizeLimit    uint64
	NeedleCount  uint64
	DeletedBytes uint64
}

// snapshot is a consistent-enough picture for one request: the committed
// records overlaid with what the stores reported to this node, and each
// store's liveness.
type snapshot struct {
	now     time.Time
	leading bool
	stores  map[string]StoreRecord
	alive   map[string]bool
	seen    map[string]bool // reported to this node's current leadership
	vols    map[string]map[uint32]VolumeReport
	volumes []VolumeRecord
}

func (d *Directory) snapshot() *snapshot {
	epoch, since := d.log.Leadership()
	sn := &snapshot{
		now:     time.Now(),
		leading: epoch != 0,
		stores:  map[string]StoreRecord{},
		alive:   map[string]bool{},
		seen:    map[string]bool{},
		vols:    map[string]map[uint32]VolumeReport{},
	}
	for _, st := range d.fsm.Stores() {
		sn.stores[st.ID] = st
	}
	sn.volumes = d.fsm.Volumes()
	if !sn.leading {
		// A follower hears no heartbeat: it knows the committed records
		// only, and calls no store dead.
		return sn
	}
	d.live.Lock()
	for id := range sn.stores {
		sn.alive[id] = d.aliveLocked(id, sn.now, since)
	}
	for id, ls := range d.live.stores {
		st, ok := sn.stores[id]
		if !ok || !ls.seen.After(since) {
			continue // not recorded yet, or removed; or reported to an earlier leadership
		}
		hb := ls.hb
		st.GRPCAddr, st.HTTPAddr, st.PublicURL, st.Rack = hb.GRPCAddr, hb.HTTPAddr, hb.PublicURL, hb.Rack
		st.FreeBytes = hb.FreeBytes
		st.LastHeartbeatUnixNano = ls.seen.UnixNano()
		st.Vids = st.Vids[:0:0]
		for vid := range ls.vols {
			if !slices.Contains(st.Suspect, vid) {
				st.Vids = append(st.Vids, vid)
			}
		}
		slices.Sort(st.Vids)
		sn.stores[id] = st
		sn.seen[id] = true
		sn.vols[id] = ls.vols
	}
	d.live.Unlock()
	return sn
}

// replicaState returns the freshest report of the replica: the live one
// when the store reported to this node's leadership.
func (sn *snapshot) replicaState(r ReplicaRecord) VolumeReport {
	vols, ok := sn.vols[r.StoreID]
	if !ok {
		return r.VolumeReport
	}
	v, ok := vols[r.Vid]
	if !ok {
		return VolumeReport{Vid: r.Vid, Reason: "missing from the store's report"}
	}
	return v
}

// effectiveState is the state a volume has for Assign and the views: its
// logical state, made read-only while it is allocating, under-replicated,
// or has a replica that is dead, missing or not writable.
func (d *Directory) effectiveState(sn *snapshot, v VolumeRecord) (VolumeState, string) {
	if v.State != StateWritable {
		return v.State, v.Reason
	}
	if v.Allocating {
		return StateReadOnly, "allocating"
	}
	if len(v.Replicas) < d.opts.Replication {
		return StateReadOnly, fmt.Sprintf("under-replicated: %d of %d replicas", len(v.Replicas), d.opts.Replication)
	}
	for _, r := range v.Replicas {
		if sn.leading && !sn.alive[r.StoreID] {
			return StateReadOnly, fmt.Sprintf("store %s is not heartbeating", r.StoreID)
		}
		if rs := sn.replicaState(r); rs.State != StateWritable {
			return StateReadOnly, fmt.Sprintf("store %s: %s", r.StoreID, describeState(rs.State, rs.Reason))
		}
	}
	return StateWritable, ""
}

// sizeLimit is the volume's limit, or the directory's when it has none.
func (d *Directory) sizeLimit(v VolumeRecord) uint64 {
	return cmp.Or(v.SizeLimit, d.opts.VolumeSizeLimit)
}

// volumeView merges the replicas' reports into the view of v.
func (d *Directory) volumeView(sn *snapshot, v VolumeRecord) VolumeView {
	state, reason := d.effectiveState(sn, v)
	out := VolumeView{Vid: v.Vid, State: state, Reason: reason, SizeLimit: d.sizeLimit(v), Replicas: []string{}}
	for _, r := range v.Replicas {
		out.Replicas = append(out.Replicas, r.StoreID)
		rs := sn.replicaState(r)
		out.SizeBytes = max(out.SizeBytes, rs.SizeBytes)
		out.NeedleCount = max(out.NeedleCount, rs.NeedleCount)
		out.DeletedBytes = max(out.DeletedBytes, rs.DeletedBytes)
	}
	return out
}

// storeState is a store's liveness in the views.
func (d *Directory) storeState(sn *snapshot, id string) StoreState {
	switch {
	case !sn.leading:
		return StoreUnknown
	case sn.seen[id] && sn.alive[id]:
		return StoreAlive
	case sn.alive[id]:
		return StoreUnknown // in the grace period, not heard from yet
	default:
		return StoreDead
	}
}

func (d *Directory) storeInfo(sn *snapshot, st StoreRecord) StoreInfo {
	st.Vids = slices.Clone(st.Vids)
	st.Suspect = slices.Clone(st.Suspect)
	return StoreInfo{StoreRecord: st, State: d.storeState(sn, st.ID)}
}

// replicas returns v's replicas with their addresses: live ones holding the
// volume first, the others after them, each group in record order. A
// follower, which hears no heartbeats, lists them in record order.
func (d *Directory) replicas(sn *snapshot, v VolumeRecord) []Replica {
	var good, bad []Replica
	for _, r := range v.Replicas {
		st := sn.stores[r.StoreID]
		rep := Replica{StoreID: r.StoreID, GRPCAddr: st.GRPCAddr, HTTPAddr: st.HTTPAddr, PublicURL: st.PublicURL, Rack: st.Rack}
		rs := sn.replicaState(r)
		if (!sn.leading || sn.alive[r.StoreID]) && rs.State != StateUnknown && rs.State != StateFailed {
			good = append(good, rep)
		} else {
			bad = append(bad, rep)
		}
	}
	return append(good, bad...)
}
