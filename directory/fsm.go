package directory

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// CommandType names a state change.
type CommandType string

// The commands. Their JSON form is the unit a replicated log would carry, so
// these names are part of the persisted format and never change.
const (
	// CmdReserveKeys raises the key sequencer's high-water mark to
	// HighWater: every key up to it may have been handed out. A lower value
	// than the current mark is ignored.
	CmdReserveKeys CommandType = "reserve_keys"
	// CmdStoreReport records a store's heartbeat: Store is registered or
	// updated, and Volumes (every volume the store holds) update the
	// volumes' replicas. A volume not known before is adopted. A writable
	// volume turns read-only when a replica reports it not writable or at
	// its size limit.
	CmdStoreReport CommandType = "store_report"
	// CmdCreateVolume records a new volume (Volume), before the stores are
	// asked to create it. Its vid must be new.
	CmdCreateVolume CommandType = "create_volume"
	// CmdSetVolumeState sets the state of volume Vid to State with Reason,
	// and ends its allocation.
	CmdSetVolumeState CommandType = "set_volume_state"
)

// Command is one change of the directory's state. Only the fields of its
// Type are set.
type Command struct {
	Type CommandType `json:"type"`
	// HighWater is the new sequencer mark (CmdReserveKeys).
	HighWater uint64 `json:"high_water,omitempty"`
	// Store is the reporting store (CmdStoreReport).
	Store *StoreRecord `json:"store,omitempty"`
	// Volumes are every volume the store holds (CmdStoreReport).
	Volumes []VolumeReport `json:"volumes,omitempty"`
	// Volume is the volume to create (CmdCreateVolume).
	Volume *VolumeRecord `json:"volume,omitempty"`
	// Vid, State and Reason describe a state change (CmdSetVolumeState).
	Vid    uint32              `json:"vid,omitempty"`
	State  storepb.VolumeState `json:"state,omitempty"`
	Reason string              `json:"reason,omitempty"`
}

// EncodeCommand returns the serialized form of cmd, as a replicated log
// would carry it.
func EncodeCommand(cmd Command) ([]byte, error) { return json.Marshal(cmd) }

// DecodeCommand parses the output of EncodeCommand.
func DecodeCommand(b []byte) (Command, error) {
	var cmd Command
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cmd); err != nil {
		return Command{}, fmt.Errorf("directory: decode command: %w", err)
	}
	return cmd, nil
}

// StoreRecord is what the directory keeps about a store.
type StoreRecord struct {
	ID        string `json:"id"`
	GRPCAddr  string `json:"grpc_addr"`
	HTTPAddr  string `json:"http_addr"`
	PublicURL string `json:"public_url,omitempty"`
	Rack      string `json:"rack,omitempty"`
	// FreeBytes is the free space of the store's data disk, as reported.
	FreeBytes uint64 `json:"free_bytes"`
	// LastHeartbeatUnixNano is the time of the last recorded heartbeat.
	LastHeartbeatUnixNano int64 `json:"last_heartbeat_unix_nano"`
	// Vids are the volumes of its last recorded report, ascending.
	Vids []uint32 `json:"vids,omitempty"`
}

// VolumeReport is one store's report of one volume.
type VolumeReport struct {
	Vid          uint32              `json:"vid"`
	State        storepb.VolumeState `json:"state"`
	Reason       string              `json:"reason,omitempty"`
	SizeBytes    uint64              `json:"size_bytes"`
	SizeLimit    uint64              `json:"size_limit"`
	NeedleCount  uint64              `json:"needle_count"`
	DeletedBytes uint64              `json:"deleted_bytes"`
}

// atLimit reports whether the volume reached the size limit (limit, or the
// report's own when limit is 0).
func (r VolumeReport) atLimit(limit uint64) bool {
	if limit == 0 {
		limit = r.SizeLimit
	}
	return limit > 0 && r.SizeBytes >= limit
}

// ReplicaRecord is a volume's replica on one store, with the store's last
// recorded report of it. State UNSPECIFIED means not reported yet, or
// missing from the store's last report.
type ReplicaRecord struct {
	StoreID string `json:"store_id"`
	VolumeReport
}

// VolumeRecord is what the directory keeps about a logical volume.
type VolumeRecord struct {
	Vid      uint32          `json:"vid"`
	Replicas []ReplicaRecord `json:"replicas"`
	// State is the logical state; the view adds what liveness implies.
	State  storepb.VolumeState `json:"state"`
	Reason string              `json:"reason,omitempty"`
	// SizeLimit is the size at which the volume turns read-only.
	SizeLimit uint64 `json:"size_limit"`
	// Allocating is set from CmdCreateVolume until the stores answered.
	Allocating      bool  `json:"allocating,omitempty"`
	CreatedUnixNano int64 `json:"created_unix_nano,omitempty"`
}

// replica returns the index of storeID among the replicas, or -1.
func (v *VolumeRecord) replica(storeID string) int {
	return slices.IndexFunc(v.Replicas, func(r ReplicaRecord) bool { return r.StoreID == storeID })
}

func (v VolumeRecord) clone() VolumeRecord {
	v.Replicas = slices.Clone(v.Replicas)
	return v
}

// ErrUnknownVolume is returned by FSM.Apply for a command naming a volume
// the state does not hold.
var ErrUnknownVolume = errors.New("directory: unknown volume")

// ErrVolumeExists is returned by FSM.Apply for CmdCreateVolume of a vid
// already in use.
var ErrVolumeExists = errors.New("directory: volume already exists")

// bbolt layout: bucket "meta" holds "version" (uint32, big-endian) and
// "high_water" (uint64, big-endian); bucket "stores" maps a store id to its
// StoreRecord as JSON; bucket "volumes" maps a vid (uint32, big-endian, so
// keys sort by vid) to its VolumeRecord as JSON.
var (
	bucketMeta    = []byte("meta")
	bucketStores  = []byte("stores")
	bucketVolumes = []byte("volumes")
	keyVersion    = []byte("version")
	keyHighWater  = []byte("high_water")
)

// stateVersion is the version of the bbolt layout above.
const stateVersion = 1

// FSM is the directory's state machine: stores, volumes and the sequencer's
// high-water mark, kept in memory and in a bbolt file, changed only by
// Apply. Apply is deterministic (it reads no clock and no randomness), so a
// replicated log can drive several copies. FSM is safe for concurrent use:
// Apply calls are serialized, and readers see each command entirely or not
// at all.
type FSM struct {
	db      *bolt.DB
	applyMu sync.Mutex // serializes Apply

	// mu guards the in-memory copy. Records installed in the maps are
	// never modified (Apply replaces them), so readers may keep them.
	mu struct {
		sync.RWMutex
		stores    map[string]StoreRecord
		volumes   map[uint32]VolumeRecord
		highWater uint64
	}
}

// OpenFSM opens (creating if needed) the state file at path and loads it.
func OpenFSM(path string) (*FSM, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("directory: open state %s: %w", path, err)
	}
	f := &FSM{db: db}
	f.mu.stores = map[string]StoreRecord{}
	f.mu.volumes = map[uint32]VolumeRecord{}
	if err := f.load(); err != nil {
		db.Close()
		return nil, err
	}
	return f, nil
}

func (f *FSM) load() error {
	err := f.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyVersion); v == nil {
			if err := meta.Put(keyVersion, binary.BigEndian.AppendUint32(nil, stateVersion)); err != nil {
				return err
			}
		} else if len(v) != 4 || binary.BigEndian.Uint32(v) != stateVersion {
			return fmt.Errorf("unsupported state version %x", v)
		}
		if v := meta.Get(keyHighWater); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("corrupt high-water mark %x", v)
			}
			f.mu.highWater = binary.BigEndian.Uint64(v)
		}
		stores, err := tx.CreateBucketIfNotExists(bucketStores)
		if err != nil {
			return err
		}
		if err := stores.ForEach(func(k, v []byte) error {
			var r StoreRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store %q: %w", k, err)
			}
			f.mu.stores[r.ID] = r
			return nil
		}); err != nil {
			return err
		}
		volumes, err := tx.CreateBucketIfNotExists(bucketVolumes)
		if err != nil {
			return err
		}
		return volumes.ForEach(func(k, v []byte) error {
			var r VolumeRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("volume %x: %w", k, err)
			}
			f.mu.volumes[r.Vid] = r
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("directory: load state: %w", err)
	}
	return nil
}

// Close closes the state file.
func (f *FSM) Close() error {
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	return f.db.Close()
}

// changes is what one command writes.
type changes struct {
	stores    []StoreRecord
	volumes   []VolumeRecord
	highWater uint64 // 0: unchanged
}

// Apply applies cmd: it computes the change, writes it durably to the state
// file in one transaction, and only then makes it visible. An invalid
// command changes nothing and returns an error.
func (f *FSM) Apply(cmd Command) error {
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	f.mu.RLock()
	ch, err := f.planLocked(cmd)
	f.mu.RUnlock()
	if err != nil {
		return err
	}
	err = f.db.Update(func(tx *bolt.Tx) error {
		if ch.highWater != 0 {
			if err := tx.Bucket(bucketMeta).Put(keyHighWater, binary.BigEndian.AppendUint64(nil, ch.highWater)); err != nil {
				return err
			}
		}
		for _, s := range ch.stores {
			b, err := json.Marshal(s)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketStores).Put([]byte(s.ID), b); err != nil {
				return err
			}
		}
		for _, v := range ch.volumes {
			b, err := json.Marshal(v)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketVolumes).Put(binary.BigEndian.AppendUint32(nil, v.Vid), b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("directory: apply %s: %w", cmd.Type, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch.highWater != 0 {
		f.mu.highWater = ch.highWater
	}
	for _, s := range ch.stores {
		f.mu.stores[s.ID] = s
	}
	for _, v := range ch.volumes {
		f.mu.volumes[v.Vid] = v
	}
	return nil
}

// planLocked computes the effect of cmd on the current state without
// changing it. f.mu is held for reading.
func (f *FSM) planLocked(cmd Command) (changes, error) {
	var ch changes
	switch cmd.Type {
	case CmdReserveKeys:
		if cmd.HighWater > f.mu.highWater {
			ch.highWater = cmd.HighWater
		}
	case CmdCreateVolume:
		if cmd.Volume == nil || cmd.Volume.Vid == 0 {
			return ch, errors.New("directory: create_volume without a volume")
		}
		if _, ok := f.mu.volumes[cmd.Volume.Vid]; ok {
			return ch, fmt.Errorf("%w: %d", ErrVolumeExists, cmd.Volume.Vid)
		}
		ch.volumes = append(ch.volumes, cmd.Volume.clone())
	case CmdSetVolumeState:
		v, ok := f.mu.volumes[cmd.Vid]
		if !ok {
			return ch, fmt.Errorf("%w: %d", ErrUnknownVolume, cmd.Vid)
		}
		v = v.clone()
		v.State, v.Reason, v.Allocating = cmd.State, cmd.Reason, false
		ch.volumes = append(ch.volumes, v)
	case CmdStoreReport:
		return f.planReportLocked(cmd)
	default:
		return ch, fmt.Errorf("directory: unknown command %q", cmd.Type)
	}
	return ch, nil
}

func (f *FSM) planReportLocked(cmd Command) (changes, error) {
	var ch changes
	if cmd.Store == nil || cmd.Store.ID == "" {
		return ch, errors.New("directory: store_report without a store id")
	}
	st := *cmd.Store
	st.Vids = nil
	reported := make(map[uint32]VolumeReport, len(cmd.Volumes))
	for _, r := range cmd.Volumes {
		if r.Vid == 0 {
			continue
		}
		reported[r.Vid] = r
		st.Vids = append(st.Vids, r.Vid)
	}
	slices.Sort(st.Vids)
	st.Vids = slices.Compact(st.Vids)
	ch.stores = append(ch.stores, st)

	for _, vid := range st.Vids {
		r := reported[vid]
		v, ok := f.mu.volumes[vid]
		if !ok {
			// Adopt a volume this directory has no record of (its state
			// file was lost, or an allocation was never recorded).
			v = VolumeRecord{Vid: vid, State: r.State, Reason: r.Reason, SizeLimit: r.SizeLimit}
			if v.State == storepb.VolumeState_VOLUME_STATE_FAILED {
				v.State = storepb.VolumeState_VOLUME_STATE_READ_ONLY
			}
		} else {
			v = v.clone()
		}
		rep := ReplicaRecord{StoreID: st.ID, VolumeReport: r}
		if i := v.replica(st.ID); i >= 0 {
			v.Replicas[i] = rep
		} else {
			v.Replicas = append(v.Replicas, rep)
		}
		if v.State == storepb.VolumeState_VOLUME_STATE_WRITABLE && !v.Allocating {
			switch {
			case r.State != storepb.VolumeState_VOLUME_STATE_WRITABLE:
				v.State = storepb.VolumeState_VOLUME_STATE_READ_ONLY
				v.Reason = fmt.Sprintf("store %s: %s", st.ID, describeState(r.State, r.Reason))
			case r.atLimit(v.SizeLimit):
				v.State = storepb.VolumeState_VOLUME_STATE_READ_ONLY
				v.Reason = "full"
			}
		}
		// Sealed or EC once every replica says so.
		if s := r.State; (s == storepb.VolumeState_VOLUME_STATE_SEALED || s == storepb.VolumeState_VOLUME_STATE_EC) && v.State != s &&
			!slices.ContainsFunc(v.Replicas, func(x ReplicaRecord) bool { return x.State != s }) {
			v.State, v.Reason = s, ""
		}
		ch.volumes = append(ch.volumes, v)
	}
	// Replicas of this store that it no longer reports are kept (removing a
	// replica is a repair decision) but marked missing.
	if old, ok := f.mu.stores[st.ID]; ok {
		for _, vid := range old.Vids {
			if _, ok := reported[vid]; ok {
				continue
			}
			v, ok := f.mu.volumes[vid]
			if !ok || v.Allocating {
				continue
			}
			if i := v.replica(st.ID); i >= 0 {
				v = v.clone()
				v.Replicas[i].VolumeReport = VolumeReport{Vid: vid, Reason: "missing from the store's report"}
				ch.volumes = append(ch.volumes, v)
			}
		}
	}
	return ch, nil
}

// describeState names a replica state for a read-only reason.
func describeState(s storepb.VolumeState, reason string) string {
	if reason != "" {
		return reason
	}
	switch s {
	case storepb.VolumeState_VOLUME_STATE_READ_ONLY:
		return "read-only"
	case storepb.VolumeState_VOLUME_STATE_SEALED:
		return "sealed"
	case storepb.VolumeState_VOLUME_STATE_EC:
		return "erasure-coded"
	case storepb.VolumeState_VOLUME_STATE_FAILED:
		return "failed"
	}
	return "state unknown"
}

// HighWater returns the sequencer's high-water mark: no key above it has
// been handed out.
func (f *FSM) HighWater() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.mu.highWater
}

// Store returns the record of store id.
func (f *FSM) Store(id string) (StoreRecord, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.mu.stores[id]
	return s, ok
}

// Stores returns every store record in id order. The records' slices must
// not be modified.
func (f *FSM) Stores() []StoreRecord {
	f.mu.RLock()
	out := make([]StoreRecord, 0, len(f.mu.stores))
	for _, s := range f.mu.stores {
		out = append(out, s)
	}
	f.mu.RUnlock()
	slices.SortFunc(out, func(a, b StoreRecord) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Volume returns the record of volume vid. Its slices must not be
// modified.
func (f *FSM) Volume(vid uint32) (VolumeRecord, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v, ok := f.mu.volumes[vid]
	return v, ok
}

// Volumes returns every volume record in vid order. The records' slices
// must not be modified.
func (f *FSM) Volumes() []VolumeRecord {
	f.mu.RLock()
	out := make([]VolumeRecord, 0, len(f.mu.volumes))
	for _, v := range f.mu.volumes {
		out = append(out, v)
	}
	f.mu.RUnlock()
	slices.SortFunc(out, func(a, b VolumeRecord) int { return cmp.Compare(a.Vid, b.Vid) })
	return out
}

// MaxVid returns the largest vid in the state, 0 when there is none.
func (f *FSM) MaxVid() uint32 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var m uint32
	for vid := range f.mu.volumes {
		m = max(m, vid)
	}
	return m
}
