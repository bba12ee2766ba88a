package tools

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// ECHolderSync is what the sync of one holder's index and journal did.
type ECHolderSync struct {
	// IndexRestored is "", "fetched" or "regenerated".
	IndexRestored string   `json:"index_restored,omitempty"`
	AddedDeletes  int      `json:"added_deletes"`
	Unreached     []string `json:"unreached,omitempty"`
}

// syncECHolders has every holder in held that holds the volume in EC form
// (or failed to open it) sync its index and journal with the others
// (EcIndexSync: a lost or damaged index comes back from another holder or
// from the shards, and the deletes the others journaled are merged), one
// after the other. One round makes every journal the union of all: each
// holder reads every other, and journals only grow.
func syncECHolders(ctx context.Context, cl *client.Client, vid uint32, held []ecHolder, res *ECRebuildClusterResult, out Output) {
	for _, h := range held {
		switch h.vol.GetState() {
		case storepb.VolumeState_VOLUME_STATE_EC, storepb.VolumeState_VOLUME_STATE_FAILED:
		default:
			continue
		}
		id := h.info.GetId()
		sync, err := syncECHolder(ctx, cl, h.info.GetGrpcAddr(), vid)
		if status.Code(err) == codes.NotFound {
			continue
		}
		if err != nil {
			res.SyncFailed[id] = err.Error()
			out.printf("volume %d: sync of the index and journal on %s failed: %v\n", vid, id, err)
			continue
		}
		res.Synced[id] = sync
		if sync.IndexRestored != "" {
			out.printf("volume %d: index of %s restored (%s)\n", vid, id, sync.IndexRestored)
		}
		if sync.AddedDeletes > 0 {
			out.printf("volume %d: %d journaled deletes merged into %s\n", vid, sync.AddedDeletes, id)
		}
	}
}

// syncECHolder has the store at addr sync its index and journal of vid.
func syncECHolder(ctx context.Context, cl *client.Client, addr string, vid uint32) (ECHolderSync, error) {
	sc, err := cl.Store(addr)
	if err != nil {
		return ECHolderSync{}, err
	}
	resp, err := sc.EcIndexSync(ctx, &storepb.EcIndexSyncRequest{Vid: vid})
	if err != nil {
		return ECHolderSync{}, err
	}
	return ECHolderSync{IndexRestored: resp.GetIndexRestored(), AddedDeletes: int(resp.GetAddedDeletes()), Unreached: resp.GetUnreached()}, nil
}

// journalsAgree reports whether every live EC holder of vid holds the
// same deletes.
func journalsAgree(ctx context.Context, cl *client.Client, vid uint32, look *directorypb.LookupResponse, alive map[string]*directorypb.StoreInfo) bool {
	held, _ := liveHolders(ctx, cl, vid, look, alive)
	var first *storepb.VolumeInfo
	for _, h := range held {
		if h.vol.GetState() != storepb.VolumeState_VOLUME_STATE_EC {
			continue
		}
		if first == nil {
			first = h.vol
		} else if h.vol.GetEcDeletedCount() != first.GetEcDeletedCount() || h.vol.GetEcJournalDigest() != first.GetEcJournalDigest() {
			return false
		}
	}
	return true
}

// syncFailure returns an error naming the holders whose sync failed, or
// saying that the journals still differ, if so.
func syncFailure(vid uint32, res *ECRebuildClusterResult) error {
	if len(res.SyncFailed) > 0 {
		ids := make([]string, 0, len(res.SyncFailed))
		for id := range res.SyncFailed {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return fmt.Errorf("volume %d: the index or journal of %v could not be synced: %s", vid, ids, res.SyncFailed[ids[0]])
	}
	if !res.JournalsAgree {
		return fmt.Errorf("volume %d: the holders' journals still differ after the sync (deletes made meanwhile?); run it again", vid)
	}
	return nil
}
