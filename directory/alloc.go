package directory

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"
)

// volumeSecretSize is the size of the needle secret drawn for each new
// volume (see AllocateVolumeRequest.volume_secret).
const volumeSecretSize = 8

// allocTimeout bounds one volume allocation, all stores included.
const allocTimeout = 30 * time.Second

// nearFull is the fill fraction from which a writable volume no longer
// counts as room for new photos when deciding to allocate.
const nearFull = 0.9

// allocating reports whether this node is allocating vid now.
func (d *Directory) allocating(vid uint32) bool {
	d.inFlight.Lock()
	defer d.inFlight.Unlock()
	return d.inFlight.vids[vid]
}

func (d *Directory) setAllocating(vid uint32, on bool) {
	d.inFlight.Lock()
	defer d.inFlight.Unlock()
	if on {
		d.inFlight.vids[vid] = true
	} else {
		delete(d.inFlight.vids, vid)
	}
}

// assignable returns the volumes Assign may use, and how many of them are
// below nearFull.
func (d *Directory) assignable(sn *snapshot) (vols []VolumeRecord, roomy int) {
	for _, v := range sn.volumes {
		if st, _ := d.effectiveState(sn, v); st != StateWritable {
			continue
		}
		limit := d.sizeLimit(v)
		var size uint64
		for _, r := range v.Replicas {
			size = max(size, sn.replicaState(r).SizeBytes)
		}
		if size >= limit {
			continue
		}
		vols = append(vols, v)
		if float64(size) < nearFull*float64(limit) {
			roomy++
		}
	}
	return vols, roomy
}

// growSync allocates one volume, sharing the work with concurrent callers,
// and waits for it or for ctx.
func (d *Directory) growSync(ctx context.Context) error {
	ch := d.allocs.DoChan("grow", func() (any, error) { return nil, d.allocateVolume(d.ctx) })
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// growAsync allocates volumes in the background until MinWritable have
// room, unless it already runs.
func (d *Directory) growAsync() {
	if d.ctx.Err() != nil || !d.growing.CompareAndSwap(false, true) {
		return
	}
	d.goFunc(func() {
		defer d.growing.Store(false)
		for d.ctx.Err() == nil {
			if _, roomy := d.assignable(d.snapshot()); roomy >= d.opts.MinWritable {
				return
			}
			if err := d.growSync(d.ctx); err != nil {
				if d.ctx.Err() == nil && !errors.Is(err, ErrNotLeader) {
					d.opts.Logger.Warn("cannot allocate a volume ahead of need", "err", err)
				}
				return
			}
		}
	})
}

// placement picks Replication live stores for a new volume: stores with
// MinStoreFreeBytes free, on distinct racks as far as the racks allow
// (stores without a rack label count as racks of their own), preferring the
// stores with the fewest writable volumes and then the most free space.
// Stores that are not alive (never heard from again, or removed) are never
// picked.
func (d *Directory) placement(sn *snapshot) ([]StoreRecord, error) {
	r := d.opts.Replication
	var live, roomy []StoreRecord
	for _, id := range slices.Sorted(maps.Keys(sn.stores)) {
		st := sn.stores[id]
		if !sn.alive[id] {
			continue
		}
		live = append(live, st)
		if st.FreeBytes >= d.opts.MinStoreFreeBytes {
			roomy = append(roomy, st)
		}
	}
	if len(live) < r {
		return nil, fmt.Errorf("%w: need %d live stores for replication %d, have %d", ErrUnavailable, r, r, len(live))
	}
	if len(roomy) < r {
		return nil, fmt.Errorf("%w: need %d live stores with %d bytes free for replication %d, have %d", ErrUnavailable, r, d.opts.MinStoreFreeBytes, r, len(roomy))
	}
	load := map[string]int{}
	for _, v := range sn.volumes {
		if st, _ := d.effectiveState(sn, v); st == StateWritable {
			for _, rep := range v.Replicas {
				load[rep.StoreID]++
			}
		}
	}
	rand.Shuffle(len(roomy), func(i, j int) { roomy[i], roomy[j] = roomy[j], roomy[i] })
	slices.SortStableFunc(roomy, func(a, b StoreRecord) int {
		return cmp.Or(cmp.Compare(load[a.ID], load[b.ID]), cmp.Compare(b.FreeBytes, a.FreeBytes))
	})
	var picked []StoreRecord
	racks := map[string]bool{}
	for _, st := range roomy { // first pass: one store per rack
		if len(picked) < r && (st.Rack == "" || !racks[st.Rack]) {
			picked = append(picked, st)
			racks[st.Rack] = true
		}
	}
	for _, st := range roomy { // then fill from racks already used
		if len(picked) < r && !slices.ContainsFunc(picked, func(p StoreRecord) bool { return p.ID == st.ID }) {
			picked = append(picked, st)
		}
	}
	return picked, nil
}

// allocateVolume creates one new volume on Replication stores: it records
// the volume (allocating) through the log, asks each store to create it,
// and makes it writable when all succeeded. A failed allocation leaves the
// volume read-only, so its vid is never reused; so does a leader change in
// the middle (the next leader ends it).
func (d *Directory) allocateVolume(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, allocTimeout)
	defer cancel()
	if _, _, err := d.leading(); err != nil {
		return err
	}
	sn := d.snapshot()
	stores, err := d.placement(sn)
	if err != nil {
		d.metrics.allocations.WithLabelValues("unplaceable").Inc()
		return err
	}
	limit := d.opts.VolumeSizeLimit
	// One needle secret for the volume, the same on every replica, so the
	// replicas stay byte-identical.
	secret := make([]byte, volumeSecretSize)
	if _, err := crand.Read(secret); err != nil {
		return fmt.Errorf("directory: volume secret: %w", err)
	}
	rec := VolumeRecord{SizeLimit: limit, Allocating: true, State: StateWritable, CreatedUnixNano: time.Now().UnixNano()}
	for _, st := range stores {
		rec.Replicas = append(rec.Replicas, ReplicaRecord{StoreID: st.ID, VolumeReport: VolumeReport{State: StateWritable, SizeLimit: limit}})
	}
	// A store may report an unknown vid below the mark (adopted) between
	// NextVid and the apply; then try the next one.
	for attempt := 0; ; attempt++ {
		vid, ok := d.fsm.NextVid()
		if !ok {
			return ErrVidsExhausted
		}
		rec.Vid = vid
		for i := range rec.Replicas {
			rec.Replicas[i].Vid = rec.Vid
		}
		d.setAllocating(vid, true)
		err := d.apply(ctx, Command{Type: CmdCreateVolume, Volume: &rec})
		if err == nil {
			break
		}
		d.setAllocating(vid, false)
		if !errors.Is(err, ErrVolumeExists) || attempt >= 3 {
			d.metrics.allocations.WithLabelValues("error").Inc()
			return fmt.Errorf("record new volume: %w", err)
		}
	}
	vid := rec.Vid
	defer d.setAllocating(vid, false)
	infos := make([]Allocated, len(stores))
	g, gctx := errgroup.WithContext(ctx)
	for i, st := range stores {
		g.Go(func() error {
			r, err := d.stores.AllocateVolume(gctx, st, vid, limit, secret)
			if err != nil {
				return fmt.Errorf("store %s: %w", st.ID, err)
			}
			infos[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		d.metrics.allocations.WithLabelValues("error").Inc()
		reason := "allocation failed: " + err.Error()
		d.opts.Logger.Error("volume allocation failed", "vid", vid, "err", err)
		if aerr := d.apply(d.ctx, Command{Type: CmdSetVolumeState, Vid: vid, State: StateReadOnly, Reason: reason}); aerr != nil {
			d.opts.Logger.Error("cannot record the failed allocation", "vid", vid, "err", aerr)
		}
		if v, ok := d.fsm.Volume(vid); ok {
			d.markReplicasReadOnly(d.ctx, v, reason)
		}
		return fmt.Errorf("%w: allocate volume %d: %v", ErrUnavailable, vid, err)
	}
	// Make the new replicas visible before the stores' next heartbeats,
	// and keep reports built before the acknowledgements from hiding them
	// (mergeAllocated). A store not heard from in this leadership yet gets
	// an entry that counts for nothing until it reports.
	d.live.Lock()
	for i, st := range stores {
		ls, ok := d.live.stores[st.ID]
		if !ok {
			ls = &liveStore{}
			d.live.stores[st.ID] = ls
		}
		vols := maps.Clone(ls.vols)
		if vols == nil {
			vols = map[uint32]VolumeReport{}
		}
		vols[vid] = infos[i].VolumeReport
		ls.vols = vols
		if ls.allocated == nil {
			ls.allocated = map[uint32]allocMark{}
		}
		ls.allocated[vid] = allocMark{at: time.Now(), acked: infos[i].Acknowledged}
	}
	d.live.Unlock()
	if err := d.apply(ctx, Command{Type: CmdSetVolumeState, Vid: vid, State: StateWritable}); err != nil {
		d.metrics.allocations.WithLabelValues("error").Inc()
		return fmt.Errorf("record volume %d: %w", vid, err)
	}
	d.metrics.allocations.WithLabelValues("ok").Inc()
	ids := make([]string, len(stores))
	for i, st := range stores {
		ids[i] = st.ID
	}
	d.opts.Logger.Info("volume allocated", "vid", vid, "stores", ids, "size_limit", limit)
	return nil
}
