package tools

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// TestECPolicyEncodesQuietVolumes runs the directory's automatic policy
// on an in-process cluster: once the volumes holding photos have been
// quiet for --ec-after (the directory's clock is moved, not waited for),
// the leader freezes, seals, encodes and places them by itself, and every
// photo is still served by every store with its old ETag.
func TestECPolicyEncodesQuietVolumes(t *testing.T) {
	ctx := context.Background()
	var skew atomic.Int64
	c := testcluster.Start(t, testcluster.Options{Stores: 5, Replication: 2,
		ECAfter: time.Hour, ECFullPercent: 0.01, ECCheckInterval: 50 * time.Millisecond,
		Clock: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
	cl, err := client.New(client.Options{Directory: c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	ids := map[needle.PhotoID]int{}
	vids := map[uint32]bool{}
	for k := 0; k < 12; k++ {
		id := writeOnline(t, cl, k)
		ids[id] = k
		vids[id.Vid] = true
	}
	get := func(addr string, id needle.PhotoID, size needle.SizeCode) (int, string, []byte, error) {
		resp, err := http.Get("http://" + addr + needle.ImagePath(id, size, ""))
		if err != nil {
			return 0, "", nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("ETag"), b, err
	}
	// The ETags before: from the first replica of each photo's volume.
	httpOf := map[string]string{}
	for _, s := range c.Stores {
		httpOf[s.Srv.GRPCAddr().String()] = s.HTTPAddr()
	}
	etags := map[string]string{}
	for id := range ids {
		reps, _, err := cl.Lookup(ctx, id.Vid)
		if err != nil || len(reps) == 0 {
			t.Fatalf("lookup %d: %v %v", id.Vid, reps, err)
		}
		for _, sz := range needle.PhotoSizes {
			code, etag, _, err := get(httpOf[reps[0].GRPCAddr], id, sz)
			if err != nil || code != http.StatusOK || etag == "" {
				t.Fatalf("%v/%v before: HTTP %d %v", id, sz, code, err)
			}
			etags[needle.ImagePath(id, sz, "")] = etag
		}
	}
	// Not quiet yet: nothing is touched.
	for vid := range vids {
		resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil || resp.GetState() != storepb.VolumeState_VOLUME_STATE_WRITABLE && resp.GetState() != storepb.VolumeState_VOLUME_STATE_READ_ONLY {
			t.Fatalf("volume %d before the quiet period: %v %v", vid, resp.GetState(), err)
		}
	}
	skew.Store(int64(2 * time.Hour))
	c.Eventually("volumes with photos erasure-coded", func() error {
		for vid := range vids {
			resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
			if err != nil {
				return err
			}
			if resp.GetState() != storepb.VolumeState_VOLUME_STATE_EC || len(resp.GetReplicas()) != 5 {
				return fmt.Errorf("volume %d: %v on %d stores; policy %+v", vid, resp.GetState(), len(resp.GetReplicas()), c.Dir.Status().ECPolicy)
			}
		}
		// The stores' reports can switch the record before the job
		// ends: wait for it.
		if p := c.Dir.Status().ECPolicy; p.Running != nil || len(p.Recent) < len(vids) {
			return fmt.Errorf("policy %+v", p)
		}
		return nil
	})
	st := c.Dir.Status()
	if !st.ECPolicy.Enabled || len(st.ECPolicy.Recent) < len(vids) || len(st.ECPolicy.Backoff) != 0 {
		t.Fatalf("policy status %+v", st.ECPolicy)
	}
	for _, s := range c.Stores {
		for vid := range vids {
			if _, err := s.Srv.Store().Volume(vid); err == nil {
				t.Fatalf("store %s still holds a plain replica of %d", s.HTTPAddr(), vid)
			}
			if _, err := s.Srv.Store().ECVolume(vid); err != nil {
				t.Fatalf("store %s: %v", s.HTTPAddr(), err)
			}
		}
		for id, k := range ids {
			for _, im := range onlineImages(k) {
				code, etag, b, err := get(s.HTTPAddr(), id, im.Size)
				if err != nil || code != http.StatusOK || string(b) != string(im.Data) || etag != etags[needle.ImagePath(id, im.Size, "")] {
					t.Fatalf("%v/%v on %s after the encode: HTTP %d, ETag %s (was %s), %v", id, im.Size, s.HTTPAddr(), code, etag, etags[needle.ImagePath(id, im.Size, "")], err)
				}
			}
		}
	}
}

// TestECEncodeThroughFollowers: in a directory cluster, EcEncode asked of
// a follower is forwarded to the leader and its stream relayed, and
// ECEncodeCluster given followers first finds the leader.
func TestECEncodeThroughFollowers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a directory cluster")
	}
	ctx := context.Background()
	c := testcluster.Start(t, testcluster.Options{Stores: 3, Replication: 2, Directories: 3})
	cl, err := client.New(client.Options{Directory: c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	ids := map[needle.PhotoID]int{}
	for k := 0; k < 6; k++ {
		ids[writeOnline(t, cl, k)] = k
	}
	var vid uint32
	for id := range ids {
		vid = id.Vid
	}
	if _, err := c.Directory.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: vid, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	leader := c.Leader()
	var followers []string
	for _, n := range c.Dirs {
		if n != leader {
			followers = append(followers, n.Addr)
		}
	}
	conn, err := grpc.NewClient(followers[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var stream directorypb.Directory_EcEncodeClient
	var steps []string
	var placed *directorypb.EcPlacement
	// The follower may not know the leader at once after the election,
	// and on a loaded machine the leadership may move during the job: a
	// job cut short is called again, and resumes.
	c.Eventually("EcEncode through a follower", func() error {
		placed = nil
		if stream, err = directorypb.NewDirectoryClient(conn).EcEncode(ctx, &directorypb.DirectoryEcEncodeRequest{Vid: vid, LargeBlock: 32 << 10, SmallBlock: 1 << 10}); err != nil {
			return err
		}
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				return nil
			}
			if status.Code(err) == codes.FailedPrecondition && slices.Contains(steps, "place") {
				// A run cut short on a former leader still finished its
				// store calls; the stores' reports recorded the volume
				// as EC (checked below from the stores).
				return nil
			}
			if err != nil {
				t.Logf("EcEncode through a follower: %v (after steps %v)", err, steps)
				return err
			}
			steps = append(steps, m.GetStep())
			if m.GetPlacement() != nil {
				placed = m.GetPlacement()
			}
		}
	})
	if placed != nil && len(placed.GetHolders()) != 3 {
		t.Fatalf("steps %v, placement %v", steps, placed)
	}
	for _, step := range []string{"compact", "encode", "place", "verify"} {
		if !slices.Contains(steps, step) {
			t.Errorf("no %q step in %v", step, steps)
		}
	}
	// Followers first: the call is redirected to the leader, which
	// answers that the volume is erasure-coded already.
	addrs := strings.Join(append(followers, leader.Addr), ",")
	if _, err := ECEncodeCluster(ctx, rpc.Insecure(), addrs, vid, ECEncodeOptions{}, Output{W: io.Discard}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("encoding the EC volume again: %v, want FailedPrecondition", err)
	}
	// Every shard held, and the encoder gave away what it placed. (A job
	// resumed by a new leader may place some shards on other stores than
	// the first run did: those stores then hold both.)
	c.Eventually("the volume EC on 3 holders, none with every shard", func() error {
		resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil || resp.GetState() != storepb.VolumeState_VOLUME_STATE_EC || len(resp.GetReplicas()) != 3 {
			return fmt.Errorf("lookup after the encode: %v %v", resp, err)
		}
		held := map[int]bool{}
		for _, s := range c.Stores {
			e, err := s.Srv.Store().ECVolume(vid)
			if err != nil {
				return err
			}
			local := e.Status().Local
			if len(local) < 4 || len(local) == 14 {
				return fmt.Errorf("store %s holds shards %v", s.HTTPAddr(), local)
			}
			for _, sh := range local {
				held[sh] = true
			}
		}
		if len(held) != 14 {
			return fmt.Errorf("shards held: %v", held)
		}
		return nil
	})
	// Every store serves every image of the volume, reading the shards it
	// lacks from the holders the directory cluster names (its shard peers
	// follow the cluster's nodes, not one address).
	c.Eventually("every image of the EC volume from every store", func() error {
		for _, s := range c.Stores {
			for id, k := range ids {
				if id.Vid != vid {
					continue
				}
				for _, im := range onlineImages(k) {
					if code, b := httpGet(t, s.HTTPAddr(), id, im.Size); code != http.StatusOK || !bytes.Equal(b, im.Data) {
						return fmt.Errorf("%v/%v on %s: HTTP %d, %d bytes", id, im.Size, s.HTTPAddr(), code, len(b))
					}
				}
			}
		}
		return nil
	})
}
