package directory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// switchLog is a single-node log whose leadership a test turns off and
// on again; each leadership gets a new epoch.
type switchLog struct {
	*localLog
	follower atomic.Bool
	epoch    atomic.Uint64
}

// lead makes the node lead again, in a new epoch.
func (l *switchLog) lead() {
	l.epoch.Add(1)
	l.follower.Store(false)
}

func (l *switchLog) Apply(ctx context.Context, cmd Command) error {
	if l.follower.Load() {
		return l.NotLeader()
	}
	return l.localLog.Apply(ctx, cmd)
}

func (l *switchLog) Leadership() (uint64, time.Time) {
	if l.follower.Load() {
		return 0, time.Time{}
	}
	_, since := l.localLog.Leadership()
	return l.epoch.Load(), since
}

func (l *switchLog) NotLeader() error { return &NotLeaderError{Leader: "elsewhere:7070"} }

// ecFakes are stores held in memory, implementing StoreAPI and ECStoreAPI
// as the real stores behave: MarkReadOnly stops writes, Compact seals a
// read-only volume, EcEncode turns a sealed one into EC with 14 shards,
// EcShardMount copies shards from an EC source (replacing a read-only
// plain copy), EcShardDelete removes shards.
type ecFakes struct {
	mu    sync.Mutex
	vols  map[string]map[uint32]*VolumeReport
	calls []string
	// fail makes the next call named "<method> <store>" fail.
	fail map[string]error
	// block, when set, makes Compact (or the method blockOn names) wait
	// for it to close, after signalling compacting.
	block      chan struct{}
	compacting chan struct{}
	blockOn    string
	// free overrides a store's reported free space (default 1 TiB).
	free map[string]uint64
}

func newECFakes(stores ...string) *ecFakes {
	f := &ecFakes{vols: map[string]map[uint32]*VolumeReport{}, fail: map[string]error{}}
	for _, s := range stores {
		f.vols[s] = map[uint32]*VolumeReport{}
	}
	return f
}

// call records a call and returns its injected failure.
func (f *ecFakes) call(method, store string, vid uint32) error {
	f.calls = append(f.calls, fmt.Sprintf("%s %s %d", method, store, vid))
	if err, ok := f.fail[method+" "+store]; ok {
		delete(f.fail, method+" "+store)
		return err
	}
	return nil
}

// count returns how many calls of method were made.
func (f *ecFakes) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if strings.HasPrefix(c, method+" ") {
			n++
		}
	}
	return n
}

func (f *ecFakes) get(store string, vid uint32) (*VolumeReport, error) {
	v, ok := f.vols[store][vid]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no volume %d", ErrNotOnStore, store, vid)
	}
	return v, nil
}

// report returns a copy of store's report of vid.
func (f *ecFakes) report(store string, vid uint32) (VolumeReport, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[store][vid]
	if !ok {
		return VolumeReport{}, false
	}
	r := *v
	r.EcShards = slices.Clone(v.EcShards)
	return r, true
}

func (f *ecFakes) set(store string, vid uint32, fn func(*VolumeReport)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.vols[store][vid])
}

func (f *ecFakes) AllocateVolume(context.Context, StoreRecord, uint32, uint64, []byte) (Allocated, error) {
	return Allocated{}, errors.New("the EC fakes allocate nothing")
}

func (f *ecFakes) MarkReadOnly(_ context.Context, st StoreRecord, vid uint32, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("markreadonly", st.ID, vid); err != nil {
		return err
	}
	v, err := f.get(st.ID, vid)
	if err != nil {
		return err
	}
	if v.State == StateWritable {
		v.State, v.Reason = StateReadOnly, "operator: "+reason
	}
	return nil
}

func (f *ecFakes) VolumeStatus(_ context.Context, st StoreRecord, vid uint32) (VolumeReport, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("status", st.ID, vid); err != nil {
		return VolumeReport{}, err
	}
	v, err := f.get(st.ID, vid)
	if err != nil {
		return VolumeReport{}, err
	}
	r := *v
	r.EcShards = slices.Clone(v.EcShards)
	return r, nil
}

// wait blocks a call of method while f.block is set for it.
func (f *ecFakes) wait(ctx context.Context, method string) error {
	f.mu.Lock()
	block, compacting, on := f.block, f.compacting, f.blockOn
	f.mu.Unlock()
	if block == nil || method != cmp.Or(on, "compact") {
		return nil
	}
	compacting <- struct{}{}
	select {
	case <-block:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *ecFakes) Compact(ctx context.Context, st StoreRecord, vid uint32) (VolumeReport, error) {
	if err := f.wait(ctx, "compact"); err != nil {
		return VolumeReport{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("compact", st.ID, vid); err != nil {
		return VolumeReport{}, err
	}
	v, err := f.get(st.ID, vid)
	if err != nil {
		return VolumeReport{}, err
	}
	if v.State == StateReadOnly {
		v.State, v.Reason, v.DeletedBytes = StateSealed, "sealed", 0
	}
	return *v, nil
}

func (f *ecFakes) ECEncode(_ context.Context, st StoreRecord, vid uint32, _, _ uint64) (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("encode", st.ID, vid); err != nil {
		return 0, err
	}
	v, err := f.get(st.ID, vid)
	if err != nil {
		return 0, err
	}
	if v.State != StateSealed {
		return 0, fmt.Errorf("volume %d is %s on %s, not sealed", vid, v.State, st.ID)
	}
	v.State, v.EcShards = StateEC, allShards()
	return 40, nil
}

func (f *ecFakes) ECShardMount(ctx context.Context, st StoreRecord, vid uint32, shards []uint32, source StoreRecord) (VolumeReport, error) {
	if err := f.wait(ctx, "mount"); err != nil {
		return VolumeReport{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("mount", st.ID, vid); err != nil {
		return VolumeReport{}, err
	}
	src, err := f.get(source.ID, vid)
	if err != nil || src.State != StateEC {
		return VolumeReport{}, fmt.Errorf("source %s holds no EC volume %d", source.ID, vid)
	}
	for _, s := range shards {
		if !slices.Contains(src.EcShards, s) {
			return VolumeReport{}, fmt.Errorf("source %s lacks shard %d", source.ID, s)
		}
	}
	v, ok := f.vols[st.ID][vid]
	switch {
	case !ok:
		v = &VolumeReport{Vid: vid, State: StateEC, SizeBytes: src.SizeBytes, SizeLimit: src.SizeLimit}
		f.vols[st.ID][vid] = v
	case v.State == StateWritable:
		return VolumeReport{}, fmt.Errorf("volume %d is writable on %s", vid, st.ID)
	case v.State != StateEC:
		v.State, v.LastAppendUnixNano = StateEC, 0
	}
	v.EcShards = append(v.EcShards, shards...)
	slices.Sort(v.EcShards)
	v.EcShards = slices.Compact(v.EcShards)
	return *v, nil
}

func (f *ecFakes) ECIndexSync(_ context.Context, st StoreRecord, vid uint32) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("sync", st.ID, vid); err != nil {
		return 0, err
	}
	if _, err := f.get(st.ID, vid); err != nil {
		return 0, err
	}
	return 0, nil
}

func (f *ecFakes) ECShardDelete(_ context.Context, st StoreRecord, vid uint32, shards []uint32) (VolumeReport, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("drop", st.ID, vid); err != nil {
		return VolumeReport{}, err
	}
	v, err := f.get(st.ID, vid)
	if err != nil {
		return VolumeReport{}, err
	}
	v.EcShards = slices.DeleteFunc(v.EcShards, func(s uint32) bool { return slices.Contains(shards, s) })
	return *v, nil
}

// counterValue returns the count of finished EC jobs of trigger and
// result.
func counterValue(t *testing.T, d *Directory, trigger, result string) float64 {
	t.Helper()
	var m dto.Metric
	if err := d.metrics.ecJobs.WithLabelValues(trigger, result).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// ecTest is a directory over the EC fakes, with a fake clock and a
// switchable leadership. Its policy loop never ticks: tests run passes.
type ecTest struct {
	t     *testing.T
	d     *Directory
	f     *ecFakes
	log   *switchLog
	clock *fakeClock
}

// The test policy: a volume of 1000 bytes is encoded once at least 900
// bytes full and quiet for an hour.
const (
	ecTestLimit = 1000
	ecTestAfter = time.Hour
	ecTestRetry = time.Minute
)

func newECTest(t *testing.T, stores ...string) *ecTest {
	t.Helper()
	fsm := OpenMemoryFSM()
	lg := &switchLog{localLog: newLocalLog(fsm)}
	lg.epoch.Store(1)
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	f := newECFakes(stores...)
	d, err := NewDirectory(Options{Secret: testSecret, HeartbeatInterval: time.Minute, VolumeSizeLimit: ecTestLimit,
		ECAfter: ecTestAfter, ECFullPercent: 90, ECRetry: ecTestRetry, ECCheckInterval: 1000 * time.Hour,
		Clock: clock.now, Logger: quietLogger()}, fsm, lg, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	// The fake stores report only when a test says so.
	d.ecAwait = 0
	return &ecTest{t: t, d: d, f: f, log: lg, clock: clock}
}

// addVolume records writable volume vid on stores, size bytes full and
// last appended at last.
func (e *ecTest) addVolume(vid uint32, size uint64, last time.Time, stores ...string) {
	e.t.Helper()
	rec := &VolumeRecord{Vid: vid, State: StateWritable, SizeLimit: ecTestLimit}
	for _, s := range stores {
		rec.Replicas = append(rec.Replicas, ReplicaRecord{StoreID: s})
		e.f.mu.Lock()
		e.f.vols[s][vid] = &VolumeReport{Vid: vid, State: StateWritable, SizeBytes: size, SizeLimit: ecTestLimit, LastAppendUnixNano: last.UnixNano()}
		e.f.mu.Unlock()
	}
	if err := e.d.fsm.Apply(Command{Type: CmdCreateVolume, Volume: rec}); err != nil {
		e.t.Fatal(err)
	}
}

// beat sends every fake store's heartbeat.
func (e *ecTest) beat() {
	e.t.Helper()
	e.f.mu.Lock()
	var hbs []Heartbeat
	for _, id := range slices.Sorted(maps.Keys(e.f.vols)) {
		hb := Heartbeat{StoreID: id, GRPCAddr: id + ":7000", HTTPAddr: id + ":8000", Rack: "rack-" + id, FreeBytes: 1 << 40}
		if free, ok := e.f.free[id]; ok {
			hb.FreeBytes = free
		}
		for _, vid := range slices.Sorted(maps.Keys(e.f.vols[id])) {
			r := *e.f.vols[id][vid]
			r.EcShards = slices.Clone(r.EcShards)
			hb.Volumes = append(hb.Volumes, r)
		}
		hbs = append(hbs, hb)
	}
	e.f.mu.Unlock()
	for _, hb := range hbs {
		if _, err := e.d.Heartbeat(context.Background(), hb); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *ecTest) state(vid uint32) VolumeState {
	v, ok := e.d.fsm.Volume(vid)
	if !ok {
		e.t.Fatalf("volume %d unknown", vid)
	}
	return v.State
}

// readable fails the test unless every replica of vid still holds it,
// plain or EC, and the shards of the EC holders cover all 14 when the
// plain copies are gone.
func (e *ecTest) readable(vid uint32, stores ...string) {
	e.t.Helper()
	plain := 0
	covered := map[uint32]bool{}
	for _, s := range stores {
		r, ok := e.f.report(s, vid)
		if !ok {
			e.t.Fatalf("store %s lost volume %d", s, vid)
		}
		switch r.State {
		case StateEC:
			for _, sh := range r.EcShards {
				covered[sh] = true
			}
		default:
			plain++
		}
	}
	if plain == 0 && len(covered) != ecShards {
		e.t.Fatalf("volume %d: no plain copy and %d shards", vid, len(covered))
	}
}

func TestECPolicyPicksQuietFullVolumes(t *testing.T) {
	e := newECTest(t, "s1", "s2")
	start := e.clock.now()
	e.addVolume(1, 950, start, "s1", "s2") // full
	e.addVolume(2, 500, start, "s1", "s2") // half full
	e.addVolume(3, 950, start.Add(30*time.Minute), "s1", "s2")
	e.addVolume(4, 990, start, "s1", "s2")
	e.f.set("s2", 4, func(r *VolumeReport) { r.LastAppendUnixNano = 0 }) // quietness unknown
	e.beat()
	if got := e.d.ecCandidates(e.clock.now()); len(got) != 0 {
		t.Fatalf("candidates before any quiet period: %v", got)
	}
	e.clock.advance(ecTestAfter)
	if got := e.d.ecCandidates(e.clock.now()); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("candidates after an hour: %v, want [1]", got)
	}
	e.clock.advance(30 * time.Minute)
	if got := e.d.ecCandidates(e.clock.now()); !slices.Equal(got, []uint32{1, 3}) {
		t.Fatalf("candidates after 90 minutes: %v, want [1 3]", got)
	}
	// Volume 1 is written to again (on one replica): it is left alone
	// for another quiet period.
	e.f.set("s1", 1, func(r *VolumeReport) { r.LastAppendUnixNano = e.clock.now().UnixNano() })
	e.beat()
	if got := e.d.ecCandidates(e.clock.now()); !slices.Equal(got, []uint32{3}) {
		t.Fatalf("candidates after volume 1 was written: %v, want [3]", got)
	}
	// A store that stops reporting takes its volumes out.
	e.d.live.Lock()
	delete(e.d.live.stores, "s2")
	e.d.live.Unlock()
	if got := e.d.ecCandidates(e.clock.now()); len(got) != 0 {
		t.Fatalf("candidates with s2 silent: %v", got)
	}
	if n := len(e.f.calls); n != 0 {
		t.Fatalf("choosing called the stores: %v", e.f.calls)
	}
}

func TestECPolicyEncodesOnce(t *testing.T) {
	stores := []string{"s1", "s2", "s3", "s4", "s5"}
	e := newECTest(t, stores...)
	e.addVolume(7, 950, e.clock.now(), "s1", "s2")
	e.f.set("s2", 7, func(r *VolumeReport) { r.DeletedBytes = 100 })
	e.beat()
	e.clock.advance(2 * ecTestAfter)
	vid, err := e.d.ecPolicyPass(context.Background())
	if vid != 7 || err != nil {
		t.Fatalf("policy pass: vid %d, %v", vid, err)
	}
	if st := e.state(7); st != StateEC {
		t.Fatalf("volume 7 is %s after the job", st)
	}
	// Both replicas were frozen and compacted, one encoded, 4 stores got
	// shards, the encoder dropped what it gave away.
	for method, want := range map[string]int{"markreadonly": 2, "compact": 2, "encode": 1, "mount": 4, "drop": 1} {
		if got := e.f.count(method); got != want {
			t.Errorf("%d %s calls, want %d (%v)", got, method, want, e.f.calls)
		}
	}
	covered := map[uint32]int{}
	for _, s := range stores {
		r, ok := e.f.report(s, 7)
		if !ok || r.State != StateEC || len(r.EcShards) < 2 || len(r.EcShards) > 3 {
			t.Fatalf("store %s holds %+v (%t)", s, r, ok)
		}
		for _, sh := range r.EcShards {
			covered[sh]++
		}
	}
	if len(covered) != ecShards || slices.ContainsFunc(slices.Collect(maps.Values(covered)), func(n int) bool { return n != 1 }) {
		t.Fatalf("shards held: %v", covered)
	}
	// The heartbeats bring the new holders into the record; the volume
	// is never picked again.
	e.beat()
	calls := len(e.f.calls)
	e.clock.advance(10 * ecTestAfter)
	if vid, err := e.d.ecPolicyPass(context.Background()); vid != 0 || err != nil {
		t.Fatalf("second pass: vid %d, %v", vid, err)
	}
	if len(e.f.calls) != calls {
		t.Fatalf("the second pass called the stores: %v", e.f.calls[calls:])
	}
	st := e.d.ECStatus()
	if len(st.Recent) != 1 || st.Recent[0].Result != "ok" || st.Recent[0].Vid != 7 || st.Running != nil {
		t.Fatalf("status %+v", st)
	}
	if n := counterValue(t, e.d, ECTriggerPolicy, "ok"); n != 1 {
		t.Fatalf("ec jobs metric %v", n)
	}
	if v, _ := e.d.fsm.Volume(7); len(v.Replicas) != len(stores) {
		t.Fatalf("record holders %+v", v.Replicas)
	}
	var page strings.Builder
	if err := statusTemplate.Execute(&page, e.d.Status()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page.String(), "Erasure-coding jobs") || !strings.Contains(page.String(), "quiet for 1h0m0s") ||
		!strings.Contains(page.String(), "<td>policy</td><td class=\"ok\">ok</td>") {
		t.Fatalf("the status page does not show the job:\n%s", page.String())
	}
}

func TestECPolicyOnlyOnLeader(t *testing.T) {
	e := newECTest(t, "s1")
	e.addVolume(3, 999, e.clock.now(), "s1")
	e.beat()
	e.clock.advance(2 * ecTestAfter)
	e.log.follower.Store(true)
	if got := e.d.ecCandidates(e.clock.now()); len(got) != 0 {
		t.Fatalf("a follower has candidates %v", got)
	}
	if vid, err := e.d.ecPolicyPass(context.Background()); vid != 0 || err != nil {
		t.Fatalf("a follower's pass: %d %v", vid, err)
	}
	if _, err := e.d.EncodeEC(context.Background(), 3, ECEncodeOptions{Freeze: true}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("EncodeEC on a follower: %v", err)
	}
	if len(e.f.calls) != 0 || e.state(3) != StateWritable {
		t.Fatalf("a follower acted: %v, volume %s", e.f.calls, e.state(3))
	}
	// Leading again, the volume qualifies.
	e.log.lead()
	if got := e.d.ecCandidates(e.clock.now()); !slices.Equal(got, []uint32{3}) {
		t.Fatalf("the leader's candidates %v", got)
	}
}

func TestECPolicyRetriesFailedStep(t *testing.T) {
	stores := []string{"s1", "s2", "s3"}
	e := newECTest(t, stores...)
	e.addVolume(5, 950, e.clock.now(), "s1", "s2", "s3")
	e.beat()
	e.clock.advance(2 * ecTestAfter)
	ctx := context.Background()

	// The compaction of one replica fails: the volume stays plain and
	// readable everywhere, frozen.
	e.f.fail["compact s3"] = errors.New("disk busy")
	if vid, err := e.d.ecPolicyPass(ctx); vid != 5 || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("pass with a failing compaction: %d %v", vid, err)
	}
	e.readable(5, stores...)
	if st := e.state(5); st != StateReadOnly {
		t.Fatalf("volume 5 is %s after a failed compaction", st)
	}
	if e.f.count("encode") != 0 {
		t.Fatal("encoded before every replica was sealed")
	}
	st := e.d.ECStatus()
	if len(st.Backoff) != 1 || st.Backoff[0].Vid != 5 || st.Backoff[0].Failures != 1 || !st.Backoff[0].NextTry.Equal(e.clock.now().Add(ecTestRetry)) {
		t.Fatalf("backoff %+v", st.Backoff)
	}
	// Not retried before the backoff ends.
	e.beat()
	if vid, _ := e.d.ecPolicyPass(ctx); vid != 0 {
		t.Fatalf("retried at once: %d", vid)
	}

	// The second try gets past the encode, and a shard copy fails.
	e.clock.advance(ecTestRetry)
	e.f.fail["mount s3"] = errors.New("connection reset")
	if vid, err := e.d.ecPolicyPass(ctx); vid != 5 || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("pass with a failing placement: %d %v", vid, err)
	}
	e.readable(5, stores...)
	if st := e.state(5); st == StateEC {
		t.Fatal("recorded EC after a failed placement")
	}
	if b := e.d.ECStatus().Backoff; len(b) != 1 || b[0].Failures != 2 || !b[0].NextTry.Equal(e.clock.now().Add(2*ecTestRetry)) {
		t.Fatalf("backoff after two failures %+v", b)
	}

	// The heartbeats show a replica held as EC: the third try resumes
	// from the encoder, which still holds every shard (no second encode).
	e.beat()
	e.clock.advance(2 * ecTestRetry)
	if got := e.d.ecCandidates(e.clock.now()); !slices.Equal(got, []uint32{5}) {
		t.Fatalf("candidates after the backoff: %v", got)
	}
	if vid, err := e.d.ecPolicyPass(ctx); vid != 5 || err != nil {
		t.Fatalf("third pass: %d %v", vid, err)
	}
	if st := e.state(5); st != StateEC {
		t.Fatalf("volume 5 is %s after the third pass", st)
	}
	if n := e.f.count("encode"); n != 1 {
		t.Fatalf("%d encodes", n)
	}
	e.readable(5, stores...)
	st = e.d.ECStatus()
	if len(st.Backoff) != 0 || len(st.Recent) != 3 || st.Recent[0].Result != "ok" || st.Recent[1].Step != ecStepPlace || st.Recent[2].Step != ecStepCompact {
		t.Fatalf("status after the retries %+v", st)
	}
	if n := counterValue(t, e.d, ECTriggerPolicy, "failed"); n != 2 {
		t.Fatalf("failed jobs metric %v", n)
	}
}

// A job cut short after the encoder gave its extra shards away (a crash
// of the old leader) is finished by the next: the plain replica left is
// replaced and the record switches, with no second encode.
func TestECPolicyResumesSpreadVolume(t *testing.T) {
	e := newECTest(t, "s1", "s2", "s3")
	e.addVolume(9, 950, e.clock.now(), "s1", "s2", "s3")
	for i, s := range []string{"s1", "s2"} {
		e.f.set(s, 9, func(r *VolumeReport) {
			r.State, r.LastAppendUnixNano = StateEC, 0
			for sh := uint32(i * 7); sh < uint32(i*7+7); sh++ {
				r.EcShards = append(r.EcShards, sh)
			}
		})
	}
	e.f.set("s3", 9, func(r *VolumeReport) { r.State = StateSealed })
	e.beat()
	// Resumed at once, quiet or not.
	if got := e.d.ecCandidates(e.clock.now()); !slices.Equal(got, []uint32{9}) {
		t.Fatalf("candidates %v", got)
	}
	p, err := e.d.EncodeEC(context.Background(), 9, ECEncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if e.state(9) != StateEC || e.f.count("encode") != 0 || e.f.count("compact") != 0 || e.f.count("mount") != 1 {
		t.Fatalf("state %s, calls %v", e.state(9), e.f.calls)
	}
	if r, _ := e.f.report("s3", 9); r.State != StateEC || len(r.EcShards) != 0 {
		t.Fatalf("s3 holds %+v", r)
	}
	if p.SurvivesStores != 0 || len(p.Holders) != 3 {
		t.Fatalf("placement %+v", p)
	}
}

// While a job runs, no other starts, from the policy or an operator, and
// the running job is visible.
func TestECPolicyOneJobAtATime(t *testing.T) {
	e := newECTest(t, "s1", "s2")
	e.addVolume(1, 950, e.clock.now(), "s1")
	e.addVolume(2, 950, e.clock.now(), "s2")
	if err := e.d.fsm.Apply(Command{Type: CmdSetVolumeState, Vid: 2, State: StateReadOnly, Reason: "operator"}); err != nil {
		t.Fatal(err)
	}
	e.beat()
	e.clock.advance(2 * ecTestAfter)
	e.f.block, e.f.compacting = make(chan struct{}), make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		_, err := e.d.ecPolicyPass(context.Background())
		done <- err
	}()
	<-e.f.compacting
	if r := e.d.ECStatus().Running; r == nil || r.Vid != 1 || r.Step != ecStepCompact || r.Trigger != ECTriggerPolicy {
		t.Fatalf("running %+v", r)
	}
	if vid, err := e.d.ecPolicyPass(context.Background()); vid != 0 || err != nil {
		t.Fatalf("a pass during a job: %d %v", vid, err)
	}
	if _, err := e.d.EncodeEC(context.Background(), 2, ECEncodeOptions{}); !errors.Is(err, ErrBusy) {
		t.Errorf("an operator's job during the policy's: %v", err)
	}
	close(e.f.block)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := e.f.count("compact"); n != 1 {
		t.Fatalf("%d compactions: %v", n, e.f.calls)
	}
	if e.state(1) != StateEC || e.state(2) != StateReadOnly {
		t.Fatalf("volumes %s and %s", e.state(1), e.state(2))
	}
}

// A job whose node stops leading stops at its next step, leaving the
// volume readable; the next leadership takes it up where the stores are
// (the replicas sealed already are not compacted again).
func TestECPolicyLeaderChangeMidJob(t *testing.T) {
	stores := []string{"s1", "s2", "s3", "s4"}
	e := newECTest(t, stores...)
	e.addVolume(4, 950, e.clock.now(), "s1", "s2")
	e.beat()
	e.clock.advance(2 * ecTestAfter)
	e.f.block, e.f.compacting = make(chan struct{}), make(chan struct{}, 2)
	done := make(chan error, 1)
	go func() {
		_, err := e.d.ecPolicyPass(context.Background())
		done <- err
	}()
	<-e.f.compacting
	e.log.follower.Store(true)
	close(e.f.block)
	if err := <-done; !errors.Is(err, ErrNotLeader) {
		t.Fatalf("job after the leadership ended: %v", err)
	}
	e.readable(4, "s1", "s2")
	if e.f.count("encode") != 0 || e.state(4) == StateEC {
		t.Fatalf("the job went on: %v", e.f.calls)
	}
	if st := e.d.ECStatus(); len(st.Backoff) != 0 || len(st.Recent) != 1 || st.Recent[0].Result != "interrupted" {
		t.Fatalf("status %+v", st)
	}
	e.f.mu.Lock()
	e.f.block = nil
	e.f.mu.Unlock()
	e.log.lead()
	e.beat()
	if vid, err := e.d.ecPolicyPass(context.Background()); vid != 4 || err != nil {
		t.Fatalf("the next leadership's pass: %d %v", vid, err)
	}
	if e.state(4) != StateEC || e.f.count("compact") != 2 || e.f.count("encode") != 1 {
		t.Fatalf("state %s, calls %v", e.state(4), e.f.calls)
	}
}

// Shards go only to stores with room for a new volume, besides the
// replicas, which give up their plain copies.
func TestECPlacementSkipsFullStores(t *testing.T) {
	e := newECTest(t, "s1", "s2", "s3", "s4")
	e.f.free = map[string]uint64{"s2": 1 << 20, "s4": 1 << 20} // below the 1 GiB default
	e.addVolume(6, 950, e.clock.now(), "s1", "s2")
	e.beat()
	p, err := e.d.EncodeEC(context.Background(), 6, ECEncodeOptions{Freeze: true})
	if err != nil {
		t.Fatal(err)
	}
	holds := map[string]int{}
	for _, h := range p.Holders {
		holds[h.StoreID] = len(h.Shards)
	}
	if len(holds) != 3 || holds["s1"] != 5 || holds["s2"] != 5 || holds["s3"] != 4 {
		t.Fatalf("placement %+v", p.Holders)
	}
	if _, ok := e.f.report("s4", 6); ok {
		t.Fatal("the full store s4 got shards")
	}
}

// While a job moves a volume's shards, delete tokens for its photos are
// refused (a delete could miss the new holders); other volumes' are not.
func TestECJobHoldsDeletes(t *testing.T) {
	e := newECTest(t, "s1", "s2", "s3")
	e.addVolume(1, 950, e.clock.now(), "s1")
	e.addVolume(2, 950, e.clock.now(), "s2")
	if err := e.d.fsm.Apply(Command{Type: CmdReserveKeys, HighWater: 100}); err != nil {
		t.Fatal(err)
	}
	e.beat()
	e.f.block, e.f.compacting, e.f.blockOn = make(chan struct{}), make(chan struct{}, 3), "mount"
	photo := func(vid uint32) string { return fmt.Sprintf("%d-5-0000000000000009", vid) }
	if _, err := e.d.AuthorizeDelete(photo(1)); err != nil {
		t.Fatalf("delete before the job: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := e.d.EncodeEC(context.Background(), 1, ECEncodeOptions{Freeze: true})
		done <- err
	}()
	<-e.f.compacting
	if _, err := e.d.AuthorizeDelete(photo(1)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("delete while the shards move: %v, want ErrUnavailable", err)
	}
	if _, err := e.d.AuthorizeDelete(photo(2)); err != nil {
		t.Errorf("delete on another volume: %v", err)
	}
	close(e.f.block)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.AuthorizeDelete(photo(1)); err != nil {
		t.Fatalf("delete after the job: %v", err)
	}
}

// The stores' reports switch the record to EC once every holder serves the
// EC form, which can be before a job cut short dropped the encoder's
// extra shards: the policy takes the volume up again and the job finishes
// the drop; a volume fully placed is refused.
func TestECPolicyFinishesUnfinishedDrop(t *testing.T) {
	e := newECTest(t, "s1", "s2", "s3")
	e.addVolume(8, 950, e.clock.now(), "s1", "s2", "s3")
	placed := map[string][]uint32{"s1": allShards(), "s2": {1, 4, 7, 10, 13}, "s3": {2, 5, 8, 11}}
	for s, sh := range placed {
		e.f.set(s, 8, func(r *VolumeReport) { r.State, r.EcShards, r.LastAppendUnixNano = StateEC, sh, 0 })
	}
	e.beat()
	if st := e.state(8); st != StateEC {
		t.Fatalf("the reports made volume 8 %s", st)
	}
	if got := e.d.ecCandidates(e.clock.now()); !slices.Equal(got, []uint32{8}) {
		t.Fatalf("candidates %v", got)
	}
	if vid, err := e.d.ecPolicyPass(context.Background()); vid != 8 || err != nil {
		t.Fatalf("pass: %d %v", vid, err)
	}
	if r, _ := e.f.report("s1", 8); !slices.Equal(r.EcShards, []uint32{0, 3, 6, 9, 12}) {
		t.Fatalf("the encoder holds %v", r.EcShards)
	}
	if e.f.count("encode") != 0 || e.f.count("compact") != 0 || e.f.count("drop") != 1 {
		t.Fatalf("calls %v", e.f.calls)
	}
	e.beat()
	if got := e.d.ecCandidates(e.clock.now()); len(got) != 0 {
		t.Fatalf("candidates once finished: %v", got)
	}
	if _, err := e.d.EncodeEC(context.Background(), 8, ECEncodeOptions{}); !errors.Is(err, ErrWrongState) {
		t.Fatalf("encoding the placed volume again: %v", err)
	}
}
