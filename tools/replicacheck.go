package tools

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"google.golang.org/grpc"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// ErrReplicasDiffer is returned by ReplicaCheck when differences between
// replicas remain after the check (and the repair, if asked for).
var ErrReplicasDiffer = errors.New("tools: replicas differ")

// Kinds of replica differences.
const (
	// DiffMissing: a live needle that some replicas do not have and that no
	// replica deleted. Repair writes it to them.
	DiffMissing = "missing"
	// DiffDeleteMissing: a tombstone that some replicas lack; they may
	// still serve the image. Repair deletes it there.
	DiffDeleteMissing = "delete-not-applied"
	// DiffContent: replicas hold different images for one (key, size).
	// Never repaired: a needle is never overwritten.
	DiffContent = "content-differs"
	// DiffChecksum: the same image, stored in different batches, so the
	// checksums (ETags) differ. Never repaired.
	DiffChecksum = "checksum-differs"
	// DiffDamaged: a replica's needle fails verification; sync the volume
	// from a healthy replica.
	DiffDamaged = "damaged"
	// DiffVolumeMissing: a replica does not hold the volume at all (or
	// cannot list it); sync the volume.
	DiffVolumeMissing = "volume-missing"
)

// ReplicaDifference is one difference between the replicas of a volume.
type ReplicaDifference struct {
	Vid  uint32 `json:"vid"`
	Kind string `json:"kind"`
	// Key (hex, as in photo IDs) and size letter ("all" for a whole-photo
	// tombstone); empty for DiffVolumeMissing.
	Key  string `json:"key,omitempty"`
	Size string `json:"size,omitempty"`
	// SizeCode is Size as a code (0xFFFFFFFF for "all").
	SizeCode uint32 `json:"size_code"`
	// Have and Lack are the store IDs that hold the needle or tombstone
	// and those that do not (for DiffContent and DiffChecksum: Have the
	// stores holding the version most replicas hold, Lack the others; for
	// DiffDamaged: Lack holds the damaged copies).
	Have []string `json:"have"`
	Lack []string `json:"lack"`
	// Repaired says the repair wrote what was missing; RepairError why it
	// could not.
	Repaired    bool   `json:"repaired"`
	RepairError string `json:"repair_error,omitempty"`
}

// VolumeCheck is the result of checking one volume.
type VolumeCheck struct {
	Vid        uint32              `json:"vid"`
	Replicas   []string            `json:"replicas"`
	Needles    int                 `json:"needles"`    // distinct live (key, size) seen
	Tombstones int                 `json:"tombstones"` // distinct tombstones seen
	Found      []ReplicaDifference `json:"differences"`
	// Remaining is the number of differences left: after a repair, as
	// found by a second check.
	Remaining int `json:"remaining"`
}

// ReplicaCheckResult is what ReplicaCheck reports.
type ReplicaCheckResult struct {
	Volumes     []VolumeCheck `json:"volumes"`
	Differences int           `json:"differences"`
	Repaired    int           `json:"repaired"`
	Remaining   int           `json:"remaining"`
}

// ReplicaCheckOptions tune ReplicaCheck.
type ReplicaCheckOptions struct {
	// Vids are the volumes to check; empty checks every volume the
	// directory knows.
	Vids []uint32
	// Repair copies missing needles and tombstones to the replicas that
	// lack them, through the stores' Write and Delete; it never overwrites
	// a needle.
	Repair bool
	// Token returns the token for a repair of key on volume vid: a write
	// token (tombstone false) or a delete token naming the cookie (true).
	// Nil sends no token, which stores refuse: a check without repair
	// needs none.
	Token func(ctx context.Context, vid uint32, key, cookie uint64, tombstone bool) (string, error)
}

// ReplicaCheck compares the replicas of volumes, needle by needle, like
// Haystack's pitchfork: it asks the directory at dirAddr where each volume
// lives, streams every replica's needle list (ListNeedles: live needles with
// their content hash and checksum, and tombstones) in key order, and reports
// needles missing on some replica, images or checksums that differ, damaged
// needles, and deletes not applied everywhere. With opts.Repair it copies
// missing needles (read from a replica that has them, written with their
// cookie and append time, all missing sizes of a photo in one batch, so the
// copy is byte-identical when the whole photo was missing) and missing
// tombstones, then checks the volume again. Nothing is ever overwritten.
//
// The replicas are listed one after the other, so on a writable volume a
// write in flight can show as missing on the replicas listed first; the
// repair re-reads a needle on its target before writing it, and the second
// check reports only what remains. Check read-only volumes for a clean
// picture.
//
// It returns ErrReplicasDiffer when differences remain.
//
// creds are the operator's credentials on a TLS plane (rpc.Insecure()
// otherwise).
func ReplicaCheck(ctx context.Context, creds *rpc.Credentials, dirAddr string, opts ReplicaCheckOptions, out Output) (ReplicaCheckResult, error) {
	var res ReplicaCheckResult
	conn, err := rpc.Dial(creds, dirAddr, []pki.Role{pki.RoleDirectory})
	if err != nil {
		return res, fmt.Errorf("directory %s: %w", dirAddr, err)
	}
	defer conn.Close()
	dir := directorypb.NewDirectoryClient(conn)
	vids := opts.Vids
	if len(vids) == 0 {
		lv, err := dir.ListVolumes(ctx, &directorypb.ListVolumesRequest{})
		if err != nil {
			return res, fmt.Errorf("list volumes on %s: %w", dirAddr, err)
		}
		for _, v := range lv.GetVolumes() {
			vids = append(vids, v.GetVid())
		}
	}
	stores := newStorePool(creds)
	defer stores.close()
	for _, vid := range vids {
		lk, err := dir.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil {
			return res, fmt.Errorf("look up volume %d: %w", vid, err)
		}
		var reps []replica
		for _, r := range lk.GetReplicas() {
			sc, err := stores.get(r.GetGrpcAddr())
			if err != nil {
				return res, err
			}
			reps = append(reps, replica{id: r.GetStoreId(), sc: sc})
		}
		vc, err := checkVolume(ctx, vid, reps, opts, out)
		if err != nil {
			return res, err
		}
		vc.Remaining = len(vc.Found)
		if opts.Repair && len(vc.Found) > 0 {
			again, err := checkVolume(ctx, vid, reps, ReplicaCheckOptions{}, Output{W: out.W, JSON: out.JSON, Progress: out.Progress})
			if err != nil {
				return res, err
			}
			vc.Remaining = len(again.Found)
		}
		res.Volumes = append(res.Volumes, vc)
		res.Differences += len(vc.Found)
		res.Remaining += vc.Remaining
		for _, d := range vc.Found {
			if d.Repaired {
				res.Repaired++
			}
		}
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	for _, vc := range res.Volumes {
		out.printf("volume %d: %d replicas (%s), %d needles, %d tombstones: %d differences\n",
			vc.Vid, len(vc.Replicas), strings.Join(vc.Replicas, ", "), vc.Needles, vc.Tombstones, len(vc.Found))
		for _, d := range vc.Found {
			out.printf("  %s\n", d)
		}
		if opts.Repair && len(vc.Found) > 0 {
			out.printf("volume %d: %d differences remain after the repair\n", vc.Vid, vc.Remaining)
		}
	}
	if res.Remaining > 0 {
		return res, fmt.Errorf("%w: %d differences remain in %d volume(s)", ErrReplicasDiffer, res.Remaining, len(res.Volumes))
	}
	return res, nil
}

// String describes the difference for people.
func (d ReplicaDifference) String() string {
	var b strings.Builder
	if d.Key != "" {
		fmt.Fprintf(&b, "key %s size %s: ", d.Key, d.Size)
	}
	switch d.Kind {
	case DiffMissing:
		fmt.Fprintf(&b, "missing on %s (held by %s)", list(d.Lack), list(d.Have))
	case DiffDeleteMissing:
		fmt.Fprintf(&b, "deleted on %s but not on %s", list(d.Have), list(d.Lack))
	case DiffContent:
		fmt.Fprintf(&b, "different images on %s and %s; a needle is never overwritten: decide which is right", list(d.Have), list(d.Lack))
	case DiffChecksum:
		fmt.Fprintf(&b, "the same image with other checksums (ETags) on %s and %s (written in other batches)", list(d.Have), list(d.Lack))
	case DiffDamaged:
		fmt.Fprintf(&b, "damaged on %s (intact on %s): sync the volume from a healthy replica", list(d.Lack), list(d.Have))
	case DiffVolumeMissing:
		fmt.Fprintf(&b, "volume missing or unreadable on %s: sync it from %s", list(d.Lack), list(d.Have))
	default:
		b.WriteString(d.Kind)
	}
	switch {
	case d.Repaired:
		b.WriteString(": repaired")
	case d.RepairError != "":
		fmt.Fprintf(&b, ": repair failed: %s", d.RepairError)
	}
	return b.String()
}

func list(ids []string) string {
	if len(ids) == 0 {
		return "none"
	}
	return strings.Join(ids, ", ")
}

// replica is one store holding a copy of the volume being checked.
type replica struct {
	id string
	sc storepb.StoreClient
}

// storePool shares one connection per store address.
type storePool struct {
	creds *rpc.Credentials
	conns map[string]*grpc.ClientConn
}

func newStorePool(creds *rpc.Credentials) *storePool {
	return &storePool{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

func (p *storePool) get(addr string) (storepb.StoreClient, error) {
	conn, ok := p.conns[addr]
	if !ok {
		var err error
		conn, err = rpc.Dial(p.creds, addr, []pki.Role{pki.RoleStore})
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", addr, err)
		}
		p.conns[addr] = conn
	}
	return storepb.NewStoreClient(conn), nil
}

func (p *storePool) close() {
	for _, c := range p.conns {
		c.Close()
	}
}

// cursor reads one replica's needle list in order.
type cursor struct {
	stream storepb.Store_ListNeedlesClient
	buf    []*storepb.NeedleEntry
	i      int
	total  uint64
	done   bool
}

// peek returns the next entry without consuming it; nil at the end.
func (c *cursor) peek() (*storepb.NeedleEntry, error) {
	for !c.done && c.i >= len(c.buf) {
		resp, err := c.stream.Recv()
		if errors.Is(err, io.EOF) {
			c.done = true
			break
		}
		if err != nil {
			return nil, err
		}
		c.buf, c.i, c.total = resp.GetEntries(), 0, resp.GetTotal()
	}
	if c.done {
		return nil, nil
	}
	return c.buf[c.i], nil
}

// keyView is what one replica holds of one key.
type keyView struct {
	live  map[uint32]*storepb.NeedleEntry
	tombs map[uint32]*storepb.NeedleEntry // by size code, allSizes included
}

func (k *keyView) deleted(size uint32) bool {
	if k == nil {
		return false
	}
	_, one := k.tombs[size]
	_, all := k.tombs[uint32(needle.SizeAll)]
	return one || all
}

// checkVolume compares the replicas of one volume.
func checkVolume(ctx context.Context, vid uint32, reps []replica, opts ReplicaCheckOptions, out Output) (VolumeCheck, error) {
	vc := VolumeCheck{Vid: vid}
	for _, r := range reps {
		vc.Replicas = append(vc.Replicas, r.id)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var curs []*cursor
	var live []replica // replicas whose list could be opened
	var gone []string
	for _, r := range reps {
		stream, err := r.sc.ListNeedles(ctx, &storepb.ListNeedlesRequest{Vid: vid})
		c := &cursor{stream: stream}
		if err == nil {
			_, err = c.peek()
		}
		if err != nil {
			out.printf("volume %d: cannot list the replica on %s: %v\n", vid, r.id, err)
			gone = append(gone, r.id)
			continue
		}
		curs = append(curs, c)
		live = append(live, r)
	}
	if len(gone) > 0 {
		have := make([]string, 0, len(live))
		for _, r := range live {
			have = append(have, r.id)
		}
		vc.Found = append(vc.Found, ReplicaDifference{Vid: vid, Kind: DiffVolumeMissing, Have: have, Lack: gone})
	}
	var total uint64
	for _, c := range curs {
		total += c.total
	}
	prog, end := out.progressCount(fmt.Sprintf("check volume %d", vid))
	defer end()
	var done int64
	for {
		// The smallest key at the head of any list.
		var key uint64
		found := false
		for _, c := range curs {
			e, err := c.peek()
			if err != nil {
				return vc, fmt.Errorf("volume %d: list needles: %w", vid, err)
			}
			if e != nil && (!found || e.GetKey() < key) {
				key, found = e.GetKey(), true
			}
		}
		if !found {
			break
		}
		views := make([]*keyView, len(curs))
		for i, c := range curs {
			for {
				e, err := c.peek()
				if err != nil {
					return vc, fmt.Errorf("volume %d: list needles: %w", vid, err)
				}
				if e == nil || e.GetKey() != key {
					break
				}
				c.i++
				done++
				if views[i] == nil {
					views[i] = &keyView{live: map[uint32]*storepb.NeedleEntry{}, tombs: map[uint32]*storepb.NeedleEntry{}}
				}
				if e.GetTombstone() {
					views[i].tombs[e.GetSizeCode()] = e
				} else {
					views[i].live[e.GetSizeCode()] = e
				}
			}
		}
		diffs, needles, tombs := compareKey(vid, key, live, views)
		vc.Needles += needles
		vc.Tombstones += tombs
		if opts.Repair && len(diffs) > 0 {
			repairKey(ctx, vid, key, live, views, diffs, opts)
		}
		vc.Found = append(vc.Found, diffs...)
		if prog != nil {
			prog(done, int64(total))
		}
	}
	return vc, nil
}

// sizeName names a size code in reports: its letter, or "all".
func sizeName(s uint32) string { return needle.SizeCode(s).String() }

// compareKey finds the differences between the replicas' views of one key.
// It returns them in size order, with the number of distinct live sizes
// and tombstones seen.
func compareKey(vid uint32, key uint64, reps []replica, views []*keyView) (diffs []ReplicaDifference, needles, tombs int) {
	hex := fmt.Sprintf("%x", key)
	sizes := map[uint32]bool{}
	tombSizes := map[uint32]bool{}
	for _, v := range views {
		if v == nil {
			continue
		}
		for s := range v.live {
			sizes[s] = true
		}
		for s := range v.tombs {
			tombSizes[s] = true
		}
	}
	// Deletes not applied everywhere.
	for _, s := range slices.Sorted(maps.Keys(tombSizes)) {
		tombs++
		var have, lack []string
		for i, v := range views {
			if v != nil && (v.tombs[s] != nil || v.deleted(s)) {
				have = append(have, reps[i].id)
			} else {
				lack = append(lack, reps[i].id)
			}
		}
		if len(lack) > 0 {
			diffs = append(diffs, ReplicaDifference{Vid: vid, Kind: DiffDeleteMissing, Key: hex, Size: sizeName(s), SizeCode: s, Have: have, Lack: lack})
		}
	}
	// Live needles, for the sizes no replica deleted (a replica serving a
	// deleted size is reported above).
	for _, s := range slices.Sorted(maps.Keys(sizes)) {
		needles++
		deletedSomewhere := false
		for _, v := range views {
			deletedSomewhere = deletedSomewhere || v.deleted(s)
		}
		if deletedSomewhere {
			continue
		}
		var lack, damaged []string
		versions := map[[2]uint64][]string{} // (content hash, checksum) -> stores
		var order [][2]uint64
		var intact []string
		for i, v := range views {
			var e *storepb.NeedleEntry
			if v != nil {
				e = v.live[s]
			}
			switch {
			case e == nil:
				lack = append(lack, reps[i].id)
			case e.GetDamaged() != "":
				damaged = append(damaged, reps[i].id)
			default:
				ver := [2]uint64{e.GetContentHash(), e.GetChecksum()}
				if _, ok := versions[ver]; !ok {
					order = append(order, ver)
				}
				versions[ver] = append(versions[ver], reps[i].id)
				intact = append(intact, reps[i].id)
			}
		}
		if len(lack) > 0 {
			diffs = append(diffs, ReplicaDifference{Vid: vid, Kind: DiffMissing, Key: hex, Size: sizeName(s), SizeCode: s, Have: slices.Concat(intact, damaged), Lack: lack})
		}
		if len(damaged) > 0 {
			diffs = append(diffs, ReplicaDifference{Vid: vid, Kind: DiffDamaged, Key: hex, Size: sizeName(s), SizeCode: s, Have: intact, Lack: damaged})
		}
		if len(order) > 1 {
			// The version most replicas hold comes first (Have), the
			// others after it, whatever order the directory lists them in.
			slices.SortStableFunc(order, func(a, b [2]uint64) int { return cmp.Compare(len(versions[b]), len(versions[a])) })
			kind := DiffChecksum
			for _, ver := range order[1:] {
				if ver[0] != order[0][0] {
					kind = DiffContent
				}
			}
			var others []string
			for _, ver := range order[1:] {
				others = append(others, versions[ver]...)
			}
			diffs = append(diffs, ReplicaDifference{Vid: vid, Kind: kind, Key: hex, Size: sizeName(s), SizeCode: s, Have: versions[order[0]], Lack: others})
		}
	}
	return diffs, needles, tombs
}

// repairKey copies what some replicas lack of one key: tombstones first
// (a deleted size is never copied), then the missing live sizes, all those
// one replica lacks in one Write, in size order. It marks the differences
// it repaired.
func repairKey(ctx context.Context, vid uint32, key uint64, reps []replica, views []*keyView, diffs []ReplicaDifference, opts ReplicaCheckOptions) {
	index := map[string]int{}
	for i, r := range reps {
		index[r.id] = i
	}
	// A cookie for the key, for tombstones whose own cookie was lost.
	var cookie uint64
	for _, v := range views {
		if v == nil {
			continue
		}
		for _, e := range v.live {
			if e.GetDamaged() == "" {
				cookie = e.GetCookie()
			}
		}
	}
	fail := func(d *ReplicaDifference, err error) {
		if d.RepairError == "" {
			d.RepairError = err.Error()
		}
	}
	// Missing writes, grouped by the replica that lacks them.
	type want struct {
		diff  *ReplicaDifference
		entry *storepb.NeedleEntry
		from  replica
	}
	writes := map[int][]want{}
	for di := range diffs {
		d := &diffs[di]
		switch d.Kind {
		case DiffDeleteMissing:
			var t *storepb.NeedleEntry
			for _, id := range d.Have {
				v := views[index[id]]
				if e := v.tombs[d.SizeCode]; e != nil && e.GetDamaged() == "" {
					t = e
					break
				}
				if e := v.tombs[uint32(needle.SizeAll)]; e != nil && e.GetDamaged() == "" && t == nil {
					t = &storepb.NeedleEntry{Key: key, SizeCode: d.SizeCode, Cookie: e.GetCookie(), AppendTimeUnixNano: e.GetAppendTimeUnixNano(), Tombstone: true}
				}
			}
			req := &storepb.DeleteRequest{Vid: vid, Key: key, Cookie: cookie, SizeCode: d.SizeCode}
			if t != nil {
				req.AppendTimeUnixNano = t.GetAppendTimeUnixNano()
				if t.GetCookie() != 0 {
					req.Cookie = t.GetCookie()
				}
			}
			ok := true
			for _, id := range d.Lack {
				if err := setToken(ctx, opts, vid, key, req.Cookie, true, &req.WriteToken); err != nil {
					fail(d, err)
					ok = false
					continue
				}
				if _, err := reps[index[id]].sc.Delete(ctx, req); err != nil {
					fail(d, fmt.Errorf("delete on %s: %w", id, err))
					ok = false
				}
			}
			d.Repaired = ok
		case DiffMissing:
			var src *storepb.NeedleEntry
			var from replica
			for _, id := range d.Have {
				if e := views[index[id]].live[d.SizeCode]; e != nil && e.GetDamaged() == "" {
					src, from = e, reps[index[id]]
					break
				}
			}
			if src == nil {
				fail(d, errors.New("no intact copy to read"))
				continue
			}
			for _, id := range d.Lack {
				writes[index[id]] = append(writes[index[id]], want{diff: d, entry: src, from: from})
			}
		}
	}
	for ri, ws := range writes {
		slices.SortFunc(ws, func(a, b want) int { return cmp.Compare(a.entry.GetSizeCode(), b.entry.GetSizeCode()) })
		// A write in flight during the listing may have landed since:
		// never append a second copy of what the replica now holds.
		ws = slices.DeleteFunc(ws, func(w want) bool {
			_, err := reps[ri].sc.Read(ctx, &storepb.ReadRequest{Vid: vid, Key: key, Cookie: w.entry.GetCookie(), SizeCode: w.entry.GetSizeCode()})
			return err == nil
		})
		if len(ws) == 0 {
			continue
		}
		req := &storepb.WriteRequest{Vid: vid}
		var err error
		for _, w := range ws {
			var rr *storepb.ReadResponse
			rr, err = w.from.sc.Read(ctx, &storepb.ReadRequest{Vid: vid, Key: key, Cookie: w.entry.GetCookie(), SizeCode: w.entry.GetSizeCode()})
			if err != nil {
				err = fmt.Errorf("read from %s: %w", w.from.id, err)
				break
			}
			n := rr.GetNeedle()
			req.Needles = append(req.Needles, &storepb.Needle{Key: key, Cookie: n.GetCookie(), SizeCode: n.GetSizeCode(),
				ContentType: n.GetContentType(), Data: n.GetData(), AppendTimeUnixNano: n.GetAppendTimeUnixNano()})
		}
		if err == nil {
			err = setToken(ctx, opts, vid, key, ws[0].entry.GetCookie(), false, &req.WriteToken)
		}
		if err == nil {
			if _, err = reps[ri].sc.Write(ctx, req); err != nil {
				err = fmt.Errorf("write to %s: %w", reps[ri].id, err)
			}
		}
		for _, w := range ws {
			if err != nil {
				fail(w.diff, err)
			}
		}
	}
	for di := range diffs {
		d := &diffs[di]
		if d.Kind == DiffMissing && d.RepairError == "" {
			d.Repaired = true
		}
	}
}

func setToken(ctx context.Context, opts ReplicaCheckOptions, vid uint32, key, cookie uint64, tombstone bool, dst *string) error {
	if opts.Token == nil {
		return nil
	}
	t, err := opts.Token(ctx, vid, key, cookie, tombstone)
	if err != nil {
		return fmt.Errorf("write token for key %x: %w", key, err)
	}
	*dst = t
	return nil
}
