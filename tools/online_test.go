package tools

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/store/volume"
)

func onlineImages(k int) []client.Image {
	var ims []client.Image
	for _, s := range needle.PhotoSizes {
		ims = append(ims, client.Image{Size: s, ContentType: needle.TypeJPEG, Data: imageData(uint64(k), s, 2000+int(s)*500)})
	}
	return ims
}

func writeOnline(t *testing.T, cl *client.Client, k int) needle.PhotoID {
	t.Helper()
	var err error
	for i := 0; i < 100; i++ {
		var id needle.PhotoID
		if id, err = cl.WritePhoto(context.Background(), onlineImages(k)); err == nil {
			return id
		}
	}
	t.Fatal(err)
	return needle.PhotoID{}
}

func httpGet(t *testing.T, addr string, id needle.PhotoID, size needle.SizeCode) (int, []byte) {
	t.Helper()
	resp, err := http.Get("http://" + addr + needle.ImagePath(id, size, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// photoSet is the photos a test wrote, by the seed of their images.
type photoSet struct {
	mu      sync.Mutex
	live    map[needle.PhotoID]int
	deleted []needle.PhotoID
}

func (ps *photoSet) checkOn(t *testing.T, addr string) {
	t.Helper()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for id, k := range ps.live {
		for i, im := range onlineImages(k) {
			code, b := httpGet(t, addr, id, needle.SizeCode(i))
			if code != http.StatusOK || !bytes.Equal(b, im.Data) {
				t.Fatalf("%s %v on %s: HTTP %d", id, im.Size, addr, code)
			}
		}
	}
	for _, id := range ps.deleted {
		if code, _ := httpGet(t, addr, id, needle.SizeThumb); code != http.StatusNotFound {
			t.Fatalf("deleted %s on %s: HTTP %d", id, addr, code)
		}
	}
}

func TestOnlineCompactAndReplicaSync(t *testing.T) {
	ctx := context.Background()
	c := testcluster.Start(t, testcluster.Options{Stores: 2, Replication: 2})
	cl, err := client.New(client.Options{Directory: c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ps := &photoSet{live: map[needle.PhotoID]int{}}
	for k := 0; k < 60; k++ {
		id := writeOnline(t, cl, k)
		if k%2 == 0 {
			if err := cl.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
			ps.deleted = append(ps.deleted, id)
		} else {
			ps.live[id] = k
		}
	}
	vids := map[uint32]bool{}
	for id := range ps.live {
		vids[id.Vid] = true
	}
	s0, s1 := c.Stores[0], c.Stores[1]

	// Online compaction of every volume on store 0 while reads and writes
	// go on: no read fails, every write is there afterwards.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for k := 1000; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			id, err := cl.WritePhoto(ctx, onlineImages(k))
			if err != nil {
				t.Error(err)
				return
			}
			ps.mu.Lock()
			ps.live[id] = k
			ps.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ps.mu.Lock()
			var id needle.PhotoID
			for id = range ps.live {
				break
			}
			ps.mu.Unlock()
			resp, err := http.Get("http://" + s0.HTTPAddr() + needle.ImagePath(id, needle.SizeLarge, "jpg"))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("read during compaction: HTTP %d", resp.StatusCode)
				return
			}
		}
	}()
	var reclaimed uint64
	for vid := range vids {
		var out bytes.Buffer
		res, err := CompactOnline(ctx, rpc.Insecure(), s0.Srv.GRPCAddr().String(), vid, Output{W: &out})
		if err != nil {
			t.Fatal(err)
		}
		reclaimed += res.ReclaimedBytes
		if res.Generation != 1 || !bytes.Contains(out.Bytes(), []byte("reclaimed")) {
			t.Fatalf("compaction result %+v\n%s", res, out.String())
		}
	}
	close(stop)
	wg.Wait()
	if reclaimed == 0 {
		t.Fatal("online compaction reclaimed nothing after deleting half the photos")
	}
	ps.checkOn(t, s0.HTTPAddr())
	ps.checkOn(t, s1.HTTPAddr())

	// Store 1 loses a volume file; replica sync from store 0 restores it.
	// Then the file is damaged; sync restores it again.
	var vid uint32
	for v := range vids {
		vid = v
		break
	}
	sync := func() {
		t.Helper()
		var prog bytes.Buffer
		res, err := ReplicaSync(ctx, rpc.Insecure(), vid, s0.Srv.GRPCAddr().String(), s1.Srv.GRPCAddr().String(), Output{W: io.Discard, Progress: &prog})
		if err != nil {
			t.Fatalf("sync volume %d: %v", vid, err)
		}
		if res.Images == 0 || !bytes.Contains(prog.Bytes(), []byte("100%")) {
			t.Fatalf("sync result %+v, progress:\n%s", res, prog.String())
		}
	}
	// A writable volume is refused: the source could acknowledge writes
	// the copy would miss.
	if _, err := ReplicaSync(ctx, rpc.Insecure(), vid, s0.Srv.GRPCAddr().String(), s1.Srv.GRPCAddr().String(), Output{W: io.Discard}); err == nil ||
		!strings.Contains(err.Error(), "read-only first") {
		t.Fatalf("sync of a writable volume: %v", err)
	}
	if _, err := c.Directory.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: vid, Reason: "replica repair"}); err != nil {
		t.Fatal(err)
	}
	c.Eventually("volume read-only on store 0", func() error {
		v, err := s0.Srv.Store().Volume(vid)
		if err != nil {
			return err
		}
		if st, _ := v.State(); st == volume.StateWritable {
			return fmt.Errorf("still writable")
		}
		return nil
	})
	s1.Stop()
	if err := os.Remove(volume.DatPath(s1.DataDir, vid)); err != nil {
		t.Fatal(err)
	}
	os.Remove(volume.IdxPath(s1.DataDir, vid))
	s1.Restart()
	c.WaitAlive(2)
	var someID needle.PhotoID
	for id := range ps.live {
		if id.Vid == vid {
			someID = id
			break
		}
	}
	if code, _ := httpGet(t, s1.HTTPAddr(), someID, needle.SizeThumb); code != http.StatusNotFound {
		t.Fatalf("lost volume answers HTTP %d", code)
	}
	sync()
	ps.checkOn(t, s1.HTTPAddr())

	path := volume.DatPath(s1.DataDir, vid)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := volume.SuperblockSize + 100; i < len(b); i += 997 {
		b[i] ^= 0x55
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _ := httpGet(t, s1.HTTPAddr(), someID, needle.SizeLarge); code != http.StatusInternalServerError {
		t.Fatalf("damaged volume answers HTTP %d, want 500", code)
	}
	sync()
	ps.checkOn(t, s1.HTTPAddr())
	if _, err := ReplicaSync(ctx, rpc.Insecure(), 9999, s0.Srv.GRPCAddr().String(), s1.Srv.GRPCAddr().String(), Output{W: io.Discard}); err == nil {
		t.Fatal("sync of a volume the source does not hold succeeded")
	}
}

// TestDirectoryAsksForCompaction: a read-only volume whose garbage passes
// the threshold is compacted by its stores without an operator.
func TestDirectoryAsksForCompaction(t *testing.T) {
	ctx := context.Background()
	c := testcluster.Start(t, testcluster.Options{Stores: 1, CompactThreshold: 0.3})
	cl, err := client.New(client.Options{Directory: c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var ids []needle.PhotoID
	for k := 0; k < 20; k++ {
		ids = append(ids, writeOnline(t, cl, k))
	}
	vid := ids[0].Vid
	for _, id := range ids {
		if id.Vid == vid && id.Key%2 == 0 {
			if err := cl.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := c.Directory.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: vid, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	st := c.Stores[0].Srv.Store()
	c.Eventually("volume compacted and sealed", func() error {
		v, err := st.Volume(vid)
		if err != nil {
			return err
		}
		s := v.Status()
		if s.Generation == 0 || s.State != volume.StateSealed {
			return fmt.Errorf("generation %d, state %v, deleted %d of %d bytes", s.Generation, s.State, s.Deleted, s.Size)
		}
		return nil
	})
	for _, id := range ids {
		_, err := cl.Read(ctx, id, needle.SizeMedium)
		if id.Vid == vid && id.Key%2 == 0 {
			if !errors.Is(err, client.ErrNotFound) {
				t.Fatalf("deleted %s: %v", id, err)
			}
		} else if err != nil {
			t.Fatalf("%s after compaction: %v", id, err)
		}
	}
}
