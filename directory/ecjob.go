package directory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ECStoreAPI is what the erasure-coding workflow asks of stores beyond
// StoreAPI. The gRPC adapter (grpc.go) implements it over storepb; a
// StoreAPI without it cannot erasure-code (EncodeEC fails with
// ErrUnavailable). Its methods fail with ErrNotOnStore when the store does
// not hold the volume.
type ECStoreAPI interface {
	// VolumeStatus returns st's report of volume vid, plain or EC.
	VolumeStatus(ctx context.Context, st StoreRecord, vid uint32) (VolumeReport, error)
	// Compact compacts st's replica of vid; a read-only replica that is
	// compacted becomes sealed. It returns the report after it.
	Compact(ctx context.Context, st StoreRecord, vid uint32) (VolumeReport, error)
	// ECEncode has st encode its sealed replica of vid in place into 14
	// shards (block sizes 0 take the store's defaults) and returns the
	// number of live needles.
	ECEncode(ctx context.Context, st StoreRecord, vid uint32, largeBlock, smallBlock uint64) (needles uint32, err error)
	// ECShardMount has st copy shards of EC volume vid, with its index and
	// journal, from source and serve them; a plain read-only replica of vid
	// on st is replaced. No shards: st keeps the index and journal only.
	ECShardMount(ctx context.Context, st StoreRecord, vid uint32, shards []uint32, source StoreRecord) (VolumeReport, error)
	// ECShardDelete removes shards of EC volume vid from st.
	ECShardDelete(ctx context.Context, st StoreRecord, vid uint32, shards []uint32) (VolumeReport, error)
	// ECIndexSync has st merge into its journal of EC volume vid the
	// deletes the other holders journaled (and restore a lost index), and
	// returns how many deletes it added.
	ECIndexSync(ctx context.Context, st StoreRecord, vid uint32) (added int, err error)
}

// The steps of an erasure-coding job, as progress and the status page name
// them.
const (
	ecStepFreeze  = "freeze"
	ecStepCompact = "compact"
	ecStepEncode  = "encode"
	ecStepPlace   = "place"
	ecStepVerify  = "verify"
	ecStepDrop    = "drop"
	ecStepSwitch  = "switch"
	ecStepDone    = "done"
)

// The triggers of an erasure-coding job.
const (
	ECTriggerOperator = "operator"
	ECTriggerPolicy   = "policy"
)

// ECEncodeOptions configure EncodeEC.
type ECEncodeOptions struct {
	// LargeBlock and SmallBlock are the block sizes of the shard layout;
	// 0 takes the store's defaults (1 GiB and 1 MiB).
	LargeBlock, SmallBlock uint64
	// Freeze makes a writable volume read-only first, with FreezeReason;
	// without it a writable volume is refused (ErrWrongState).
	Freeze       bool
	FreezeReason string
	// Trigger names who started the job (ECTriggerOperator or
	// ECTriggerPolicy), for the log, the status page and the metrics.
	Trigger string
	// Progress, when set, is called after each step.
	Progress func(ECProgress)
}

// ECProgress is one step of an erasure-coding job done.
type ECProgress struct {
	Step    string
	Message string
}

// ECPlacement is where an erasure-coded volume's shards went.
type ECPlacement struct {
	Vid uint32 `json:"vid"`
	// Source is the store that encoded the volume.
	Source string `json:"source"`
	// Holders are the stores holding shards, and the former replicas that
	// keep only the index and journal (no shards), in placement order.
	Holders []ECPlaced `json:"holders"`
	// SurvivesStores and SurvivesRacks are how many stores, and racks, can
	// be lost, whichever they are, with every needle still readable.
	SurvivesStores int `json:"survives_stores"`
	SurvivesRacks  int `json:"survives_racks"`
	// Needles is the number of live needles in the index (0 when the job
	// resumed an encode a previous run did).
	Needles int `json:"needles"`
}

// ECPlaced is one holder of an ECPlacement.
type ECPlaced struct {
	StoreID string   `json:"store_id"`
	Rack    string   `json:"rack,omitempty"`
	Shards  []uint32 `json:"shards"`
}

// EncodeEC erasure-codes volume vid and places its shards: the one
// encode workflow of the cluster, run by the EcEncode RPC for operators
// and by the automatic policy (ecpolicy.go). Leader only; one job runs at
// a time (ErrBusy otherwise).
//
// The steps, each checked before the next: freeze (a writable volume
// becomes read-only on every replica, with opts.Freeze; refused without),
// compact (every replica not sealed yet is compacted, which seals it),
// encode (one replica encodes the volume in place: it then holds every
// shard), place (the 14 shards go to distinct live stores, on distinct
// racks as far as labels allow, copied from the encoder; a store that is
// not a replica needs Options.MinStoreFreeBytes free; replicas left out
// keep the index and journal, and every plain replica is replaced), verify
// (every holder reports the shards placed on it), drop (the encoder
// removes the shards it gave away), switch (the record becomes EC).
//
// Every step leaves the volume readable: in its plain form until a holder
// serves the EC form, then in its EC form, which any holder serves. The
// job can be run again after any failure or an interruption (a crash, a
// failover): it reads where each replica is from the stores and resumes
// from there (an encoder still holding every shard places them again; an
// EC form already spread completes the replacement of the plain replicas).
// Every replica's store must be alive. An EC volume is refused
// (ErrWrongState) unless a job left its encoder holding every shard beside
// the other holders (unfinishedPlacement): the job then finishes.
func (d *Directory) EncodeEC(ctx context.Context, vid uint32, opts ECEncodeOptions) (ECPlacement, error) {
	v, err := d.volume(vid)
	if err != nil {
		return ECPlacement{}, err
	}
	epoch, _, err := d.leading()
	if err != nil {
		return ECPlacement{}, err
	}
	ecs, ok := d.stores.(ECStoreAPI)
	if !ok {
		return ECPlacement{}, fmt.Errorf("%w: this directory's store client cannot erasure-code", ErrUnavailable)
	}
	switch {
	case v.State == StateEC && !unfinishedPlacement(v):
		return ECPlacement{}, fmt.Errorf("%w: volume %d is erasure-coded already", ErrWrongState, vid)
	case v.Allocating:
		return ECPlacement{}, fmt.Errorf("%w: volume %d is being allocated", ErrWrongState, vid)
	case v.State == StateWritable && !opts.Freeze:
		return ECPlacement{}, fmt.Errorf("%w: volume %d is writable; mark it read-only first", ErrWrongState, vid)
	case len(v.Replicas) == 0:
		return ECPlacement{}, fmt.Errorf("%w: volume %d has no replica", ErrWrongState, vid)
	}
	if opts.Trigger == "" {
		opts.Trigger = ECTriggerOperator
	}
	if !d.ecBegin(vid, opts.Trigger) {
		return ECPlacement{}, fmt.Errorf("%w (volume %d); retry once it ends", ErrBusy, d.ecRunningVid())
	}
	j := &ecRun{d: d, ecs: ecs, vid: vid, epoch: epoch, opts: opts}
	d.opts.Logger.Info("erasure coding started", "vid", vid, "trigger", opts.Trigger)
	p, err := j.run(ctx)
	d.ecEnd(vid, opts.Trigger, err)
	if err != nil {
		d.opts.Logger.Warn("erasure coding failed; the volume stays readable", "vid", vid, "trigger", opts.Trigger, "step", j.step, "err", err)
		return p, err
	}
	d.opts.Logger.Info("volume erasure-coded", "vid", vid, "trigger", opts.Trigger, "source", p.Source, "holders", len(p.Holders),
		"survives_stores", p.SurvivesStores, "survives_racks", p.SurvivesRacks)
	return p, nil
}

// unfinishedPlacement reports whether EC volume v is left as a job cut
// short after its placement leaves it: one holder still reports every
// shard (the encoder, which had not dropped what it gave away) while
// others hold shards too. The stores' reports switch the record to EC
// once every holder serves the EC form, which can happen before the job
// ends; running the job again finishes it.
func unfinishedPlacement(v VolumeRecord) bool {
	full, other := false, false
	for _, r := range v.Replicas {
		switch {
		case r.State != StateEC:
		case len(r.EcShards) == ecShards:
			full = true
		case len(r.EcShards) > 0:
			other = true
		}
	}
	return full && other
}

// ecRun is one erasure-coding job.
type ecRun struct {
	d     *Directory
	ecs   ECStoreAPI
	vid   uint32
	epoch uint64 // the leadership it runs under
	opts  ECEncodeOptions
	step  string
}

// replicaState is one replica as its store reports it during a job.
type replicaState struct {
	st  StoreRecord
	rep VolumeReport
}

func (j *ecRun) progress(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if j.opts.Progress != nil {
		j.opts.Progress(ECProgress{Step: j.step, Message: msg})
	}
}

// enter starts step s once this node still leads under the job's epoch.
func (j *ecRun) enter(ctx context.Context, s string) error {
	j.step = s
	j.d.ecSetStep(j.vid, s)
	if err := ctx.Err(); err != nil {
		return err
	}
	if epoch, _ := j.d.log.Leadership(); epoch != j.epoch {
		return fmt.Errorf("%w: leadership changed during the job", j.d.log.NotLeader())
	}
	return nil
}

// storeErr wraps a store's failure at the current step.
func (j *ecRun) storeErr(st StoreRecord, what string, err error) error {
	if errors.Is(err, ErrNotOnStore) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("store %s: %s volume %d: %w", st.ID, what, j.vid, err)
	}
	return fmt.Errorf("%w: store %s: %s volume %d: %v", ErrUnavailable, st.ID, what, j.vid, err)
}

// replicas returns every replica of the record with its store's report,
// asked of the store. Every replica's store must be alive.
func (j *ecRun) replicas(ctx context.Context) ([]replicaState, error) {
	v, err := j.d.volume(j.vid)
	if err != nil {
		return nil, err
	}
	sn := j.d.snapshot()
	var out []replicaState
	for _, r := range v.Replicas {
		st, ok := sn.stores[r.StoreID]
		if !ok || !sn.alive[r.StoreID] {
			return nil, fmt.Errorf("%w: store %s holding volume %d is not alive", ErrUnavailable, r.StoreID, j.vid)
		}
		rep, err := j.ecs.VolumeStatus(ctx, st, j.vid)
		if err != nil {
			return nil, j.storeErr(st, "read the state of", err)
		}
		out = append(out, replicaState{st: st, rep: rep})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: volume %d has no replica", ErrWrongState, j.vid)
	}
	return out, nil
}

func (j *ecRun) run(ctx context.Context) (ECPlacement, error) {
	p := ECPlacement{Vid: j.vid, Holders: []ECPlaced{}}

	// Freeze.
	if err := j.enter(ctx, ecStepFreeze); err != nil {
		return p, err
	}
	if v, err := j.d.volume(j.vid); err != nil {
		return p, err
	} else if v.State == StateWritable {
		reason := j.opts.FreezeReason
		if reason == "" {
			reason = "erasure coding"
		}
		if err := j.d.apply(ctx, Command{Type: CmdSetVolumeState, Vid: j.vid, State: StateReadOnly, Reason: reason}); err != nil {
			return p, err
		}
		j.progress("volume %d: no more writes (%s)", j.vid, reason)
	}
	reps, err := j.replicas(ctx)
	if err != nil {
		return p, err
	}
	for i, r := range reps {
		if r.rep.State != StateWritable {
			continue
		}
		v, _ := j.d.volume(j.vid)
		// The heartbeat answers ask the same of a replica still writing;
		// the two calls may race on the store, so the outcome is what
		// counts: the replica's state read afterwards.
		markErr := j.d.stores.MarkReadOnly(ctx, r.st, j.vid, v.Reason)
		if reps[i].rep, err = j.ecs.VolumeStatus(ctx, r.st, j.vid); err != nil {
			return p, j.storeErr(r.st, "read the state of", err)
		}
		if reps[i].rep.State == StateWritable {
			if markErr != nil {
				return p, j.storeErr(r.st, "mark read-only", markErr)
			}
			return p, fmt.Errorf("%w: store %s still reports volume %d writable", ErrUnavailable, r.st.ID, j.vid)
		}
	}

	// Compact: a read-only replica becomes sealed once compacted.
	if err := j.enter(ctx, ecStepCompact); err != nil {
		return p, err
	}
	for i, r := range reps {
		switch r.rep.State {
		case StateSealed, StateEC:
			continue
		case StateReadOnly:
		default:
			return p, fmt.Errorf("%w: store %s reports volume %d %s", ErrWrongState, r.st.ID, j.vid, r.rep.State)
		}
		rep, err := j.ecs.Compact(ctx, r.st, j.vid)
		if err != nil {
			return p, j.storeErr(r.st, "compact", err)
		}
		if rep.State != StateSealed {
			return p, fmt.Errorf("%w: store %s: volume %d is %s after compaction, not sealed", ErrUnavailable, r.st.ID, j.vid, rep.State)
		}
		reps[i].rep = rep
		j.progress("volume %d: compacted and sealed on store %s", j.vid, r.st.ID)
	}

	// Encode, or find the encoder a previous run left.
	if err := j.enter(ctx, ecStepEncode); err != nil {
		return p, err
	}
	var source *replicaState
	var holders []replicaState
	for i, r := range reps {
		if r.rep.State == StateEC {
			holders = append(holders, r)
			if len(r.rep.EcShards) == ecShards && source == nil {
				source = &reps[i]
			}
		}
	}
	if v, _ := j.d.volume(j.vid); v.State == StateEC && source == nil {
		// The record's view of an unfinished placement was stale: the
		// stores show it finished.
		return p, fmt.Errorf("%w: volume %d is erasure-coded already", ErrWrongState, j.vid)
	}
	if len(holders) > 0 && source == nil {
		// A previous run placed the shards and the encoder gave its
		// extra ones away: only plain replicas are left to replace.
		return j.finishSpread(ctx, reps, holders)
	}
	if source == nil {
		source = &reps[0]
		n, err := j.ecs.ECEncode(ctx, source.st, j.vid, j.opts.LargeBlock, j.opts.SmallBlock)
		if err != nil {
			return p, j.storeErr(source.st, "encode", err)
		}
		p.Needles = int(n)
		source.rep.State = StateEC
		j.progress("volume %d: encoded on store %s, %d needles", j.vid, source.st.ID, n)
	} else {
		j.progress("volume %d: store %s holds every shard from an earlier run; placing them", j.vid, source.st.ID)
	}
	p.Source = source.st.ID

	// Place.
	if err := j.enter(ctx, ecStepPlace); err != nil {
		return p, err
	}
	sn := j.d.snapshot()
	isReplica := map[string]bool{}
	for _, r := range reps {
		isReplica[r.st.ID] = true
	}
	// Live stores with room for a new volume (MinStoreFreeBytes, as for
	// allocations), and the replicas, which give their plain copies up.
	var cands []placeStore
	for _, st := range j.d.fsm.Stores() {
		fresh := sn.stores[st.ID]
		if st.ID == source.st.ID || sn.alive[st.ID] && (isReplica[st.ID] || fresh.FreeBytes >= j.d.opts.MinStoreFreeBytes) {
			cands = append(cands, placeStore{id: st.ID, rack: fresh.Rack, replica: isReplica[st.ID]})
		}
	}
	order, shards := placeShards(cands, source.st.ID)
	chosen := map[string]bool{}
	for i, s := range order {
		chosen[s.id] = true
		p.Holders = append(p.Holders, ECPlaced{StoreID: s.id, Rack: s.rack, Shards: shards[i]})
		if s.id == source.st.ID {
			continue
		}
		st := sn.stores[s.id]
		if _, err := j.ecs.ECShardMount(ctx, st, j.vid, shards[i], source.st); err != nil {
			return p, j.storeErr(st, fmt.Sprintf("place shards %v of", shards[i]), err)
		}
		j.progress("volume %d: shards %v on store %s (rack %q)", j.vid, shards[i], s.id, s.rack)
	}
	// Replicas left out keep the index and journal; their plain copies go.
	for _, r := range reps {
		if chosen[r.st.ID] {
			continue
		}
		p.Holders = append(p.Holders, ECPlaced{StoreID: r.st.ID, Rack: r.st.Rack, Shards: []uint32{}})
		if r.rep.State == StateEC {
			continue
		}
		if _, err := j.ecs.ECShardMount(ctx, r.st, j.vid, nil, source.st); err != nil {
			return p, j.storeErr(r.st, "place the index of", err)
		}
		j.progress("volume %d: index and journal only on store %s (rack %q)", j.vid, r.st.ID, r.st.Rack)
	}

	// Verify: every holder serves the EC volume with the shards placed on
	// it (the stores check each shard they copy); the encoder still holds
	// all 14.
	if err := j.enter(ctx, ecStepVerify); err != nil {
		return p, err
	}
	if err := j.verify(ctx, sn, p.Holders, source.st.ID); err != nil {
		return p, err
	}
	j.progress("volume %d: every shard verified on its holder", j.vid)

	// Drop the shards the encoder gave away.
	if err := j.enter(ctx, ecStepDrop); err != nil {
		return p, err
	}
	var keep []uint32
	for _, h := range p.Holders {
		if h.StoreID == source.st.ID {
			keep = h.Shards
		}
	}
	var drop []uint32
	for i := uint32(0); i < ecShards; i++ {
		if !slices.Contains(keep, i) {
			drop = append(drop, i)
		}
	}
	if len(drop) > 0 {
		if _, err := j.ecs.ECShardDelete(ctx, source.st, j.vid, drop); err != nil {
			return p, j.storeErr(source.st, "drop the placed shards of", err)
		}
	}

	if err := j.switchToEC(ctx); err != nil {
		return p, err
	}
	j.syncHolders(ctx, sn, p.Holders)
	j.awaitHolders(ctx, p.Holders, p.Source)
	j.survival(&p)
	j.step = ecStepDone
	return p, nil
}

// verify checks that each holder reports the EC volume with at least the
// shards placed on it, and that the shards cover all 14.
func (j *ecRun) verify(ctx context.Context, sn *snapshot, holders []ECPlaced, source string) error {
	covered := map[uint32]bool{}
	for _, h := range holders {
		st := sn.stores[h.StoreID]
		rep, err := j.ecs.VolumeStatus(ctx, st, j.vid)
		if err != nil {
			return j.storeErr(st, "verify the shards of", err)
		}
		if rep.State != StateEC {
			return fmt.Errorf("%w: store %s reports volume %d %s after the placement", ErrUnavailable, h.StoreID, j.vid, rep.State)
		}
		want := h.Shards
		if h.StoreID == source {
			want = allShards()
		}
		for _, s := range want {
			if !slices.Contains(rep.EcShards, s) {
				return fmt.Errorf("%w: store %s does not serve shard %d of volume %d (it serves %v)", ErrUnavailable, h.StoreID, s, j.vid, rep.EcShards)
			}
		}
		for _, s := range h.Shards {
			covered[s] = true
		}
	}
	if len(covered) != ecShards {
		return fmt.Errorf("%w: volume %d: the placement covers %d shards of %d", ErrUnavailable, j.vid, len(covered), ecShards)
	}
	return nil
}

// finishSpread completes a job whose shards a previous run spread already:
// the shards the holders serve must cover all 14; the plain replicas left
// are replaced by the index and journal; then the record switches.
func (j *ecRun) finishSpread(ctx context.Context, reps, holders []replicaState) (ECPlacement, error) {
	p := ECPlacement{Vid: j.vid, Holders: []ECPlaced{}}
	covered := map[uint32]bool{}
	src := holders[0]
	for _, h := range holders {
		for _, s := range h.rep.EcShards {
			covered[s] = true
		}
		if len(h.rep.EcShards) > len(src.rep.EcShards) {
			src = h
		}
	}
	if len(covered) != ecShards {
		return p, fmt.Errorf("%w: volume %d: its holders serve %d shards of %d; run `haybale ec rebuild`", ErrUnavailable, j.vid, len(covered), ecShards)
	}
	p.Source = src.st.ID
	if err := j.enter(ctx, ecStepPlace); err != nil {
		return p, err
	}
	// The holders of the record may be fewer than the stores serving
	// shards (heartbeats bring the others in); the placement lists those
	// the record knows.
	for _, r := range reps {
		if r.rep.State != StateEC {
			if _, err := j.ecs.ECShardMount(ctx, r.st, j.vid, nil, src.st); err != nil {
				return p, j.storeErr(r.st, "place the index of", err)
			}
			j.progress("volume %d: index and journal only on store %s (rack %q)", j.vid, r.st.ID, r.st.Rack)
			r.rep.EcShards = nil
		}
		p.Holders = append(p.Holders, ECPlaced{StoreID: r.st.ID, Rack: r.st.Rack, Shards: append([]uint32{}, r.rep.EcShards...)})
	}
	if err := j.switchToEC(ctx); err != nil {
		return p, err
	}
	for _, r := range reps {
		j.syncHolder(ctx, r.st)
	}
	j.survival(&p)
	j.step = ecStepDone
	return p, nil
}

// syncHolders has every holder of the placement merge the deletes the
// others journaled while the shards moved (a delete authorized before the
// job froze deletes may reach only the former replicas).
func (j *ecRun) syncHolders(ctx context.Context, sn *snapshot, holders []ECPlaced) {
	for _, h := range holders {
		if st, ok := sn.stores[h.StoreID]; ok {
			j.syncHolder(ctx, st)
		}
	}
}

// syncHolder has st sync its index and journal of the job's volume. A
// failure is reported, not fatal: the stores' periodic sync retries.
func (j *ecRun) syncHolder(ctx context.Context, st StoreRecord) {
	added, err := j.ecs.ECIndexSync(ctx, st, j.vid)
	switch {
	case err != nil:
		j.progress("volume %d: journal sync on store %s failed (its periodic sync retries): %v", j.vid, st.ID, err)
	case added > 0:
		j.progress("volume %d: %d deletes made during the placement merged into store %s", j.vid, added, st.ID)
	}
}

// switchToEC records the volume as erasure-coded.
func (j *ecRun) switchToEC(ctx context.Context) error {
	if err := j.enter(ctx, ecStepSwitch); err != nil {
		return err
	}
	if err := j.d.apply(ctx, Command{Type: CmdSetVolumeState, Vid: j.vid, State: StateEC}); err != nil {
		return err
	}
	j.progress("volume %d: recorded as erasure-coded", j.vid)
	return nil
}

// awaitHolders waits, for at most Directory.ecAwait (MissedHeartbeats
// heartbeat intervals), until the record lists every holder of the
// placement as holding the EC volume with its shards, and the encoder
// without those it gave away: the stores' heartbeats bring the new holders
// in (until then a store looking for the holders of a shard does not find
// them) and the encoder's drop (until then the record looks like a job cut
// short, see unfinishedPlacement). When the wait ends first, the
// heartbeats still bring them in later.
func (j *ecRun) awaitHolders(ctx context.Context, holders []ECPlaced, source string) {
	deadline := time.Now().Add(j.d.ecAwait)
	for {
		v, _ := j.d.fsm.Volume(j.vid)
		missing := slices.ContainsFunc(holders, func(h ECPlaced) bool {
			i := v.replica(h.StoreID)
			if i < 0 || v.Replicas[i].State != StateEC {
				return true
			}
			held := v.Replicas[i].EcShards
			if h.StoreID == source && len(held) > len(h.Shards) {
				return true
			}
			return slices.ContainsFunc(h.Shards, func(s uint32) bool { return !slices.Contains(held, s) })
		})
		if !missing || time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(j.d.opts.HeartbeatInterval/4, 100*time.Millisecond)):
		}
	}
}

// survival fills p's survivability from its holders.
func (j *ecRun) survival(p *ECPlacement) {
	var perStore []int
	perRack := map[string]int{}
	for _, h := range p.Holders {
		if len(h.Shards) == 0 {
			continue
		}
		perStore = append(perStore, len(h.Shards))
		perRack[h.Rack] += len(h.Shards)
	}
	var rc []int
	for _, n := range perRack {
		rc = append(rc, n)
	}
	p.SurvivesStores, p.SurvivesRacks = survivable(perStore), survivable(rc)
}

func allShards() []uint32 {
	out := make([]uint32, ecShards)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

// ecJobTimeout bounds one policy job; an operator's job is bounded by its
// call's context.
const ecJobTimeout = 6 * time.Hour
