package directory

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CommandType names a state change.
type CommandType string

// The commands. Their JSON form is what the raft log carries, so these
// names are part of the persisted format and never change.
const (
	// CmdReserveKeys raises the key sequencer's high-water mark to
	// HighWater: every key up to it may have been handed out. A lower value
	// than the current mark is ignored.
	CmdReserveKeys CommandType = "reserve_keys"
	// CmdStoreReport records a store's heartbeat: Store is registered or
	// updated, and Volumes (every volume the store holds) update the
	// volumes' replicas. A volume not known before is adopted when its vid
	// is at most the vid mark (a vid this directory handed out); a higher
	// vid is not adopted but listed in the store's Suspect vids for an
	// operator. A writable volume turns read-only when a replica reports
	// it not writable or at its size limit.
	CmdStoreReport CommandType = "store_report"
	// CmdCreateVolume records a new volume (Volume), before the stores are
	// asked to create it. Its vid must be new; the vid mark rises to it.
	CmdCreateVolume CommandType = "create_volume"
	// CmdSetVolumeState sets the state of volume Vid to State with Reason,
	// and ends its allocation.
	CmdSetVolumeState CommandType = "set_volume_state"
	// CmdRemoveStore forgets store StoreID: its record goes, and it is
	// removed from the replicas of every volume.
	CmdRemoveStore CommandType = "remove_store"
	// CmdSetNode records the addresses of directory node Node (a raft
	// server id), so that every node can tell clients where the leader
	// is.
	CmdSetNode CommandType = "set_node"
	// CmdSeed loads Seed, the state of a single-node directory, into a
	// state that holds no key mark, store or volume yet: the first entry
	// of a cluster made from a single directory.
	CmdSeed CommandType = "seed"
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
	Vid    uint32      `json:"vid,omitempty"`
	State  VolumeState `json:"state,omitempty"`
	Reason string      `json:"reason,omitempty"`
	// StoreID names the store to forget (CmdRemoveStore).
	StoreID string `json:"store_id,omitempty"`
	// Node is a directory node's addresses (CmdSetNode).
	Node *NodeRecord `json:"node,omitempty"`
	// Seed is the state to start from (CmdSeed).
	Seed *SeedState `json:"seed,omitempty"`
}

// SeedState is the state a directory cluster starts from when it is made
// from a single-node directory: the key and vid marks, the stores and the
// volumes (node records belong to the cluster and are not carried).
type SeedState struct {
	HighWater uint64         `json:"high_water"`
	VidMark   uint32         `json:"vid_mark"`
	Stores    []StoreRecord  `json:"stores"`
	Volumes   []VolumeRecord `json:"volumes"`
}

// ErrNotEmpty is returned by FSM.Apply for a CmdSeed on a state that
// already holds a key mark, a store or a volume.
var ErrNotEmpty = errors.New("directory: the state is not empty; a seed applies only to a new cluster")

// LoadSeed reads the state file of a single-node directory (StateFile in
// its data folder, upgraded in place when it has an older version) and
// returns it as a SeedState. The file must exist.
func LoadSeed(path string) (*SeedState, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("directory: seed: %w", err)
	}
	f, err := OpenFSM(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	seed := f.Seed()
	return &seed, nil
}

// Seed returns the state as a SeedState.
func (f *FSM) Seed() SeedState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := SeedState{HighWater: f.mu.highWater, VidMark: f.mu.vidMark, Stores: []StoreRecord{}, Volumes: []VolumeRecord{}}
	for _, st := range f.mu.stores {
		s.Stores = append(s.Stores, st)
	}
	for _, v := range f.mu.volumes {
		s.Volumes = append(s.Volumes, v.clone())
	}
	slices.SortFunc(s.Stores, func(a, b StoreRecord) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(s.Volumes, func(a, b VolumeRecord) int { return cmp.Compare(a.Vid, b.Vid) })
	return s
}

// Empty reports whether the state holds no key mark, vid mark, store or
// volume (node records aside).
func (f *FSM) Empty() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.emptyLocked()
}

func (f *FSM) emptyLocked() bool {
	return f.mu.highWater == 0 && f.mu.vidMark == 0 && len(f.mu.stores) == 0 && len(f.mu.volumes) == 0
}

// EncodeCommand returns the serialized form of cmd, as the raft log
// carries it.
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
	// Suspect are vids of its last recorded report that this directory
	// never handed out (above the vid mark): they are not adopted, and an
	// operator should look at them.
	Suspect []uint32 `json:"suspect,omitempty"`
}

// NodeRecord is what the directory keeps about one of its own nodes.
type NodeRecord struct {
	// ID is the raft server id.
	ID string `json:"id"`
	// GRPCAddr and HTTPAddr are where clients reach the node.
	GRPCAddr string `json:"grpc_addr"`
	HTTPAddr string `json:"http_addr"`
}

// VolumeReport is one store's report of one volume.
type VolumeReport struct {
	Vid          uint32      `json:"vid"`
	State        VolumeState `json:"state"`
	Reason       string      `json:"reason,omitempty"`
	SizeBytes    uint64      `json:"size_bytes"`
	SizeLimit    uint64      `json:"size_limit"`
	NeedleCount  uint64      `json:"needle_count"`
	DeletedBytes uint64      `json:"deleted_bytes"`
	// EcShards are the shards of an EC volume the store holds, ascending
	// (none for a plain volume, or a holder keeping only the index).
	EcShards []uint32 `json:"ec_shards,omitempty"`
	// LastAppendUnixNano is when the replica's data file last changed (an
	// append, or a compaction's rewrite), by the store's clock; 0 when
	// unknown. The erasure-coding policy reads it.
	LastAppendUnixNano int64 `json:"last_append_unix_nano,omitempty"`
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
// recorded report of it. State StateUnknown means not reported yet, or
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
	State  VolumeState `json:"state"`
	Reason string      `json:"reason,omitempty"`
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

// ErrUnknownVolume is returned for a volume the state does not hold.
var ErrUnknownVolume = errors.New("directory: unknown volume")

// ErrVolumeExists is returned by FSM.Apply for CmdCreateVolume of a vid
// already in use.
var ErrVolumeExists = errors.New("directory: volume already exists")

// ErrUnknownStore is returned for a store the state does not hold.
var ErrUnknownStore = errors.New("directory: unknown store")

// The state file is a bbolt database:
//
//	bucket   key          value
//	meta     version      uint32, big-endian: stateVersion (2)
//	meta     high_water   uint64, big-endian: the key sequencer's mark
//	meta     vid_mark     uint32, big-endian: the largest vid handed out
//	stores   <store id>   StoreRecord as JSON
//	volumes  <vid>        VolumeRecord as JSON; the key is the vid as a
//	                      big-endian uint32, so keys sort by vid
//	nodes    <node id>    NodeRecord as JSON
//
// Volume states are JSON strings ("writable", "read-only", ...). Version 1
// stored them as the numbers of the wire enum (storepb.VolumeState), had no
// vid_mark and no nodes bucket; opening a version 1 file upgrades it in one
// transaction (see migrateV1).
var (
	bucketMeta    = []byte("meta")
	bucketStores  = []byte("stores")
	bucketVolumes = []byte("volumes")
	bucketNodes   = []byte("nodes")
	keyVersion    = []byte("version")
	keyHighWater  = []byte("high_water")
	keyVidMark    = []byte("vid_mark")
)

// stateVersion is the version of the bbolt layout above.
const stateVersion = 2

// FSM is the directory's state machine: stores, volumes, directory nodes,
// the sequencer's high-water mark and the vid mark, kept in memory (and in
// a bbolt file unless opened with OpenMemoryFSM), changed only by Apply and
// Restore. Apply is deterministic (it reads no clock and no randomness),
// so the raft log drives identical copies on every node. FSM is safe for
// concurrent use: Apply calls are serialized, and readers see each command
// entirely or not at all.
type FSM struct {
	db      *bolt.DB   // nil: memory only
	applyMu sync.Mutex // serializes Apply and Restore

	// mu guards the in-memory copy. Records installed in the maps are
	// never modified (Apply replaces them), so readers may keep them.
	mu struct {
		sync.RWMutex
		state
	}
}

// state is the FSM's content.
type state struct {
	stores    map[string]StoreRecord
	volumes   map[uint32]VolumeRecord
	nodes     map[string]NodeRecord
	highWater uint64
	vidMark   uint32
}

func newState() state {
	return state{stores: map[string]StoreRecord{}, volumes: map[uint32]VolumeRecord{}, nodes: map[string]NodeRecord{}}
}

// OpenFSM opens (creating if needed) the state file at path and loads it,
// upgrading a version 1 file.
func OpenFSM(path string) (*FSM, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("directory: open state %s: %w", path, err)
	}
	f := &FSM{db: db}
	f.mu.state = newState()
	if err := f.load(); err != nil {
		db.Close()
		return nil, err
	}
	return f, nil
}

// OpenMemoryFSM returns an empty FSM that keeps its state in memory only;
// in a raft cluster the log and its snapshots are what persist it.
func OpenMemoryFSM() *FSM {
	f := &FSM{}
	f.mu.state = newState()
	return f
}

func (f *FSM) load() error {
	err := f.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		for _, b := range [][]byte{bucketStores, bucketVolumes, bucketNodes} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		switch v := meta.Get(keyVersion); {
		case v == nil:
			if err := meta.Put(keyVersion, binary.BigEndian.AppendUint32(nil, stateVersion)); err != nil {
				return err
			}
		case len(v) == 4 && binary.BigEndian.Uint32(v) == 1:
			if err := migrateV1(tx); err != nil {
				return fmt.Errorf("upgrade from version 1: %w", err)
			}
		case len(v) != 4 || binary.BigEndian.Uint32(v) != stateVersion:
			return fmt.Errorf("unsupported state version %x", v)
		}
		return readState(tx, &f.mu.state)
	})
	if err != nil {
		return fmt.Errorf("directory: load state: %w", err)
	}
	return nil
}

// readState loads the buckets into st.
func readState(tx *bolt.Tx, st *state) error {
	meta := tx.Bucket(bucketMeta)
	if v := meta.Get(keyHighWater); v != nil {
		if len(v) != 8 {
			return fmt.Errorf("corrupt high-water mark %x", v)
		}
		st.highWater = binary.BigEndian.Uint64(v)
	}
	if v := meta.Get(keyVidMark); v != nil {
		if len(v) != 4 {
			return fmt.Errorf("corrupt vid mark %x", v)
		}
		st.vidMark = binary.BigEndian.Uint32(v)
	}
	if err := tx.Bucket(bucketStores).ForEach(func(k, v []byte) error {
		var r StoreRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("store %q: %w", k, err)
		}
		st.stores[r.ID] = r
		return nil
	}); err != nil {
		return err
	}
	if err := tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
		var r NodeRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("node %q: %w", k, err)
		}
		st.nodes[r.ID] = r
		return nil
	}); err != nil {
		return err
	}
	return tx.Bucket(bucketVolumes).ForEach(func(k, v []byte) error {
		var r VolumeRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("volume %x: %w", k, err)
		}
		st.volumes[r.Vid] = r
		return nil
	})
}

// v1Volume is a volume record of state version 1: states were the wire
// enum's numbers.
type v1Volume struct {
	Vid      uint32 `json:"vid"`
	Replicas []struct {
		StoreID      string `json:"store_id"`
		Vid          uint32 `json:"vid"`
		State        int32  `json:"state"`
		Reason       string `json:"reason,omitempty"`
		SizeBytes    uint64 `json:"size_bytes"`
		SizeLimit    uint64 `json:"size_limit"`
		NeedleCount  uint64 `json:"needle_count"`
		DeletedBytes uint64 `json:"deleted_bytes"`
	} `json:"replicas"`
	State           int32  `json:"state"`
	Reason          string `json:"reason,omitempty"`
	SizeLimit       uint64 `json:"size_limit"`
	Allocating      bool   `json:"allocating,omitempty"`
	CreatedUnixNano int64  `json:"created_unix_nano,omitempty"`
}

// migrateV1 rewrites a version 1 state in place: volume states become
// names, the vid mark is set to the largest vid held, and the version
// becomes 2. Store records are unchanged.
func migrateV1(tx *bolt.Tx) error {
	vols := tx.Bucket(bucketVolumes)
	var mark uint32
	rewritten := map[string][]byte{}
	err := vols.ForEach(func(k, v []byte) error {
		var old v1Volume
		if err := json.Unmarshal(v, &old); err != nil {
			return fmt.Errorf("volume %x: %w", k, err)
		}
		st, err := v1VolumeState(old.State)
		if err != nil {
			return fmt.Errorf("volume %d: %w", old.Vid, err)
		}
		rec := VolumeRecord{Vid: old.Vid, State: st, Reason: old.Reason, SizeLimit: old.SizeLimit,
			Allocating: old.Allocating, CreatedUnixNano: old.CreatedUnixNano, Replicas: []ReplicaRecord{}}
		for _, r := range old.Replicas {
			rs, err := v1VolumeState(r.State)
			if err != nil {
				return fmt.Errorf("volume %d replica %s: %w", old.Vid, r.StoreID, err)
			}
			rec.Replicas = append(rec.Replicas, ReplicaRecord{StoreID: r.StoreID, VolumeReport: VolumeReport{Vid: r.Vid, State: rs,
				Reason: r.Reason, SizeBytes: r.SizeBytes, SizeLimit: r.SizeLimit, NeedleCount: r.NeedleCount, DeletedBytes: r.DeletedBytes}})
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		rewritten[string(k)] = b
		mark = max(mark, old.Vid)
		return nil
	})
	if err != nil {
		return err
	}
	for k, b := range rewritten {
		if err := vols.Put([]byte(k), b); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	if err := meta.Put(keyVidMark, binary.BigEndian.AppendUint32(nil, mark)); err != nil {
		return err
	}
	return meta.Put(keyVersion, binary.BigEndian.AppendUint32(nil, stateVersion))
}

// Close closes the state file.
func (f *FSM) Close() error {
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	if f.db == nil {
		return nil
	}
	return f.db.Close()
}

// changes is what one command writes.
type changes struct {
	stores        []StoreRecord
	removedStores []string
	volumes       []VolumeRecord
	nodes         []NodeRecord
	highWater     uint64 // 0: unchanged
	vidMark       uint32 // 0: unchanged
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
	if f.db != nil {
		if err := f.db.Update(func(tx *bolt.Tx) error { return writeChanges(tx, ch) }); err != nil {
			return fmt.Errorf("directory: apply %s: %w", cmd.Type, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch.highWater != 0 {
		f.mu.highWater = ch.highWater
	}
	if ch.vidMark != 0 {
		f.mu.vidMark = ch.vidMark
	}
	for _, id := range ch.removedStores {
		delete(f.mu.stores, id)
	}
	for _, s := range ch.stores {
		f.mu.stores[s.ID] = s
	}
	for _, v := range ch.volumes {
		f.mu.volumes[v.Vid] = v
	}
	for _, n := range ch.nodes {
		f.mu.nodes[n.ID] = n
	}
	return nil
}

func writeChanges(tx *bolt.Tx, ch changes) error {
	meta := tx.Bucket(bucketMeta)
	if ch.highWater != 0 {
		if err := meta.Put(keyHighWater, binary.BigEndian.AppendUint64(nil, ch.highWater)); err != nil {
			return err
		}
	}
	if ch.vidMark != 0 {
		if err := meta.Put(keyVidMark, binary.BigEndian.AppendUint32(nil, ch.vidMark)); err != nil {
			return err
		}
	}
	for _, id := range ch.removedStores {
		if err := tx.Bucket(bucketStores).Delete([]byte(id)); err != nil {
			return err
		}
	}
	for _, s := range ch.stores {
		if err := putJSON(tx.Bucket(bucketStores), []byte(s.ID), s); err != nil {
			return err
		}
	}
	for _, v := range ch.volumes {
		if err := putJSON(tx.Bucket(bucketVolumes), binary.BigEndian.AppendUint32(nil, v.Vid), v); err != nil {
			return err
		}
	}
	for _, n := range ch.nodes {
		if err := putJSON(tx.Bucket(bucketNodes), []byte(n.ID), n); err != nil {
			return err
		}
	}
	return nil
}

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
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
		if cmd.Volume.Vid > f.mu.vidMark {
			ch.vidMark = cmd.Volume.Vid
		}
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
	case CmdRemoveStore:
		if _, ok := f.mu.stores[cmd.StoreID]; !ok {
			return ch, fmt.Errorf("%w: %q", ErrUnknownStore, cmd.StoreID)
		}
		ch.removedStores = append(ch.removedStores, cmd.StoreID)
		for _, v := range f.mu.volumes {
			if i := v.replica(cmd.StoreID); i >= 0 {
				v = v.clone()
				v.Replicas = slices.Delete(v.Replicas, i, i+1)
				ch.volumes = append(ch.volumes, v)
			}
		}
		slices.SortFunc(ch.volumes, func(a, b VolumeRecord) int { return cmp.Compare(a.Vid, b.Vid) })
	case CmdSeed:
		if cmd.Seed == nil {
			return ch, errors.New("directory: seed without a state")
		}
		if !f.emptyLocked() {
			return ch, ErrNotEmpty
		}
		ch.highWater, ch.vidMark = cmd.Seed.HighWater, cmd.Seed.VidMark
		ch.stores = slices.Clone(cmd.Seed.Stores)
		for _, v := range cmd.Seed.Volumes {
			if v.Vid == 0 {
				return ch, errors.New("directory: seed with a volume of vid 0")
			}
			ch.volumes = append(ch.volumes, v.clone())
			ch.vidMark = max(ch.vidMark, v.Vid)
		}
	case CmdSetNode:
		if cmd.Node == nil || cmd.Node.ID == "" {
			return ch, errors.New("directory: set_node without a node id")
		}
		ch.nodes = append(ch.nodes, *cmd.Node)
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
	st.Vids, st.Suspect = nil, nil
	reported := make(map[uint32]VolumeReport, len(cmd.Volumes))
	for _, r := range cmd.Volumes {
		if r.Vid == 0 {
			continue
		}
		if _, known := f.mu.volumes[r.Vid]; !known && r.Vid > f.mu.vidMark {
			// Never handed out here: adopting it would let one report move
			// the vid sequence anywhere (up to wrapping it).
			st.Suspect = append(st.Suspect, r.Vid)
			continue
		}
		reported[r.Vid] = r
		st.Vids = append(st.Vids, r.Vid)
	}
	slices.Sort(st.Vids)
	st.Vids = slices.Compact(st.Vids)
	slices.Sort(st.Suspect)
	st.Suspect = slices.Compact(st.Suspect)
	ch.stores = append(ch.stores, st)

	for _, vid := range st.Vids {
		r := reported[vid]
		v, ok := f.mu.volumes[vid]
		if !ok {
			// Adopt a volume below the vid mark this directory has no
			// record of (an allocation was cut short before it was
			// recorded as created, or a record was lost).
			v = VolumeRecord{Vid: vid, State: r.State, Reason: r.Reason, SizeLimit: r.SizeLimit}
			if v.State == StateFailed || v.State == StateUnknown {
				v.State = StateReadOnly
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
		if v.State == StateWritable && !v.Allocating {
			switch {
			case r.State != StateWritable:
				v.State = StateReadOnly
				v.Reason = fmt.Sprintf("store %s: %s", st.ID, describeState(r.State, r.Reason))
			case r.atLimit(v.SizeLimit):
				v.State = StateReadOnly
				v.Reason = "full"
			}
		}
		// Sealed or EC once every replica says so.
		if s := r.State; (s == StateSealed || s == StateEC) && v.State != s &&
			!slices.ContainsFunc(v.Replicas, func(x ReplicaRecord) bool { return x.State != s }) {
			v.State, v.Reason = s, ""
		}
		ch.volumes = append(ch.volumes, v)
	}
	// Replicas of this store that it no longer reports are kept (removing a
	// replica is a repair decision) but marked missing; except a holder of
	// an EC volume that reported it as EC last: it gave it up (its shards
	// were placed elsewhere, or the volume was decoded and replicated), so
	// it leaves the holders, and a volume whose remaining replicas all say
	// sealed is sealed again.
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
				if v.State == StateEC && v.Replicas[i].State == StateEC {
					v.Replicas = slices.Delete(v.Replicas, i, i+1)
					if len(v.Replicas) > 0 && !slices.ContainsFunc(v.Replicas, func(x ReplicaRecord) bool { return x.State != StateSealed }) {
						v.State, v.Reason = StateSealed, ""
					}
				} else {
					v.Replicas[i].VolumeReport = VolumeReport{Vid: vid, Reason: "missing from the store's report"}
				}
				ch.volumes = append(ch.volumes, v)
			}
		}
	}
	return ch, nil
}

// describeState names a replica state for a read-only reason.
func describeState(s VolumeState, reason string) string {
	if reason != "" {
		return reason
	}
	switch s {
	case StateReadOnly:
		return "read-only"
	case StateSealed:
		return "sealed"
	case StateEC:
		return "erasure-coded"
	case StateFailed:
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

// VidMark returns the largest vid this directory handed out (or held when
// its state was upgraded); reported vids above it are not adopted.
func (f *FSM) VidMark() uint32 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.mu.vidMark
}

// NextVid returns the vid the next allocation gets, or false when the vid
// space is used up (vids never wrap).
func (f *FSM) NextVid() (uint32, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m := f.mu.vidMark
	for vid := range f.mu.volumes {
		m = max(m, vid)
	}
	if m == math.MaxUint32 {
		return 0, false
	}
	return m + 1, true
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
	out := slices.Collect(maps.Values(f.mu.stores))
	f.mu.RUnlock()
	slices.SortFunc(out, func(a, b StoreRecord) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Node returns the record of directory node id.
func (f *FSM) Node(id string) (NodeRecord, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.mu.nodes[id]
	return n, ok
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
	out := slices.Collect(maps.Values(f.mu.volumes))
	f.mu.RUnlock()
	slices.SortFunc(out, func(a, b VolumeRecord) int { return cmp.Compare(a.Vid, b.Vid) })
	return out
}

// snapshotData is the serialized form of the whole state, as raft
// snapshots carry it: one JSON object.
type snapshotData struct {
	Version   int            `json:"version"`
	HighWater uint64         `json:"high_water"`
	VidMark   uint32         `json:"vid_mark"`
	Stores    []StoreRecord  `json:"stores"`
	Volumes   []VolumeRecord `json:"volumes"`
	Nodes     []NodeRecord   `json:"nodes"`
}

// WriteSnapshot writes the whole state to w, for Restore.
func (f *FSM) WriteSnapshot(w io.Writer) error {
	f.mu.RLock()
	d := snapshotData{Version: stateVersion, HighWater: f.mu.highWater, VidMark: f.mu.vidMark,
		Stores:  slices.Collect(maps.Values(f.mu.stores)),
		Volumes: slices.Collect(maps.Values(f.mu.volumes)),
		Nodes:   slices.Collect(maps.Values(f.mu.nodes))}
	f.mu.RUnlock()
	slices.SortFunc(d.Stores, func(a, b StoreRecord) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(d.Volumes, func(a, b VolumeRecord) int { return cmp.Compare(a.Vid, b.Vid) })
	slices.SortFunc(d.Nodes, func(a, b NodeRecord) int { return cmp.Compare(a.ID, b.ID) })
	if err := json.NewEncoder(w).Encode(d); err != nil {
		return fmt.Errorf("directory: write snapshot: %w", err)
	}
	return nil
}

// Restore replaces the whole state with a snapshot written by
// WriteSnapshot. A snapshot that does not parse changes nothing.
func (f *FSM) Restore(r io.Reader) error {
	var d snapshotData
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return fmt.Errorf("directory: read snapshot: %w", err)
	}
	if d.Version != stateVersion {
		return fmt.Errorf("directory: snapshot of unsupported version %d", d.Version)
	}
	st := newState()
	st.highWater, st.vidMark = d.HighWater, d.VidMark
	for _, s := range d.Stores {
		st.stores[s.ID] = s
	}
	for _, v := range d.Volumes {
		st.volumes[v.Vid] = v
	}
	for _, n := range d.Nodes {
		st.nodes[n.ID] = n
	}
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	if f.db != nil {
		err := f.db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketStores, bucketVolumes, bucketNodes} {
				if err := tx.DeleteBucket(b); err != nil {
					return err
				}
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
			ch := changes{highWater: st.highWater, vidMark: st.vidMark, stores: d.Stores, volumes: d.Volumes, nodes: d.Nodes}
			meta := tx.Bucket(bucketMeta)
			for _, k := range [][]byte{keyHighWater, keyVidMark} {
				if err := meta.Delete(k); err != nil {
					return err
				}
			}
			return writeChanges(tx, ch)
		})
		if err != nil {
			return fmt.Errorf("directory: restore snapshot: %w", err)
		}
	}
	f.mu.Lock()
	f.mu.state = st
	f.mu.Unlock()
	return nil
}
