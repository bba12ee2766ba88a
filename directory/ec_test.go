package directory

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// The status page and its JSON show an EC volume's shards, their holders,
// the shards missing when holders die, and how many more losses it
// survives.
func TestStatusShowsECShards(t *testing.T) {
	fsm := OpenMemoryFSM()
	log := newLocalLog(fsm)
	// Leading for an hour: no grace period, a silent store is dead.
	log.since = time.Now().Add(-time.Hour)
	d, err := NewDirectory(Options{Secret: testSecret, Replication: 3, MinWritable: 1, MinStoreFreeBytes: 1, Logger: quietLogger(),
		HeartbeatInterval: time.Minute}, fsm, log, newMemStores())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	const vid = 7
	placement := map[string][]uint32{
		"s1": {0, 1, 2}, "s2": {3, 4, 5}, "s3": {6, 7, 8}, "s4": {9, 10, 11}, "s5": {13, 12, 13}, "s6": {},
	}
	rec := VolumeRecord{Vid: vid, State: StateEC}
	for id := range placement {
		rec.Replicas = append(rec.Replicas, ReplicaRecord{StoreID: id, VolumeReport: VolumeReport{Vid: vid, State: StateEC}})
	}
	if err := fsm.Apply(Command{Type: CmdCreateVolume, Volume: &rec}); err != nil {
		t.Fatal(err)
	}
	for id, shards := range placement {
		req := &directorypb.HeartbeatRequest{StoreId: id, GrpcAddr: id + ":7080", HttpAddr: id + ":7081", Rack: "r-" + id, FreeBytes: 1 << 40,
			Volumes: []*storepb.VolumeInfo{{Vid: vid, State: storepb.VolumeState_VOLUME_STATE_EC, SizeBytes: 1 << 20, NeedleCount: 40, EcShardIds: shards}}}
		if _, err := d.Heartbeat(ctx, heartbeatFromPB(req)); err != nil {
			t.Fatal(err)
		}
	}
	ecOf := func() *ECShardStatus {
		t.Helper()
		for _, v := range d.Status().Volumes {
			if v.Vid == vid {
				if v.EC == nil {
					t.Fatalf("volume %d (%s) has no EC status", vid, v.State)
				}
				return v.EC
			}
		}
		t.Fatalf("volume %d not in the status", vid)
		return nil
	}
	kill := func(id string) {
		d.live.Lock()
		d.live.stores[id].seen = log.since.Add(time.Second)
		d.live.Unlock()
	}

	ec := ecOf()
	if ec.Health != "ok" || len(ec.Missing) != 0 || ec.SurvivesShards != 4 || ec.SurvivesStores != 1 {
		t.Fatalf("all alive: %+v", ec)
	}
	if len(ec.Holders) != 6 {
		t.Fatalf("holders %+v, want 6", ec.Holders)
	}
	for _, h := range ec.Holders {
		want := slices.Compact(slices.Sorted(slices.Values(placement[h.StoreID])))
		if h.State != "alive" || !slices.Equal(h.Shards, want) || h.Rack != "r-"+h.StoreID {
			t.Fatalf("holder %+v, want alive with shards %v", h, want)
		}
	}
	// The follower's view (committed records) shows the same placement.
	if got, _ := fsm.Volume(vid); !slices.Equal(got.Replicas[got.replica("s2")].EcShards, []uint32{3, 4, 5}) {
		t.Fatalf("committed report of s2: %+v", got.Replicas[got.replica("s2")])
	}

	kill("s5")
	ec = ecOf()
	if ec.Health != "degraded" || !slices.Equal(ec.Missing, []uint32{12, 13}) || ec.SurvivesShards != 2 || ec.SurvivesStores != 0 {
		t.Fatalf("s5 dead: %+v", ec)
	}
	var page bytes.Buffer
	if err := statusTemplate.Execute(&page, d.Status()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Erasure-coded volumes (1)", `<td class="degraded">degraded</td>`, "<td>12, 13</td>",
		"2 more shard(s), any 0 more store(s)", `s3</span> <span class="muted">(r-s3)</span>: 6 7 8`, "s6", "index only",
		`<span class="dead">s5</span>`} {
		if !strings.Contains(page.String(), want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	js, err := json.Marshal(d.Status())
	if err != nil {
		t.Fatal(err)
	}
	if want := `"missing":[12,13],"health":"degraded","survives_shards":2,"survives_stores":0`; !strings.Contains(string(js), want) {
		t.Errorf("status JSON lacks %s:\n%s", want, js)
	}

	kill("s1")
	kill("s2")
	ec = ecOf()
	if ec.Health != "unrecoverable" || len(ec.Missing) != 8 || ec.SurvivesShards != 0 || ec.SurvivesStores != 0 {
		t.Fatalf("s1, s2, s5 dead: %+v", ec)
	}
	page.Reset()
	if err := statusTemplate.Execute(&page, d.Status()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page.String(), "more than 4 shards missing") {
		t.Error("the status page does not say the volume is unrecoverable")
	}
}

// A plain volume has no EC section, and the page lists no EC volume.
func TestStatusPlainVolumeHasNoEC(t *testing.T) {
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
	if _, err := d.Assign(ctx, 1); err != nil {
		t.Fatal(err)
	}
	st := d.Status()
	if len(st.Volumes) == 0 {
		t.Fatal("no volume")
	}
	for _, v := range st.Volumes {
		if v.EC != nil {
			t.Fatalf("plain volume %d has an EC status %+v", v.Vid, v.EC)
		}
	}
	var page bytes.Buffer
	if err := statusTemplate.Execute(&page, st); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(page.String(), "Erasure-coded") {
		t.Error("the page lists EC volumes for a plain cluster")
	}
}

func TestECShardIDs(t *testing.T) {
	for _, c := range []struct{ in, want []uint32 }{
		{nil, nil},
		{[]uint32{}, nil},
		{[]uint32{13, 0, 13, 14, 99, 5}, []uint32{0, 5, 13}},
	} {
		if got := ecShardIDs(c.in); !slices.Equal(got, c.want) || (c.want == nil) != (got == nil) {
			t.Errorf("ecShardIDs(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if got := fmt.Sprint(survivableLosses([]int{3, 3, 3, 3, 2}, 4)); got != "1" {
		t.Errorf("survivableLosses = %s, want 1", got)
	}
	if got := survivableLosses([]int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 4); got != 4 {
		t.Errorf("one shard per store: survives %d stores, want 4", got)
	}
}

// A holder that stops reporting an EC volume gave it up and leaves its
// holders; a plain replica that stops reporting is kept, marked missing;
// once the holders left all report the decoded volume sealed, the volume
// is sealed again.
func TestFSMDropsECHolderThatGaveUp(t *testing.T) {
	f := OpenMemoryFSM()
	mustApply(t, f, Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 3, State: StateEC,
		Replicas: []ReplicaRecord{{StoreID: "a"}, {StoreID: "b"}, {StoreID: "c"}}}})
	mustApply(t, f, Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 4, State: sealed,
		Replicas: []ReplicaRecord{{StoreID: "c"}}}})
	ec := func(shards ...uint32) VolumeReport { return VolumeReport{Vid: 3, State: StateEC, EcShards: shards} }
	mustApply(t, f, report("a", ec(0, 1, 2, 3, 4)))
	mustApply(t, f, report("b", ec(5, 6, 7, 8, 9)))
	mustApply(t, f, report("c", ec(10, 11, 12, 13), VolumeReport{Vid: 4, State: sealed}))
	if v, _ := f.Volume(3); v.State != StateEC || len(v.Replicas) != 3 {
		t.Fatalf("encoded volume %+v", v)
	}
	// a decodes: it reports the volume sealed; c gives both volumes up.
	mustApply(t, f, report("a", VolumeReport{Vid: 3, State: sealed}))
	mustApply(t, f, report("c"))
	v, _ := f.Volume(3)
	if v.State != StateEC || len(v.Replicas) != 2 || v.replica("c") >= 0 {
		t.Fatalf("after c gave up the EC volume: %+v", v)
	}
	if v4, _ := f.Volume(4); len(v4.Replicas) != 1 || v4.Replicas[0].State != StateUnknown {
		t.Fatalf("plain volume missing from c's report: %+v", v4)
	}
	mustApply(t, f, report("b"))
	if v, _ = f.Volume(3); v.State != sealed || len(v.Replicas) != 1 || v.Replicas[0].StoreID != "a" {
		t.Fatalf("after every holder gave up the EC volume: %+v", v)
	}
}
