package tools

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haybale/haybale/client"
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
