package directory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// The automatic erasure-coding policy (Options.ECAfter,
// Options.ECFullPercent), run by the leader only:
//
//   - A volume qualifies when it is not EC, not being allocated, every
//     replica's store is alive and reported it to this leader, its
//     largest replica is at least ECFullPercent of its size limit, and no
//     replica changed its data file (an append, or a compaction's rewrite)
//     for ECAfter by the stores' last-append times. A replica that does not
//     report a last-append time keeps the volume out: quietness cannot be
//     told.
//   - A volume that some replicas hold as EC while the record is not EC yet,
//     or whose encoder still holds every shard beside other holders (a job
//     cut short by a failure, a crash or a failover; see
//     unfinishedPlacement), is taken first, whatever its fill and
//     quietness: the job resumes from where the stores are.
//   - One job runs at a time (with the operator's EcEncode too): a pass
//     while a job runs starts none. A failed job leaves the volume readable
//     and is retried after a backoff (ECRetry, doubling per failure up to
//     ecMaxBackoff); a success clears it.
//
// The policy reads time from Options.Clock, so tests move time instead
// of sleeping.

// ecMaxBackoff caps the wait before a failed volume is tried again.
const ecMaxBackoff = 24 * time.Hour

// ecRecentJobs is how many finished jobs the status keeps.
const ecRecentJobs = 16

// ECJobStatus describes the erasure-coding job that runs.
type ECJobStatus struct {
	Vid     uint32    `json:"vid"`
	Trigger string    `json:"trigger"`
	Step    string    `json:"step"`
	Started time.Time `json:"started"`
}

// ECJobRecord is a finished erasure-coding job.
type ECJobRecord struct {
	Vid      uint32    `json:"vid"`
	Trigger  string    `json:"trigger"`
	Result   string    `json:"result"` // "ok", "failed", "interrupted" (leadership lost) or "skipped" (not for encoding)
	Step     string    `json:"step"`   // the step it ended at
	Error    string    `json:"error,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
}

// ECBackoff is a volume whose last jobs failed, waiting to be tried again.
type ECBackoff struct {
	Vid       uint32    `json:"vid"`
	Failures  int       `json:"failures"`
	NextTry   time.Time `json:"next_try"`
	LastError string    `json:"last_error"`
}

// ECPolicyStatus is the erasure-coding policy and its jobs, as this node
// sees them, for the status page.
type ECPolicyStatus struct {
	// Enabled is true when the automatic policy is on (Options.ECAfter).
	Enabled     bool          `json:"enabled"`
	After       string        `json:"after,omitempty"`
	FullPercent float64       `json:"full_percent,omitempty"`
	Running     *ECJobStatus  `json:"running,omitempty"`
	Recent      []ECJobRecord `json:"recent"`
	Backoff     []ECBackoff   `json:"backoff"`
}

// ecState is the erasure-coding jobs' state on this node, guarded by
// Directory.ec.
type ecState struct {
	running  *ECJobStatus
	recent   []ECJobRecord
	failures map[uint32]*ECBackoff
}

// ecBegin claims the one job slot for vid; false when a job runs.
func (d *Directory) ecBegin(vid uint32, trigger string) bool {
	d.ec.Lock()
	defer d.ec.Unlock()
	if d.ec.running != nil {
		return false
	}
	d.ec.running = &ECJobStatus{Vid: vid, Trigger: trigger, Started: d.opts.Clock()}
	return true
}

// ecRunningVid returns the vid of the job that runs, 0 when none.
func (d *Directory) ecRunningVid() uint32 {
	d.ec.Lock()
	defer d.ec.Unlock()
	if d.ec.running == nil {
		return 0
	}
	return d.ec.running.Vid
}

// ecMovingVid returns the vid of the job that runs once it reaches the
// encode step (the volume's holders change from then until the job ends),
// 0 when none does.
func (d *Directory) ecMovingVid() uint32 {
	d.ec.Lock()
	defer d.ec.Unlock()
	if r := d.ec.running; r != nil {
		switch r.Step {
		case ecStepEncode, ecStepPlace, ecStepVerify, ecStepDrop, ecStepSwitch:
			return r.Vid
		}
	}
	return 0
}

func (d *Directory) ecSetStep(vid uint32, step string) {
	d.ec.Lock()
	defer d.ec.Unlock()
	if d.ec.running != nil && d.ec.running.Vid == vid {
		d.ec.running.Step = step
	}
}

// ecEnd releases the job slot and records the outcome: a failure backs
// the volume off; a success, or an interruption by a leadership change,
// clears its backoff.
func (d *Directory) ecEnd(vid uint32, trigger string, err error) {
	now := d.opts.Clock()
	d.ec.Lock()
	defer d.ec.Unlock()
	run := d.ec.running
	d.ec.running = nil
	rec := ECJobRecord{Vid: vid, Trigger: trigger, Result: "ok", Finished: now}
	if run != nil {
		rec.Step, rec.Started = run.Step, run.Started
	}
	switch {
	case err == nil:
		delete(d.ec.failures, vid)
		rec.Step = ecStepDone
	case errors.Is(err, ErrNotLeader):
		// Whoever leads next resumes it.
		rec.Result, rec.Error = "interrupted", err.Error()
		delete(d.ec.failures, vid)
	case errors.Is(err, ErrWrongState):
		// The volume is not for encoding (EC already, as the stores
		// showed): nothing to retry.
		rec.Result, rec.Error = "skipped", err.Error()
		delete(d.ec.failures, vid)
	default:
		rec.Result, rec.Error = "failed", err.Error()
		b := d.ec.failures[vid]
		if b == nil {
			b = &ECBackoff{Vid: vid}
			d.ec.failures[vid] = b
		}
		b.Failures++
		wait := d.opts.ECRetry
		for i := 1; i < b.Failures && wait < ecMaxBackoff; i++ {
			wait *= 2
		}
		b.NextTry, b.LastError = now.Add(min(wait, ecMaxBackoff)), err.Error()
	}
	d.metrics.ecJobs.WithLabelValues(trigger, rec.Result).Inc()
	d.ec.recent = append(d.ec.recent, rec)
	if len(d.ec.recent) > ecRecentJobs {
		d.ec.recent = slices.Delete(d.ec.recent, 0, len(d.ec.recent)-ecRecentJobs)
	}
}

// ECStatus returns the erasure-coding policy and its jobs.
func (d *Directory) ECStatus() ECPolicyStatus {
	st := ECPolicyStatus{Enabled: d.opts.ECAfter > 0, Recent: []ECJobRecord{}, Backoff: []ECBackoff{}}
	if st.Enabled {
		st.After, st.FullPercent = d.opts.ECAfter.String(), d.opts.ECFullPercent
	}
	d.ec.Lock()
	defer d.ec.Unlock()
	if d.ec.running != nil {
		r := *d.ec.running
		st.Running = &r
	}
	for i := len(d.ec.recent) - 1; i >= 0; i-- {
		st.Recent = append(st.Recent, d.ec.recent[i])
	}
	for _, b := range d.ec.failures {
		st.Backoff = append(st.Backoff, *b)
	}
	slices.SortFunc(st.Backoff, func(a, b ECBackoff) int { return cmp.Compare(a.Vid, b.Vid) })
	return st
}

// ecCandidates returns the volumes the policy would erasure-code at now,
// in the order it takes them: interrupted jobs first, then by vid. It is
// empty when the policy is off or this node does not lead.
func (d *Directory) ecCandidates(now time.Time) []uint32 {
	if d.opts.ECAfter <= 0 {
		return nil
	}
	sn := d.snapshot()
	if !sn.leading {
		return nil
	}
	d.ec.Lock()
	backoff := map[uint32]time.Time{}
	for vid, b := range d.ec.failures {
		backoff[vid] = b.NextTry
	}
	d.ec.Unlock()
	var resume, fresh []uint32
	for _, v := range sn.volumes {
		if v.Allocating || len(v.Replicas) == 0 || v.State == StateEC && !unfinishedPlacement(v) {
			continue
		}
		if next, ok := backoff[v.Vid]; ok && now.Before(next) {
			continue
		}
		if slices.ContainsFunc(v.Replicas, func(r ReplicaRecord) bool { return r.State == StateEC }) {
			resume = append(resume, v.Vid)
			continue
		}
		if d.ecQualifies(sn, v, now) {
			fresh = append(fresh, v.Vid)
		}
	}
	return append(resume, fresh...)
}

// ecQualifies reports whether plain volume v is full enough and quiet
// enough at now, by the reports its replicas' stores sent this leader.
func (d *Directory) ecQualifies(sn *snapshot, v VolumeRecord, now time.Time) bool {
	var size uint64
	var last int64
	limit := v.SizeLimit
	for _, r := range v.Replicas {
		if !sn.alive[r.StoreID] || !sn.seen[r.StoreID] {
			return false
		}
		rep, ok := sn.vols[r.StoreID][v.Vid]
		if !ok || rep.LastAppendUnixNano == 0 {
			return false
		}
		switch rep.State {
		case StateWritable, StateReadOnly, StateSealed:
		default:
			return false
		}
		size = max(size, rep.SizeBytes)
		last = max(last, rep.LastAppendUnixNano)
		if limit == 0 {
			limit = rep.SizeLimit
		}
	}
	if limit == 0 || 100*float64(size) < d.opts.ECFullPercent*float64(limit) {
		return false
	}
	return now.Sub(time.Unix(0, last)) >= d.opts.ECAfter
}

// ecPolicyPass runs one pass of the policy: when this node leads, no job
// runs and a volume qualifies, it erasure-codes the first one and returns
// its vid and the job's error; 0 when it started none.
func (d *Directory) ecPolicyPass(ctx context.Context) (uint32, error) {
	now := d.opts.Clock()
	cands := d.ecCandidates(now)
	if len(cands) == 0 || d.ecRunningVid() != 0 {
		return 0, nil
	}
	vid := cands[0]
	ctx, cancel := context.WithTimeout(ctx, ecJobTimeout)
	defer cancel()
	_, err := d.EncodeEC(ctx, vid, ECEncodeOptions{
		Freeze:       true,
		FreezeReason: fmt.Sprintf("erasure coding: quiet for %s", d.opts.ECAfter),
		Trigger:      ECTriggerPolicy,
	})
	return vid, err
}

// ecPolicyLoop runs the policy every Options.ECCheckInterval while the
// directory is open; passes on a node that does not lead do nothing.
func (d *Directory) ecPolicyLoop() {
	t := time.NewTicker(d.opts.ECCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		// EncodeEC logs and records the outcome.
		d.ecPolicyPass(d.ctx)
	}
}
