package tools

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/placement"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// ECDecodeClusterResult is what ECDecodeCluster reports.
type ECDecodeClusterResult struct {
	Vid uint32 `json:"vid"`
	// Source is the store holding the decoded volume the others copied;
	// Decoded is false when it already held it (an earlier, interrupted
	// run decoded it).
	Source  string `json:"source"`
	Decoded bool   `json:"decoded"`
	// Replicas are the stores now serving a plain copy, Source first.
	Replicas []string `json:"replicas"`
	// Removed are the former holders whose EC files were removed.
	Removed []string `json:"removed"`
	// Unreached are holders that are down or did not answer: they keep
	// their EC files until the decode runs again.
	Unreached []string `json:"unreached,omitempty"`
	Images    uint64   `json:"images"`
}

// ecHolder is a live store holding volume vid, as it reports it.
type ecHolder struct {
	info *directorypb.StoreInfo
	vol  *storepb.VolumeInfo
}

// aliveStores returns the stores the directory reports alive, by id.
func aliveStores(ls *directorypb.ListStoresResponse) map[string]*directorypb.StoreInfo {
	alive := map[string]*directorypb.StoreInfo{}
	for _, s := range ls.GetStores() {
		if s.GetState() == directorypb.StoreState_STORE_STATE_ALIVE {
			alive[s.GetId()] = s
		}
	}
	return alive
}

// liveHolders asks each live replica of a looked-up volume for its copy.
// It returns those that answered, and the ids of the replicas that are
// down, did not answer, or no longer hold the volume.
func liveHolders(ctx context.Context, cl *client.Client, vid uint32, look *directorypb.LookupResponse, alive map[string]*directorypb.StoreInfo) (held []ecHolder, unreached []string) {
	for _, r := range look.GetReplicas() {
		s, ok := alive[r.GetStoreId()]
		if !ok {
			unreached = append(unreached, r.GetStoreId())
			continue
		}
		sc, err := cl.Store(s.GetGrpcAddr())
		if err != nil {
			unreached = append(unreached, r.GetStoreId())
			continue
		}
		st, err := sc.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: vid})
		if err != nil || len(st.GetVolumes()) != 1 {
			if status.Code(err) != codes.NotFound {
				unreached = append(unreached, r.GetStoreId())
			}
			continue
		}
		held = append(held, ecHolder{info: s, vol: st.GetVolumes()[0]})
	}
	return held, unreached
}

// ECDecodeCluster turns the EC volume vid of the cluster whose directory
// is at dirAddr back into a replicated one with replicas copies: the live
// holder with the most shards decodes it in place (EcDecode, reading the
// other shards from its peers and applying the deletion journal, once it
// merged the other holders' with EcIndexSync), replicas
// - 1 other live stores, on other racks as far as labels allow and former
// holders first, pull verified copies of it (ReplicateVolume; a holder
// chosen first gives up its EC files), and the remaining holders remove
// their EC files (EcShardDelete with remove_volume). The directory drops
// each holder that gives the volume up and records it sealed once every
// remaining replica reports it so. Holders that are down keep their EC
// files: the volume stays recorded as EC, and the call returns an error
// naming them; run it again once they are back (a run after an
// interruption resumes from the decoded copy). Deletes should wait while
// it runs.
func ECDecodeCluster(ctx context.Context, creds *rpc.Credentials, dirAddr string, vid uint32, replicas int, out Output) (ECDecodeClusterResult, error) {
	res := ECDecodeClusterResult{Vid: vid, Replicas: []string{}, Removed: []string{}}
	if replicas < 1 {
		return res, fmt.Errorf("replicas must be at least 1, not %d", replicas)
	}
	cl, err := client.New(client.Options{Directory: dirAddr, Credentials: creds})
	if err != nil {
		return res, err
	}
	defer cl.Close()
	dir := cl.Directory()
	look, err := dir.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
	if err != nil {
		return res, fmt.Errorf("look volume %d up: %w", vid, err)
	}
	if st := look.GetState(); st != storepb.VolumeState_VOLUME_STATE_EC {
		return res, fmt.Errorf("volume %d is %v, not erasure-coded", vid, st)
	}
	ls, err := dir.ListStores(ctx, &directorypb.ListStoresRequest{})
	if err != nil {
		return res, err
	}
	alive := aliveStores(ls)
	if len(alive) < replicas {
		return res, fmt.Errorf("volume %d: %d live store(s), fewer than the %d replicas asked for", vid, len(alive), replicas)
	}
	held, unreached := liveHolders(ctx, cl, vid, look, alive)
	res.Unreached = unreached
	// The source: a holder already serving the decoded volume, else the EC
	// holder with the most shards (the fewest read from peers).
	var src *ecHolder
	plain := map[string]bool{}
	ec := map[string]bool{}
	for i, h := range held {
		switch h.vol.GetState() {
		case storepb.VolumeState_VOLUME_STATE_EC:
			ec[h.info.GetId()] = true
		case storepb.VolumeState_VOLUME_STATE_SEALED:
			plain[h.info.GetId()] = true
			if src == nil || src.vol.GetState() == storepb.VolumeState_VOLUME_STATE_EC {
				src = &held[i]
			}
			continue
		default:
			continue
		}
		if src == nil || (src.vol.GetState() == storepb.VolumeState_VOLUME_STATE_EC && len(h.vol.GetEcShardIds()) > len(src.vol.GetEcShardIds())) {
			src = &held[i]
		}
	}
	if src == nil {
		return res, fmt.Errorf("%w: no live store holds volume %d", ErrCorrupt, vid)
	}
	res.Source = src.info.GetId()
	srcAddr := src.info.GetGrpcAddr()
	if !plain[res.Source] {
		sc, err := cl.Store(srcAddr)
		if err != nil {
			return res, err
		}
		// The decode applies the source's journal: it must hold every
		// delete the other holders journaled.
		sync, err := syncECHolder(ctx, cl, srcAddr, vid)
		if err != nil {
			return res, fmt.Errorf("volume %d: sync the journal of %s before decoding: %w", vid, res.Source, err)
		}
		if sync.AddedDeletes > 0 {
			out.printf("volume %d: %d deletes journaled by other holders merged into %s before decoding\n", vid, sync.AddedDeletes, res.Source)
		}
		resp, err := sc.EcDecode(ctx, &storepb.EcDecodeRequest{Vid: vid})
		if c := status.Code(err); c == codes.DataLoss || c == codes.Unavailable {
			return res, fmt.Errorf("%w: EC decode volume %d on %s: %w", ErrCorrupt, vid, res.Source, err)
		}
		if err != nil {
			return res, fmt.Errorf("EC decode volume %d on %s: %w", vid, res.Source, err)
		}
		res.Decoded = true
		delete(ec, res.Source)
		plain[res.Source] = true
		out.printf("volume %d: decoded on %s, %d images; %d journaled deletes applied\n", vid, res.Source, resp.GetVolume().GetNeedleCount(), resp.GetDeletes())
	}
	// The other replicas: spread over racks like shards, holders first.
	var cands []placeStore
	for _, s := range ls.GetStores() {
		if alive[s.GetId()] != nil {
			id := s.GetId()
			cands = append(cands, placeStore{id: id, addr: s.GetGrpcAddr(), rack: s.GetRack(), replica: plain[id] || ec[id]})
		}
	}
	order := placement.RackOrder(cands, res.Source, 0, func(s placeStore) (string, string, bool) { return s.id, s.rack, s.replica })
	// Plain copies first among the chosen: they need no copy.
	rest := order[1:]
	slices.SortStableFunc(rest, func(a, b placeStore) int {
		return cmp.Compare(b2i(!plain[a.id]), b2i(!plain[b.id]))
	})
	targets := rest[:min(replicas-1, len(rest))]
	res.Replicas = append(res.Replicas, res.Source)
	inner := out
	if out.JSON {
		inner = Output{W: io.Discard}
	}
	for _, t := range targets {
		if !plain[t.id] {
			if ec[t.id] {
				if err := removeECVolume(ctx, cl, t.addr, vid); err != nil {
					return res, fmt.Errorf("make room for a plain copy on %s: %w", t.id, err)
				}
				delete(ec, t.id)
				res.Removed = append(res.Removed, t.id)
			}
			if _, err := ReplicaSync(ctx, creds, vid, srcAddr, t.addr, inner); err != nil {
				return res, fmt.Errorf("volume %d: copy to %s: %w (%s holds the decoded volume; run the decode again)", vid, t.id, err, res.Source)
			}
			// A pulled copy opens writable: seal it as the source is
			// (read-only, then a compaction, cheap on a compact volume,
			// records it sealed).
			sc, err := cl.Store(t.addr)
			if err != nil {
				return res, err
			}
			if _, err := sc.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: vid, Reason: "decoded from EC"}); err != nil {
				return res, fmt.Errorf("volume %d: mark the copy on %s read-only: %w", vid, t.id, err)
			}
			if _, err := CompactOnline(ctx, creds, t.addr, vid, inner); err != nil {
				return res, fmt.Errorf("volume %d: seal the copy on %s: %w", vid, t.id, err)
			}
			plain[t.id] = true
		}
		res.Replicas = append(res.Replicas, t.id)
	}
	// Holders left: their EC files go.
	for _, h := range held {
		id := h.info.GetId()
		if !ec[id] {
			continue
		}
		if err := removeECVolume(ctx, cl, h.info.GetGrpcAddr(), vid); err != nil {
			return res, fmt.Errorf("remove the EC files of volume %d from %s: %w", vid, id, err)
		}
		res.Removed = append(res.Removed, id)
		out.printf("volume %d: EC files removed from %s\n", vid, id)
	}
	if sc, err := cl.Store(srcAddr); err == nil {
		if st, err := sc.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: vid}); err == nil && len(st.GetVolumes()) == 1 {
			res.Images = st.GetVolumes()[0].GetNeedleCount()
		}
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("volume %d: replicated again on %v (%d images)\n", vid, res.Replicas, res.Images)
	if len(res.Replicas) < replicas {
		return res, fmt.Errorf("volume %d: only %d of %d replicas placed", vid, len(res.Replicas), replicas)
	}
	if len(res.Unreached) > 0 {
		return res, fmt.Errorf("volume %d: holders %v are down or did not answer and keep their EC files; the directory records the volume as EC until they give it up: run the decode again once they are back", vid, res.Unreached)
	}
	return res, nil
}

// removeECVolume has the store at addr remove every EC file of vid; a
// store that no longer holds it is fine.
func removeECVolume(ctx context.Context, cl *client.Client, addr string, vid uint32) error {
	sc, err := cl.Store(addr)
	if err != nil {
		return err
	}
	_, err = sc.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: vid, RemoveVolume: true})
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// placeStore is a candidate holder of a decoded replica.
type placeStore struct {
	id, addr, rack string
	replica        bool
}
