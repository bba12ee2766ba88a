package directory

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/needle"
)

// Replica is where one replica of a volume lives.
type Replica struct {
	StoreID   string
	GRPCAddr  string
	HTTPAddr  string
	PublicURL string
	Rack      string
}

// Assignment is the answer of Assign: KeyCount fresh keys from KeyStart in
// volume Vid, its replicas (live ones first) and a write token for them.
type Assignment struct {
	KeyStart   uint64
	KeyCount   uint32
	Vid        uint32
	Replicas   []Replica
	WriteToken string
	Expiry     time.Time
}

// DeleteGrant is the answer of AuthorizeDelete.
type DeleteGrant struct {
	Vid        uint32
	Replicas   []Replica
	WriteToken string
	Expiry     time.Time
}

// Assign grants count fresh keys on a writable volume chosen at random
// among the assignable ones, with the volume's replicas and a write token
// for the range. It allocates a volume first when none is assignable, and
// in the background when fewer than MinWritable have room. Leader only.
func (d *Directory) Assign(ctx context.Context, count uint32) (Assignment, error) {
	if count == 0 {
		return Assignment{}, fmt.Errorf("%w: count must be at least 1", ErrInvalidArgument)
	}
	if count > d.opts.MaxAssignCount {
		return Assignment{}, fmt.Errorf("%w: count %d is above the maximum of %d per assignment", ErrInvalidArgument, count, d.opts.MaxAssignCount)
	}
	if _, _, err := d.leading(); err != nil {
		return Assignment{}, err
	}
	sn := d.snapshot()
	vols, roomy := d.assignable(sn)
	if roomy < d.opts.MinWritable {
		d.growAsync()
	}
	if len(vols) == 0 {
		if err := d.growSync(ctx); err != nil {
			return Assignment{}, err
		}
		sn = d.snapshot()
		if vols, _ = d.assignable(sn); len(vols) == 0 {
			return Assignment{}, fmt.Errorf("%w: no writable volume; retry", ErrUnavailable)
		}
	}
	v := vols[rand.IntN(len(vols))]
	first, err := d.seq.next(ctx, uint64(count))
	if err != nil {
		return Assignment{}, err
	}
	expiry := time.Now().Add(d.opts.TokenTTL)
	tok, err := d.signer.Sign(token.Claims{Kind: token.KindWrite, Vid: v.Vid, KeyStart: first, KeyCount: uint64(count), Expiry: expiry})
	if err != nil {
		return Assignment{}, fmt.Errorf("directory: sign token: %w", err)
	}
	d.metrics.assignedKeys.Add(float64(count))
	return Assignment{KeyStart: first, KeyCount: count, Vid: v.Vid, Replicas: d.replicas(sn, v), WriteToken: tok, Expiry: expiry}, nil
}

// volume returns volume vid or an invalid-argument / unknown-volume error.
// freshLog is a Log that can say whether this node's state may answer
// reads (Raft); a Log without it always may.
type freshLog interface {
	Fresh() error
}

// fresh returns nil when this node may answer reads from its state, and
// a *NotLeaderError otherwise.
func (d *Directory) fresh() error {
	if f, ok := d.log.(freshLog); ok {
		return f.Fresh()
	}
	return nil
}

func (d *Directory) volume(vid uint32) (VolumeRecord, error) {
	if vid == 0 {
		return VolumeRecord{}, fmt.Errorf("%w: vid 0", ErrInvalidArgument)
	}
	v, ok := d.fsm.Volume(vid)
	if !ok {
		return VolumeRecord{}, fmt.Errorf("%w: volume %d is unknown", ErrUnknownVolume, vid)
	}
	return v, nil
}

// Lookup describes volume vid: its state and replicas, live ones first.
// Any node whose state is fresh answers from it (see Raft.Fresh); a stale
// one answers with a *NotLeaderError.
func (d *Directory) Lookup(vid uint32) (VolumeState, []Replica, error) {
	if err := d.fresh(); err != nil {
		return 0, nil, err
	}
	v, err := d.volume(vid)
	if err != nil {
		return 0, nil, err
	}
	sn := d.snapshot()
	state, _ := d.effectiveState(sn, v)
	return state, d.replicas(sn, v), nil
}

// Stores describes every known store in id order.
func (d *Directory) Stores() []StoreInfo {
	sn := d.snapshot()
	out := make([]StoreInfo, 0, len(sn.stores))
	for _, st := range d.fsm.Stores() {
		out = append(out, d.storeInfo(sn, sn.stores[st.ID]))
	}
	return out
}

// Volumes describes every volume in vid order.
func (d *Directory) Volumes() []VolumeView {
	sn := d.snapshot()
	out := make([]VolumeView, 0, len(sn.volumes))
	for _, v := range sn.volumes {
		out = append(out, d.volumeView(sn, v))
	}
	return out
}

// maxReasonLen bounds an operator's read-only reason.
const maxReasonLen = 256

// MarkReadOnly makes volume vid read-only for good (until an operator
// changes it) and tells its live replicas; the others are told with their
// next heartbeat. A volume already beyond writable is left as it is.
// Leader only.
func (d *Directory) MarkReadOnly(ctx context.Context, vid uint32, reason string) (VolumeView, error) {
	v, err := d.volume(vid)
	if err != nil {
		return VolumeView{}, err
	}
	reason = strings.TrimSpace(reason)
	if len(reason) > maxReasonLen {
		return VolumeView{}, fmt.Errorf("%w: reason longer than %d bytes", ErrInvalidArgument, maxReasonLen)
	}
	if _, _, err := d.leading(); err != nil {
		return VolumeView{}, err
	}
	reason = "operator: " + cmp.Or(reason, "marked read-only")
	if v.State == StateWritable {
		if err := d.apply(ctx, Command{Type: CmdSetVolumeState, Vid: v.Vid, State: StateReadOnly, Reason: reason}); err != nil {
			return VolumeView{}, err
		}
		d.opts.Logger.Info("volume marked read-only", "vid", v.Vid, "reason", reason)
		v, _ = d.fsm.Volume(v.Vid)
	}
	if v.State == StateReadOnly {
		d.markReplicasReadOnly(ctx, v, v.Reason)
	}
	return d.volumeView(d.snapshot(), v), nil
}

// RemoveStore forgets store id: its record goes and it leaves the replica
// lists of its volumes (which then count as under-replicated). A store
// that heartbeats again registers anew, with no volume it held before
// the removal counted as a replica until it reports it. Leader only.
func (d *Directory) RemoveStore(ctx context.Context, id string) error {
	if !validStoreID(id) {
		return fmt.Errorf("%w: bad store id %q", ErrInvalidArgument, clip(id))
	}
	if _, _, err := d.leading(); err != nil {
		return err
	}
	if err := d.apply(ctx, Command{Type: CmdRemoveStore, StoreID: id}); err != nil {
		return err
	}
	d.live.Lock()
	delete(d.live.stores, id)
	d.live.Unlock()
	d.opts.Logger.Info("store removed", "store", id)
	return nil
}

// PhotoURLs builds a photo's image URLs, by size letter: under the CDN base
// URL when one is configured, else under the cache node that owns the
// photo's key, else under a store holding a replica (a live one when there
// is one, chosen by the photo's key so that a photo's URLs stay stable).
// Any node whose state is fresh answers from it (see Raft.Fresh).
func (d *Directory) PhotoURLs(photoID string) (needle.PhotoID, map[string]string, error) {
	id, err := needle.ParsePhotoID(photoID)
	if err != nil {
		return needle.PhotoID{}, nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := d.fresh(); err != nil {
		return needle.PhotoID{}, nil, err
	}
	v, err := d.volume(id.Vid)
	if err != nil {
		return needle.PhotoID{}, nil, err
	}
	base := d.opts.CDNURL
	if base == "" && len(d.opts.CacheNodes) > 0 {
		base = baseURL(d.opts.CacheNodes[needle.Owner(id.Key, d.opts.CacheNodes)])
	}
	if base == "" {
		sn := d.snapshot()
		reps := d.replicas(sn, v)
		if len(reps) == 0 {
			return needle.PhotoID{}, nil, fmt.Errorf("%w: volume %d has no replica", ErrUnavailable, id.Vid)
		}
		// Prefer the live replicas, which replicas lists first.
		good := reps[:1]
		for i := 1; i < len(reps) && sn.alive[reps[i].StoreID]; i++ {
			good = reps[:i+1]
		}
		ids := make([]string, len(good))
		for i, r := range good {
			ids[i] = r.StoreID
		}
		r := good[needle.Owner(id.Key, ids)]
		base = baseURL(cmp.Or(r.PublicURL, r.HTTPAddr))
	}
	sizes := needle.PhotoSizes[:]
	if d.opts.KeepOriginals {
		sizes = append(sizes[:len(sizes):len(sizes)], needle.SizeOriginal)
	}
	urls := map[string]string{}
	for _, size := range sizes {
		urls[size.Letter()] = base + needle.ImagePath(id, size, "jpg")
	}
	return id, urls, nil
}

// baseURL turns "host:port" into "http://host:port" and drops a trailing
// slash; a URL with a scheme is kept.
func baseURL(s string) string {
	s = strings.TrimRight(s, "/")
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	return s
}

// AuthorizeDelete issues a delete token for one photo (its vid, key and
// cookie) and returns its replicas, so a client can write tombstones on
// every replica. The token allows tombstones of that photo only, never
// data, and the stores check the cookie against the stored needle. While
// an erasure-coding job encodes and places the photo's volume, it answers
// ErrUnavailable: a delete then could miss the holders the directory does
// not list yet. Leader only.
func (d *Directory) AuthorizeDelete(photoID string) (DeleteGrant, error) {
	id, err := needle.ParsePhotoID(photoID)
	if err != nil {
		return DeleteGrant{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	v, err := d.volume(id.Vid)
	if err != nil {
		return DeleteGrant{}, err
	}
	// Stores keep the tombstone of a key they do not hold yet, so a token
	// for a key never handed out would delete a future upload.
	if id.Key > d.fsm.HighWater() {
		return DeleteGrant{}, fmt.Errorf("%w: key %x was never assigned", ErrInvalidArgument, id.Key)
	}
	if _, _, err := d.leading(); err != nil {
		return DeleteGrant{}, err
	}
	if d.ecMovingVid() == v.Vid {
		return DeleteGrant{}, fmt.Errorf("%w: volume %d is being erasure-coded and its holders change; retry in a moment", ErrUnavailable, v.Vid)
	}
	expiry := time.Now().Add(d.opts.TokenTTL)
	tok, err := d.signer.Sign(token.Claims{Kind: token.KindDelete, Vid: v.Vid, KeyStart: id.Key, KeyCount: 1, Cookie: id.Cookie, Expiry: expiry})
	if err != nil {
		return DeleteGrant{}, fmt.Errorf("directory: sign token: %w", err)
	}
	return DeleteGrant{Vid: v.Vid, Replicas: d.replicas(d.snapshot(), v), WriteToken: tok, Expiry: expiry}, nil
}
