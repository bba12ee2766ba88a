package directory

import (
	"bytes"
	"context"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// A store reporting vid 4294967295 (never handed out) is flagged, not
// adopted, and uploads go on with the next vid.
func TestImplausibleVidNotAdopted(t *testing.T) {
	stores := newMemStores("s1")
	fsm := OpenMemoryFSM()
	d, err := NewDirectory(Options{Secret: testSecret, Replication: 1, MinWritable: 1, MinStoreFreeBytes: 1, Logger: quietLogger(),
		HeartbeatInterval: time.Minute}, fsm, newLocalLog(fsm), stores)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	if _, err := d.Heartbeat(ctx, stores.heartbeat("s1")); err != nil {
		t.Fatal(err)
	}
	a, err := d.Assign(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	hb := stores.heartbeat("s1")
	hb.Volumes = append(hb.Volumes, VolumeReport{Vid: math.MaxUint32, State: StateWritable, SizeLimit: 1 << 30})
	if _, err := d.Heartbeat(ctx, hb); err != nil {
		t.Fatal(err)
	}
	if _, ok := fsm.Volume(math.MaxUint32); ok {
		t.Fatal("vid 4294967295 adopted")
	}
	if st, _ := fsm.Store("s1"); !slices.Equal(st.Suspect, []uint32{math.MaxUint32}) {
		t.Fatalf("store record %+v does not flag the vid", st)
	}
	// The mark follows only the directory's own allocations (Assign may
	// allocate more volumes in the background, so it can be past a.Vid).
	mark := fsm.VidMark()
	if mark < a.Vid || mark > a.Vid+8 {
		t.Fatalf("vid mark %d moved by a report (the directory allocated from %d)", mark, a.Vid)
	}
	// Uploads go on, and a new volume gets a later vid, not a wrapped one.
	if err := d.allocateVolume(ctx); err != nil {
		t.Fatal(err)
	}
	if next := fsm.VidMark(); next <= mark || next > mark+8 {
		t.Fatalf("new vid mark %d after %d", next, mark)
	}
	if _, err := d.Assign(ctx, 1); err != nil {
		t.Fatalf("Assign after the report: %v", err)
	}
	var page bytes.Buffer
	if err := statusTemplate.Execute(&page, d.Status()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page.String(), "suspect: 4294967295") {
		t.Fatal("the status page does not flag the suspect vid")
	}
}

// At the top of the vid space, allocation fails rather than wrapping.
func TestVidsNeverWrap(t *testing.T) {
	fsm := OpenMemoryFSM()
	if err := fsm.Apply(Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: math.MaxUint32, State: StateReadOnly}}); err != nil {
		t.Fatal(err)
	}
	if vid, ok := fsm.NextVid(); ok {
		t.Fatalf("NextVid = %d at the top of the vid space", vid)
	}
}

// A removed store is forgotten: its record goes and it leaves the replica
// lists.
func TestRemoveStore(t *testing.T) {
	stores := newMemStores("s1", "s2")
	fsm := OpenMemoryFSM()
	d, err := NewDirectory(Options{Secret: testSecret, Replication: 2, MinWritable: 1, MinStoreFreeBytes: 1, Logger: quietLogger(),
		HeartbeatInterval: time.Minute}, fsm, newLocalLog(fsm), stores)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	for _, id := range []string{"s1", "s2"} {
		if _, err := d.Heartbeat(ctx, stores.heartbeat(id)); err != nil {
			t.Fatal(err)
		}
	}
	a, err := d.Assign(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveStore(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	if _, ok := fsm.Store("s2"); ok {
		t.Fatal("removed store still recorded")
	}
	v, _ := fsm.Volume(a.Vid)
	if len(v.Replicas) != 1 || v.Replicas[0].StoreID != "s1" {
		t.Fatalf("replicas after removal: %+v", v.Replicas)
	}
	if err := d.RemoveStore(ctx, "s2"); err == nil {
		t.Fatal("removing an unknown store succeeded")
	}
	if st, _, _ := d.Lookup(a.Vid); st != StateReadOnly {
		t.Fatalf("under-replicated volume is %v", st)
	}
}
