package directory

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
)

// Heartbeat is one report of a store: who it is, where it is reached, its
// free space, every volume it holds, and corrupt needles it found.
type Heartbeat struct {
	StoreID   string
	GRPCAddr  string
	HTTPAddr  string
	PublicURL string
	Rack      string
	FreeBytes uint64
	Volumes   []VolumeReport
	Corrupt   []CorruptReport
	// Built is when the store built the report by its report clock
	// (Unix nanoseconds, strictly increasing over one store process's
	// reports and allocation acknowledgements), taken before it read its
	// volumes; 0 from a store without a report clock.
	Built int64
}

// CorruptReport is a needle a store found corrupt.
type CorruptReport struct {
	Vid      uint32
	Key      uint64
	SizeCode uint32
	Offset   uint64
	Detail   string
	Detected time.Time
}

// StoreCommandKind names what a store is asked to do.
type StoreCommandKind uint8

// The store commands.
const (
	// CommandMarkReadOnly: make replica Vid read-only with Reason.
	CommandMarkReadOnly StoreCommandKind = iota + 1
	// CommandCompact: compact replica Vid.
	CommandCompact
)

// StoreCommand is one thing a heartbeat answer asks the store to do.
type StoreCommand struct {
	Kind   StoreCommandKind
	Vid    uint32
	Reason string
}

// HeartbeatAnswer is the directory's answer to a heartbeat: the interval
// at which the store should report, and commands for it.
type HeartbeatAnswer struct {
	Interval time.Duration
	Commands []StoreCommand
}

// liveStore is what a store reported to this node. Its fields are guarded
// by Directory.live.
type liveStore struct {
	seen        time.Time // local clock, monotonic
	hb          Heartbeat
	vols        map[uint32]VolumeReport
	alive       bool // as last logged
	persistedAt time.Time
	fingerprint string // of the last persisted report
	// allocated are the volumes this node created on the store: a report
	// the store built before it created one must not hide it (see
	// mergeAllocated).
	allocated map[uint32]allocMark
}

// allocMark is a volume this node created on a store.
type allocMark struct {
	at    time.Time // when the store acknowledged it, local clock
	acked int64     // the store's report clock then (Allocated.Acknowledged), 0 if none
}

// mergeAllocated decides, for each volume this node created on the store
// of ls, whether report vols (a report built at the store's clock built)
// speaks for it, and where it does not, puts the volume back as this node
// last knew it. ls is guarded by d.live, which is held.
//
// The rule: a store lists a volume in every report it builds after it
// acknowledged the volume's creation, so a report with a report clock
// above the acknowledgement's is the truth about the volume (listed, in
// the state it reports; missing, lost). A report built at or before the
// acknowledgement may predate the volume however late it arrives (slow
// network, a loaded process, an older stream of the store): it speaks for
// the volume only when it lists it. The mark stays while the store lists
// the volume, so even a report of an earlier stream that lands after
// later ones cannot hide it; it goes once a report built after the
// acknowledgement no longer lists the volume.
//
// A store or an allocation without a report clock (0) falls back to time:
// the report is ignored for the volume for two heartbeat intervals after
// the acknowledgement, then taken as the truth.
func (d *Directory) mergeAllocated(ls *liveStore, vols map[uint32]VolumeReport, built int64, now time.Time) {
	for vid, m := range ls.allocated {
		_, reported := vols[vid]
		prev, had := ls.vols[vid]
		if m.acked != 0 && built != 0 {
			switch {
			case built > m.acked:
				if !reported {
					delete(ls.allocated, vid)
				}
			case !reported && had:
				vols[vid] = prev
			}
			continue
		}
		switch {
		case reported || now.Sub(m.at) > 2*d.opts.HeartbeatInterval:
			delete(ls.allocated, vid)
		case had:
			vols[vid] = prev
		}
	}
}

// maxStoreIDLen bounds a store id.
const maxStoreIDLen = 128

func validStoreID(id string) bool {
	if id == "" || len(id) > maxStoreIDLen {
		return false
	}
	return !strings.ContainsFunc(id, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) })
}

// Heartbeat records one report of a store and builds its answer. What is
// structural in the report (addresses, rack, the volume set, states, a
// volume at its limit) is committed through the log at once; the figures
// that change all the time are committed at most every PersistInterval.
// Leader only.
func (d *Directory) Heartbeat(ctx context.Context, hb Heartbeat) (HeartbeatAnswer, error) {
	if !validStoreID(hb.StoreID) {
		return HeartbeatAnswer{}, fmt.Errorf("%w: bad store id %q (1 to %d printable characters, no spaces)", ErrInvalidArgument, clip(hb.StoreID), maxStoreIDLen)
	}
	if hb.GRPCAddr == "" || hb.HTTPAddr == "" {
		return HeartbeatAnswer{}, fmt.Errorf("%w: store %s: heartbeat without grpc_addr or http_addr", ErrInvalidArgument, hb.StoreID)
	}
	if _, _, err := d.leading(); err != nil {
		return HeartbeatAnswer{}, err
	}
	d.metrics.heartbeats.Inc()
	now := time.Now()
	id := hb.StoreID

	vols := make(map[uint32]VolumeReport, len(hb.Volumes))
	for _, v := range hb.Volumes {
		if v.Vid != 0 {
			vols[v.Vid] = v
		}
	}

	d.live.Lock()
	ls, known := d.live.stores[id]
	if !known {
		ls = &liveStore{}
		d.live.stores[id] = ls
	}
	wasAlive := known && ls.alive
	// The report as this node takes it, kept live and persisted alike: a
	// volume the store built the report too early to list stays.
	d.mergeAllocated(ls, vols, hb.Built, now)
	reports := slices.SortedFunc(maps.Values(vols), func(a, b VolumeReport) int { return cmp.Compare(a.Vid, b.Vid) })
	hb.Volumes = reports
	fp := d.fingerprint(hb)
	ls.seen, ls.hb, ls.vols, ls.alive = now, hb, vols, true
	persist := ls.fingerprint != fp || now.Sub(ls.persistedAt) >= d.opts.PersistInterval
	if persist {
		// Claimed under the lock so concurrent streams of one store do not
		// both persist; reset below when the apply fails.
		ls.fingerprint, ls.persistedAt = fp, now
	}
	d.live.Unlock()
	if !wasAlive {
		d.opts.Logger.Info("store alive", "store", id, "grpc", hb.GRPCAddr, "http", hb.HTTPAddr, "rack", hb.Rack, "volumes", len(reports))
	}

	if persist {
		cmd := Command{Type: CmdStoreReport, Volumes: reports, Store: &StoreRecord{
			ID: id, GRPCAddr: hb.GRPCAddr, HTTPAddr: hb.HTTPAddr, PublicURL: hb.PublicURL,
			Rack: hb.Rack, FreeBytes: hb.FreeBytes, LastHeartbeatUnixNano: now.UnixNano(),
		}}
		if err := d.apply(ctx, cmd); err != nil {
			d.live.Lock()
			ls.fingerprint = ""
			d.live.Unlock()
			d.opts.Logger.Error("cannot record heartbeat", "store", id, "err", err)
			return HeartbeatAnswer{}, fmt.Errorf("directory cannot record the heartbeat: %w", err)
		}
		if st, ok := d.fsm.Store(id); ok && len(st.Suspect) > 0 {
			d.opts.Logger.Warn("store reports volumes this directory never allocated; not adopted, check the store",
				"store", id, "vids", st.Suspect, "vid_mark", d.fsm.VidMark())
		}
	}

	for _, c := range hb.Corrupt {
		d.metrics.corruptReports.Inc()
		d.opts.Logger.Warn("store reports a corrupt needle", "store", id, "vid", c.Vid, "key", fmt.Sprintf("%x", c.Key),
			"size_code", c.SizeCode, "offset", c.Offset, "detail", c.Detail,
			"detected", c.Detected.UTC().Format(time.RFC3339Nano))
	}

	ans := HeartbeatAnswer{Interval: d.opts.HeartbeatInterval}
	// Replicas the directory holds read-only but the store still writes.
	for _, r := range reports {
		if r.State != StateWritable {
			continue
		}
		v, ok := d.fsm.Volume(r.Vid)
		if !ok || v.Allocating || v.State == StateWritable {
			continue
		}
		ans.Commands = append(ans.Commands, StoreCommand{Kind: CommandMarkReadOnly, Vid: r.Vid, Reason: cmp.Or(v.Reason, "directory")})
	}
	for _, vid := range d.dueCompactions(id, reports, now) {
		d.metrics.compactionsAsked.Inc()
		d.opts.Logger.Info("asking a store to compact a volume", "store", id, "vid", vid)
		ans.Commands = append(ans.Commands, StoreCommand{Kind: CommandCompact, Vid: vid})
	}
	return ans, nil
}

// compactKey names one replica of a volume.
type compactKey struct {
	store string
	vid   uint32
}

// dueCompactions returns the read-only volumes of a store's report whose
// garbage passed the compaction threshold and that the store was not asked
// to compact within CompactRetry.
func (d *Directory) dueCompactions(store string, reports []VolumeReport, now time.Time) []uint32 {
	if d.opts.CompactThreshold <= 0 {
		return nil
	}
	var due []uint32
	d.live.Lock()
	defer d.live.Unlock()
	for _, r := range reports {
		if r.State != StateReadOnly || r.SizeBytes == 0 ||
			float64(r.DeletedBytes) < d.opts.CompactThreshold*float64(r.SizeBytes) {
			continue
		}
		k := compactKey{store, r.Vid}
		if at, ok := d.live.compactAsked[k]; ok && now.Sub(at) < d.opts.CompactRetry {
			continue
		}
		d.live.compactAsked[k] = now
		due = append(due, r.Vid)
	}
	return due
}

// fingerprint summarizes what of a report is persisted at once when it
// changes: addresses, rack, the volume set, states and reasons, and which
// volumes reached their limit.
func (d *Directory) fingerprint(hb Heartbeat) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%q %q %q %q;", hb.GRPCAddr, hb.HTTPAddr, hb.PublicURL, hb.Rack)
	for _, r := range hb.Volumes {
		limit := uint64(0)
		if v, ok := d.fsm.Volume(r.Vid); ok {
			limit = v.SizeLimit
		}
		fmt.Fprintf(&b, "%d/%s/%q/%t/%v;", r.Vid, r.State, r.Reason, r.atLimit(limit), r.EcShards)
	}
	// A store the FSM does not hold (new, or removed) is recorded at once.
	if _, ok := d.fsm.Store(hb.StoreID); !ok {
		b.WriteString("unrecorded")
	}
	return b.String()
}

// aliveLocked reports whether store id counts as alive at now: it
// heartbeated within MissedHeartbeats intervals, or this node's leadership
// started less than MissedHeartbeats intervals ago and the store has not
// reported to it since (the grace period after an election or a restart,
// while the stores find the new leader). d.live is held.
func (d *Directory) aliveLocked(id string, now, leaderSince time.Time) bool {
	window := MissedHeartbeats * d.opts.HeartbeatInterval
	if ls, ok := d.live.stores[id]; ok && ls.seen.After(leaderSince) {
		return now.Sub(ls.seen) <= window
	}
	if leaderSince.IsZero() {
		return false
	}
	_, recorded := d.fsm.Store(id)
	return recorded && now.Sub(leaderSince) <= window
}

// logDeaths logs the stores that stopped heartbeating.
func (d *Directory) logDeaths() {
	_, since := d.log.Leadership()
	now := time.Now()
	d.live.Lock()
	var died []string
	for id, ls := range d.live.stores {
		if ls.alive && !d.aliveLocked(id, now, since) {
			ls.alive = false
			died = append(died, id)
		}
	}
	d.live.Unlock()
	for _, id := range died {
		d.opts.Logger.Warn("store dead: no heartbeat", "store", id, "missed_intervals", MissedHeartbeats)
	}
}

// markReplicasReadOnly asks every live replica of v to mark it read-only,
// concurrently, and returns when all answered or ctx ended. Replicas that
// miss the call get the command with their next heartbeat.
func (d *Directory) markReplicasReadOnly(ctx context.Context, v VolumeRecord, reason string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The store prefixes "operator: " to the reasons it is given.
	reason = strings.TrimPrefix(reason, "operator: ")
	sn := d.snapshot()
	done := make(chan struct{}, len(v.Replicas))
	n := 0
	for _, r := range v.Replicas {
		st, ok := sn.stores[r.StoreID]
		if !ok || !sn.alive[r.StoreID] {
			continue
		}
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			if err := d.stores.MarkReadOnly(ctx, st, v.Vid, reason); err != nil {
				d.opts.Logger.Warn("store did not mark volume read-only; it will be asked again", "store", r.StoreID, "vid", v.Vid, "err", err)
			}
		}()
	}
	for range n {
		<-done
	}
}

// clip shortens hostile input before it is quoted in a message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
