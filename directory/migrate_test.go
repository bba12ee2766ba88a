package directory

import (
	"encoding/binary"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// writeV1State writes a state file as version 1 wrote it: volume states
// as the wire enum's numbers, no vid mark.
func writeV1State(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket([]byte("meta"))
		stores, _ := tx.CreateBucket([]byte("stores"))
		vols, _ := tx.CreateBucket([]byte("volumes"))
		meta.Put([]byte("version"), binary.BigEndian.AppendUint32(nil, 1))
		meta.Put([]byte("high_water"), binary.BigEndian.AppendUint64(nil, 30000))
		stores.Put([]byte("s1"), []byte(`{"id":"s1","grpc_addr":"h1:7080","http_addr":"h1:7081","rack":"r1","free_bytes":1000,"last_heartbeat_unix_nano":5,"vids":[1,2,7]}`))
		vols.Put(binary.BigEndian.AppendUint32(nil, 1), []byte(`{"vid":1,"replicas":[{"store_id":"s1","vid":1,"state":1,"size_bytes":10,"size_limit":100,"needle_count":2,"deleted_bytes":0}],"state":1,"size_limit":100,"created_unix_nano":9}`))
		vols.Put(binary.BigEndian.AppendUint32(nil, 2), []byte(`{"vid":2,"replicas":[{"store_id":"s1","vid":2,"state":3,"size_bytes":10,"size_limit":100,"needle_count":2,"deleted_bytes":0}],"state":3,"size_limit":100}`))
		vols.Put(binary.BigEndian.AppendUint32(nil, 7), []byte(`{"vid":7,"replicas":[{"store_id":"s1","vid":7,"state":0,"reason":"missing from the store's report","size_bytes":0,"size_limit":0,"needle_count":0,"deleted_bytes":0}],"state":2,"reason":"full","size_limit":100,"allocating":true}`))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestMigrateV1State(t *testing.T) {
	path := filepath.Join(t.TempDir(), StateFile)
	writeV1State(t, path)
	for round := range 2 { // the second open reads the upgraded file
		f := openFSM(t, path)
		if f.HighWater() != 30000 || f.VidMark() != 7 {
			t.Fatalf("round %d: high water %d, vid mark %d; want 30000, 7", round, f.HighWater(), f.VidMark())
		}
		want := []VolumeRecord{
			{Vid: 1, State: StateWritable, SizeLimit: 100, CreatedUnixNano: 9, Replicas: []ReplicaRecord{{StoreID: "s1",
				VolumeReport: VolumeReport{Vid: 1, State: StateWritable, SizeBytes: 10, SizeLimit: 100, NeedleCount: 2}}}},
			{Vid: 2, State: StateSealed, SizeLimit: 100, Replicas: []ReplicaRecord{{StoreID: "s1",
				VolumeReport: VolumeReport{Vid: 2, State: StateSealed, SizeBytes: 10, SizeLimit: 100, NeedleCount: 2}}}},
			{Vid: 7, State: StateReadOnly, Reason: "full", SizeLimit: 100, Allocating: true, Replicas: []ReplicaRecord{{StoreID: "s1",
				VolumeReport: VolumeReport{Vid: 7, State: StateUnknown, Reason: "missing from the store's report"}}}},
		}
		if got := f.Volumes(); !reflect.DeepEqual(got, want) {
			t.Fatalf("round %d: volumes\n%+v\nwant\n%+v", round, got, want)
		}
		if s, ok := f.Store("s1"); !ok || s.Rack != "r1" || !reflect.DeepEqual(s.Vids, []uint32{1, 2, 7}) {
			t.Fatalf("round %d: store s1 = %+v", round, s)
		}
		// The upgraded file has a vid mark: an allocation goes above it.
		if next, ok := f.NextVid(); !ok || next != 8 {
			t.Fatalf("round %d: NextVid = %d, %v", round, next, ok)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket([]byte("meta")).Get([]byte("version")); binary.BigEndian.Uint32(v) != 2 {
			t.Errorf("version after upgrade %x", v)
		}
		if v := string(tx.Bucket([]byte("volumes")).Get(binary.BigEndian.AppendUint32(nil, 2))); !contains(v, `"state":"sealed"`) {
			t.Errorf("volume 2 not stored by state name: %s", v)
		}
		return nil
	})
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// A directory started on a version 1 folder serves it.
func TestServerUpgradesV1Folder(t *testing.T) {
	dir := t.TempDir()
	writeV1State(t, filepath.Join(dir, StateFile))
	s := startDirectory(t, Options{Dir: dir, Replication: 1})
	st := s.Status()
	if len(st.Volumes) != 3 || st.Volumes[1].State != "sealed" || st.HighWater != 30000 {
		t.Fatalf("status after upgrade: %+v", st)
	}
	// The interrupted allocation (vid 7) stays read-only, its vid used.
	waitFor(t, "interrupted allocation ended", func() error {
		if v, _ := s.FSM().Volume(7); v.Allocating {
			return errorString("still allocating")
		}
		return nil
	})
}

type errorString string

func (e errorString) Error() string { return string(e) }
