package directory

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
)

const (
	writable = StateWritable
	readOnly = StateReadOnly
	sealed   = StateSealed
)

func openFSM(t *testing.T, path string) *FSM {
	t.Helper()
	f, err := OpenFSM(path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mustApply(t *testing.T, f *FSM, cmd Command) {
	t.Helper()
	if err := f.Apply(cmd); err != nil {
		t.Fatalf("Apply(%s): %v", cmd.Type, err)
	}
}

func report(id string, vols ...VolumeReport) Command {
	return Command{Type: CmdStoreReport, Store: &StoreRecord{ID: id, GRPCAddr: id + ":1", HTTPAddr: id + ":2", Rack: "r-" + id,
		FreeBytes: 1 << 40, LastHeartbeatUnixNano: 12345}, Volumes: vols}
}

func TestFSMApplyAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	f := openFSM(t, path)
	mustApply(t, f, Command{Type: CmdReserveKeys, HighWater: 1000})
	mustApply(t, f, Command{Type: CmdReserveKeys, HighWater: 10}) // lower: ignored
	mustApply(t, f, Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 1, SizeLimit: 1 << 20, State: writable, Allocating: true,
		Replicas: []ReplicaRecord{{StoreID: "a"}, {StoreID: "b"}}}})
	mustApply(t, f, Command{Type: CmdSetVolumeState, Vid: 1, State: writable})
	mustApply(t, f, report("a", VolumeReport{Vid: 1, State: writable, SizeBytes: 100, NeedleCount: 3}))
	mustApply(t, f, report("b", VolumeReport{Vid: 1, State: writable, SizeBytes: 200}, VolumeReport{Vid: 9, State: sealed}))

	if got := f.HighWater(); got != 1000 {
		t.Fatalf("high water %d, want 1000", got)
	}
	v, ok := f.Volume(1)
	if !ok || v.State != writable || v.Allocating || len(v.Replicas) != 2 || v.Replicas[1].SizeBytes != 200 {
		t.Fatalf("volume 1 = %+v", v)
	}
	// Vid 9 was never handed out (the vid mark is 1): flagged, not adopted.
	if v9, ok := f.Volume(9); ok {
		t.Fatalf("volume 9 above the vid mark adopted: %+v", v9)
	}
	if b, _ := f.Store("b"); !reflect.DeepEqual(b.Vids, []uint32{1}) || !reflect.DeepEqual(b.Suspect, []uint32{9}) || b.Rack != "r-b" {
		t.Fatalf("store b = %+v", b)
	}
	wantStores, wantVolumes := f.Stores(), f.Volumes()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	g := openFSM(t, path)
	defer g.Close()
	if g.HighWater() != 1000 {
		t.Fatalf("reopened high water %d", g.HighWater())
	}
	if !reflect.DeepEqual(g.Stores(), wantStores) {
		t.Fatalf("reopened stores\n%+v\nwant\n%+v", g.Stores(), wantStores)
	}
	if !reflect.DeepEqual(g.Volumes(), wantVolumes) {
		t.Fatalf("reopened volumes\n%+v\nwant\n%+v", g.Volumes(), wantVolumes)
	}
	if g.VidMark() != 1 {
		t.Fatalf("VidMark %d, want 1", g.VidMark())
	}
}

func TestFSMTransitions(t *testing.T) {
	f := openFSM(t, filepath.Join(t.TempDir(), "state.db"))
	defer f.Close()
	mustApply(t, f, Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 1, SizeLimit: 1000, State: writable,
		Replicas: []ReplicaRecord{{StoreID: "a"}, {StoreID: "b"}}}})
	mustApply(t, f, Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 2, SizeLimit: 1000, State: writable,
		Replicas: []ReplicaRecord{{StoreID: "a"}}}})

	// Below the limit: writable. At the limit: read-only "full".
	mustApply(t, f, report("a", VolumeReport{Vid: 1, State: writable, SizeBytes: 999}, VolumeReport{Vid: 2, State: writable}))
	if v, _ := f.Volume(1); v.State != writable {
		t.Fatalf("volume 1 below its limit: %v %q", v.State, v.Reason)
	}
	mustApply(t, f, report("a", VolumeReport{Vid: 1, State: writable, SizeBytes: 1000}, VolumeReport{Vid: 2, State: writable}))
	if v, _ := f.Volume(1); v.State != readOnly || v.Reason != "full" {
		t.Fatalf("volume 1 at its limit: %v %q", v.State, v.Reason)
	}
	// A replica reporting read-only makes the volume read-only.
	mustApply(t, f, report("a", VolumeReport{Vid: 1, State: readOnly}, VolumeReport{Vid: 2, State: readOnly, Reason: "disk error"}))
	if v, _ := f.Volume(2); v.State != readOnly || v.Reason != "store a: disk error" {
		t.Fatalf("volume 2: %v %q", v.State, v.Reason)
	}
	// A replica no longer reported is kept, marked missing.
	mustApply(t, f, report("a", VolumeReport{Vid: 2, State: readOnly}))
	v, _ := f.Volume(1)
	if i := v.replica("a"); i < 0 || v.Replicas[i].State != StateUnknown {
		t.Fatalf("volume 1 after store a dropped it: %+v", v.Replicas)
	}
	// Sealed once every replica is.
	mustApply(t, f, report("a", VolumeReport{Vid: 1, State: sealed}, VolumeReport{Vid: 2, State: readOnly}))
	if v, _ := f.Volume(1); v.State == sealed {
		t.Fatal("volume 1 sealed while replica b is not")
	}
	mustApply(t, f, report("b", VolumeReport{Vid: 1, State: sealed}))
	if v, _ := f.Volume(1); v.State != sealed {
		t.Fatalf("volume 1 with every replica sealed: %v", v.State)
	}
}

func TestFSMRejects(t *testing.T) {
	f := openFSM(t, filepath.Join(t.TempDir(), "state.db"))
	defer f.Close()
	mustApply(t, f, Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 1, State: writable}})
	for _, tc := range []struct {
		cmd  Command
		want error
	}{
		{Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 1}}, ErrVolumeExists},
		{Command{Type: CmdSetVolumeState, Vid: 2, State: readOnly}, ErrUnknownVolume},
		{Command{Type: CmdCreateVolume}, nil},
		{Command{Type: CmdStoreReport, Store: &StoreRecord{}}, nil},
		{Command{Type: "bogus"}, nil},
	} {
		err := f.Apply(tc.cmd)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("Apply(%+v) = %v, want %v", tc.cmd, err, tc.want)
		}
	}
	if len(f.Volumes()) != 1 || len(f.Stores()) != 0 {
		t.Fatalf("rejected commands changed the state: %+v %+v", f.Volumes(), f.Stores())
	}
}

func TestCommandEncoding(t *testing.T) {
	cmd := report("a", VolumeReport{Vid: 3, State: writable, SizeBytes: 1 << 40})
	b, err := EncodeCommand(cmd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, cmd) {
		t.Fatalf("round trip\n%+v\nwant\n%+v", got, cmd)
	}
	if _, err := DecodeCommand([]byte(`{"type":"reserve_keys","unknown":1}`)); err == nil {
		t.Fatal("a command with an unknown field decoded")
	}
}
