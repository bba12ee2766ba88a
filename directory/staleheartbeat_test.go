package directory

import (
	"context"
	"testing"
	"time"
)

// ageAllocations moves the allocations this node recorded an hour back, as
// if the reports that follow landed long after them (a loaded store or
// network), well past any protection window.
func ageAllocations(d *Directory) {
	d.live.Lock()
	defer d.live.Unlock()
	for _, ls := range d.live.stores {
		for vid, m := range ls.allocated {
			m.at = m.at.Add(-time.Hour)
			ls.allocated[vid] = m
		}
	}
}

func lookupState(t *testing.T, d *Directory, vid uint32) VolumeState {
	t.Helper()
	st, _, err := d.Lookup(vid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A report a store built before a volume was allocated on it, landing
// after the allocation however late, leaves the new volume writable, live
// and in the committed record; a report built after the allocation is
// the truth about it again, a lost volume included.
func TestReportBuiltBeforeAllocationDoesNotHideVolume(t *testing.T) {
	stores := newMemStores("s1", "s2", "s3")
	fsm := OpenMemoryFSM()
	d, err := NewDirectory(Options{Secret: testSecret, Replication: 3, MinWritable: 1, MinStoreFreeBytes: 1, Logger: quietLogger(),
		HeartbeatInterval: time.Minute}, fsm, newLocalLog(fsm), stores)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	ids := []string{"s1", "s2", "s3"}
	beat := func(hb Heartbeat) {
		t.Helper()
		if _, err := d.Heartbeat(ctx, hb); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		beat(stores.heartbeat(id))
	}
	// Reports built now, before the allocation, delivered after it.
	stale := map[string]Heartbeat{}
	for _, id := range ids {
		stale[id] = stores.heartbeat(id)
	}
	if err := d.allocateVolume(ctx); err != nil {
		t.Fatal(err)
	}
	vid := fsm.VidMark()
	if got := lookupState(t, d, vid); got != StateWritable {
		t.Fatalf("new volume %d is %v", vid, got)
	}
	ageAllocations(d)
	for _, id := range ids {
		beat(stale[id])
	}
	if got := lookupState(t, d, vid); got != StateWritable {
		t.Fatalf("after reports built before the allocation, volume %d is %v, want writable", vid, got)
	}
	v, _ := fsm.Volume(vid)
	for _, r := range v.Replicas {
		if r.State != StateWritable {
			t.Fatalf("committed replica on %s is %v (%q), want writable", r.StoreID, r.State, r.Reason)
		}
	}
	if v.State != StateWritable {
		t.Fatalf("committed volume is %v (%q)", v.State, v.Reason)
	}

	// Reports built after the allocation list it; one of an earlier
	// stream landing after them still cannot hide it.
	for _, id := range ids {
		beat(stores.heartbeat(id))
	}
	beat(stale["s2"])
	if got := lookupState(t, d, vid); got != StateWritable {
		t.Fatalf("after a late report of an earlier stream, volume %d is %v, want writable", vid, got)
	}

	// A store that lost the volume says so in a report built after the
	// allocation, and that counts.
	stores.mu.Lock()
	delete(stores.vols["s3"], vid)
	stores.mu.Unlock()
	beat(stores.heartbeat("s3"))
	if got := lookupState(t, d, vid); got != StateReadOnly {
		t.Fatalf("volume %d missing from s3's report is %v, want read-only", vid, got)
	}
}

// A store without a report clock keeps the time-based rule: within two
// heartbeat intervals of the allocation its reports do not hide the
// volume; after them they are taken as they are.
func TestUnstampedReportsFallBackToTheWindow(t *testing.T) {
	stores := newMemStores("s1")
	fsm := OpenMemoryFSM()
	d, err := NewDirectory(Options{Secret: testSecret, Replication: 1, MinWritable: 1, MinStoreFreeBytes: 1, Logger: quietLogger(),
		HeartbeatInterval: time.Minute}, fsm, newLocalLog(fsm), stores)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	unstamped := func() Heartbeat {
		hb := stores.heartbeat("s1")
		hb.Built = 0
		return hb
	}
	if _, err := d.Heartbeat(ctx, unstamped()); err != nil {
		t.Fatal(err)
	}
	stale := unstamped()
	if err := d.allocateVolume(ctx); err != nil {
		t.Fatal(err)
	}
	vid := fsm.VidMark()
	if _, err := d.Heartbeat(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if got := lookupState(t, d, vid); got != StateWritable {
		t.Fatalf("within the window, volume %d is %v, want writable", vid, got)
	}
	ageAllocations(d)
	if _, err := d.Heartbeat(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if got := lookupState(t, d, vid); got != StateReadOnly {
		t.Fatalf("past the window, an unstamped report without volume %d leaves it %v, want read-only", vid, got)
	}
}
