package directory

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
)

// writeSingleNodeState writes the state file of a single-node directory
// that handed out keys up to 5000 and holds volume 7.
func writeSingleNodeState(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), StateFile)
	f, err := OpenFSM(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []Command{
		{Type: CmdReserveKeys, HighWater: 5000},
		{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 7, SizeLimit: 1 << 20, Allocating: true,
			Replicas: []ReplicaRecord{{StoreID: "s1"}, {StoreID: "s2"}}}},
		{Type: CmdSetVolumeState, Vid: 7, State: StateWritable},
	} {
		if err := f.Apply(cmd); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// A cluster seeded from a single-node directory's state starts with its
// key mark and volumes, and a node added later receives them.
func TestSeedClusterFromSingleNode(t *testing.T) {
	seed, err := LoadSeed(writeSingleNodeState(t))
	if err != nil {
		t.Fatal(err)
	}
	if seed.HighWater != 5000 || len(seed.Volumes) != 1 || seed.Volumes[0].Vid != 7 {
		t.Fatalf("seed %+v", seed)
	}
	a1, t1 := raft.NewInmemTransport("127.0.0.1:17011")
	a2, t2 := raft.NewInmemTransport("127.0.0.1:17012")
	t1.Connect(a2, t2)
	t2.Connect(a1, t1)
	ro := func(id string, trans raft.Transport, boot []Peer, seed *SeedState) *RaftOptions {
		return &RaftOptions{ID: id, Transport: trans, InMemory: true, Bootstrap: boot, Seed: seed}
	}
	d1 := startDirectory(t, Options{Raft: ro("d1", t1, []Peer{{ID: "d1", Addr: string(a1)}}, seed)})
	// d2 is given the seed too: its state is not empty once it joins, so
	// it never applies it.
	d2 := startDirectory(t, Options{Raft: ro("d2", t2, nil, seed)})
	waitFor(t, "d1 leads the seeded state", func() error {
		if e, _ := d1.Raft().Leadership(); e == 0 {
			return ErrNotLeader
		}
		if d1.FSM().HighWater() != 5000 {
			return errors.New("not seeded yet")
		}
		return nil
	})
	if v, ok := d1.FSM().Volume(7); !ok || v.State != StateWritable || len(v.Replicas) != 2 {
		t.Fatalf("volume 7 after the seed: %+v %v", v, ok)
	}
	if got := d1.FSM().VidMark(); got != 7 {
		t.Errorf("vid mark %d, want 7", got)
	}
	// Keys handed out by the cluster start above the single node's mark.
	if first, err := d1.Directory().seq.next(t.Context(), 1); err != nil || first <= 5000 {
		t.Errorf("first key of the seeded cluster: %d %v, want above 5000", first, err)
	}
	if err := d1.Raft().AddVoter("d2", string(a2)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "d2 catches up", func() error {
		if _, ok := d2.FSM().Volume(7); !ok || d2.FSM().HighWater() < 5000 {
			return errors.New("not yet")
		}
		return nil
	})
}

// A seed never overwrites a state that holds something.
func TestSeedRefusedOnNonEmptyState(t *testing.T) {
	f := OpenMemoryFSM()
	if err := f.Apply(Command{Type: CmdReserveKeys, HighWater: 10}); err != nil {
		t.Fatal(err)
	}
	err := f.Apply(Command{Type: CmdSeed, Seed: &SeedState{HighWater: 5}})
	if !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("seed of a non-empty state: %v, want ErrNotEmpty", err)
	}
	if f.HighWater() != 10 {
		t.Fatalf("high water %d after a refused seed", f.HighWater())
	}
	if _, err := LoadSeed(filepath.Join(t.TempDir(), "missing.db")); err == nil {
		t.Error("LoadSeed of a missing file succeeded")
	}
}
