package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

var bg = context.Background()

func newClient(t *testing.T, c *testcluster.Cluster, opts ...grpc.DialOption) *client.Client {
	t.Helper()
	cl, err := client.New(client.Options{Directory: c.DirAddr, DialOptions: opts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func images(seed byte) []client.Image {
	var ims []client.Image
	for _, s := range needle.PhotoSizes {
		ims = append(ims, client.Image{Size: s, ContentType: needle.TypeJPEG, Data: bytes.Repeat([]byte{seed, byte(s), 0x5a, 0xa5}, 300*(int(s)+1))})
	}
	return ims
}

func writePhoto(t *testing.T, cl *client.Client, ims []client.Image) needle.PhotoID {
	t.Helper()
	var id needle.PhotoID
	var err error
	// The directory may still be allocating the first volume.
	for i := 0; i < 100; i++ {
		if id, err = cl.WritePhoto(bg, ims); err == nil {
			return id
		}
	}
	t.Fatal(err)
	return id
}

func TestWriteReadDelete(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Stores: 3, Replication: 3, Secret: []byte("a secret for the client tests")})
	cl := newClient(t, c)
	ims := images(1)
	id := writePhoto(t, cl, ims)
	for _, im := range ims {
		f, err := cl.Read(bg, id, im.Size)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.Data, im.Data) || f.ContentType != "image/jpeg" || f.ETag == "" || f.LastModified == "" {
			t.Fatalf("size %v: wrong image or headers: %+v", im.Size, f.ContentType)
		}
	}
	// Every replica holds every size.
	for _, s := range c.Stores {
		v, err := s.Srv.Store().Volume(id.Vid)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range ims {
			n, _, err := v.Read(id.Key, id.Cookie, im.Size, nil)
			if err != nil || !bytes.Equal(n.Data, im.Data) {
				t.Fatalf("store %s size %v: %v", s.HB.StoreID(), im.Size, err)
			}
		}
	}
	urls, err := cl.PhotoURLs(bg, id)
	if err != nil || len(urls) != 4 || urls["m"] == "" {
		t.Fatalf("urls %v %v", urls, err)
	}
	wrong := id
	wrong.Cookie++
	if _, err := cl.Read(bg, wrong, needle.SizeThumb); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("wrong cookie: %v", err)
	}
	if err := cl.Delete(bg, id); err != nil {
		t.Fatal(err)
	}
	for _, im := range ims {
		if _, err := cl.Read(bg, id, im.Size); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("read after delete: %v", err)
		}
	}
	if err := cl.Delete(bg, id); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := cl.WritePhoto(bg, nil); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("empty photo: %v", err)
	}
}

// TestReadFailover reads through a stopped replica and a corrupt one.
func TestReadFailover(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Stores: 3, Replication: 3})
	cl := newClient(t, c)
	ims := images(2)
	id := writePhoto(t, cl, ims)
	// Stop one replica and corrupt the large image on another: the third
	// answers, every time.
	c.Stores[0].Stop()
	dat := filepath.Join(c.Stores[1].DataDir, fmt.Sprintf("%d.dat", id.Vid))
	b, err := os.ReadFile(dat)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, ims[3].Data[:64])
	if i < 0 {
		t.Fatal("image bytes not found in the volume file")
	}
	b[i+10] ^= 0xff
	if err := os.WriteFile(dat, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 3; round++ {
		f, err := cl.Read(bg, id, needle.SizeLarge)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.Data, ims[3].Data) || f.StoreID != c.Stores[2].HB.StoreID() {
			t.Fatalf("read from %s returned wrong bytes", f.StoreID)
		}
	}
}

// TestWriteRetriesOnFreshAssignment fails the first store write: the
// client retries on a new assignment and the photo is complete.
func TestWriteRetriesOnFreshAssignment(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Stores: 2, Replication: 1})
	var writes atomic.Int32
	failFirst := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/haybale.v1.Store/Write" && writes.Add(1) == 1 {
			return status.Error(codes.Unavailable, "injected replica failure")
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	cl := newClient(t, c, failFirst)
	ims := images(3)
	id := writePhoto(t, cl, ims)
	if writes.Load() < 2 {
		t.Fatalf("%d store writes: no retry happened", writes.Load())
	}
	for _, im := range ims {
		f, err := cl.Read(bg, id, im.Size)
		if err != nil || !bytes.Equal(f.Data, im.Data) {
			t.Fatalf("size %v after retry: %v", im.Size, err)
		}
	}
	// Two failures in a row give up with ErrUnavailable.
	var calls atomic.Int32
	alwaysFail := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/haybale.v1.Store/Write" {
			calls.Add(1)
			return status.Error(codes.Unavailable, "injected replica failure")
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	bad := newClient(t, c, alwaysFail)
	if _, err := bad.WritePhoto(bg, ims); !errors.Is(err, client.ErrUnavailable) || calls.Load() != 2 {
		t.Fatalf("got %v after %d writes, want ErrUnavailable after 2", err, calls.Load())
	}
}

// readsNowhere fails the test if any store serves a size of the photo.
func readsNowhere(t *testing.T, c *testcluster.Cluster, id needle.PhotoID) {
	t.Helper()
	for _, s := range c.Stores {
		v, err := s.Srv.Store().Volume(id.Vid)
		if err != nil {
			continue
		}
		for _, size := range needle.PhotoSizes {
			if _, _, err := v.Read(id.Key, id.Cookie, size, nil); err == nil {
				t.Fatalf("store %s serves size %v of the abandoned photo %s", s.HB.StoreID(), size, id)
			}
		}
		if !v.Deleted(id.Key, needle.SizeAll) {
			t.Fatalf("store %s has no tombstone for the abandoned photo %s", s.HB.StoreID(), id)
		}
	}
}

// TestAbandonedWriteTombstonedEverywhere fails the first attempt of a
// photo write in the two ways that used to leave live needles behind: one
// replica takes the write but its answer is lost, and another one gets the
// write only after the client gave up and sent its cleanup delete. The
// abandoned key must be deleted on every replica.
func TestAbandonedWriteTombstonedEverywhere(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Stores: 3, Replication: 3, Secret: []byte("a secret for the client tests")})
	lostAnswer, late := c.Stores[0].Srv.GRPCAddr().String(), c.Stores[1].Srv.GRPCAddr().String()
	var (
		attempts  atomic.Int32
		firstReq  atomic.Pointer[storepb.WriteRequest]
		deleted   = make(chan struct{})
		lateDone  = make(chan error, 1)
		closeOnce atomic.Bool
	)
	icpt := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		switch method {
		case "/haybale.v1.Store/Write":
			w := req.(*storepb.WriteRequest)
			if first := firstReq.Load(); first == nil {
				firstReq.CompareAndSwap(nil, w)
			}
			if firstReq.Load() != w {
				return invoker(ctx, method, req, reply, cc, opts...)
			}
			attempts.Add(1)
			switch cc.Target() {
			case lostAnswer:
				if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
					return err
				}
				return status.Error(codes.Unavailable, "injected: the answer was lost")
			case late:
				// The write reaches the store only after the cleanup.
				go func() {
					<-deleted
					lateDone <- invoker(context.Background(), method, req, new(storepb.WriteResponse), cc, opts...)
				}()
				return status.Error(codes.DeadlineExceeded, "injected: the call timed out before the write was sent")
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		case "/haybale.v1.Store/Delete":
			err := invoker(ctx, method, req, reply, cc, opts...)
			d := req.(*storepb.DeleteRequest)
			if first := firstReq.Load(); first != nil && d.GetKey() == first.GetNeedles()[0].GetKey() && cc.Target() == late && closeOnce.CompareAndSwap(false, true) {
				close(deleted)
			}
			return err
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	cl := newClient(t, c, icpt)
	ims := images(7)
	id := writePhoto(t, cl, ims)
	first := firstReq.Load()
	if first == nil || attempts.Load() == 0 {
		t.Fatal("the injected failures never ran")
	}
	abandoned := needle.PhotoID{Vid: first.GetVid(), Key: first.GetNeedles()[0].GetKey(), Cookie: first.GetNeedles()[0].GetCookie()}
	if abandoned == id {
		t.Fatal("the failed attempt was reported as the photo")
	}
	select {
	case <-deleted:
	default:
		t.Fatal("no cleanup delete reached the replica that had not seen the write")
	}
	if err := <-lateDone; status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("the write landing after the cleanup: %v, want FAILED_PRECONDITION (deleted)", err)
	}
	readsNowhere(t, c, abandoned)
	for _, im := range ims {
		f, err := cl.Read(bg, id, im.Size)
		if err != nil || !bytes.Equal(f.Data, im.Data) {
			t.Fatalf("size %v of the retried photo: %v", im.Size, err)
		}
	}
}

// TestReplicasByteIdentical checks that the replicas of one write store the
// same bytes and answer with the same ETag and Last-Modified.
func TestReplicasByteIdentical(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Stores: 3, Replication: 3})
	cl := newClient(t, c)
	ims := images(9)
	id := writePhoto(t, cl, ims)
	for _, im := range ims {
		var raw0 []byte
		var etag0, lm0 string
		for i, s := range c.Stores {
			v, err := s.Srv.Store().Volume(id.Vid)
			if err != nil {
				t.Fatal(err)
			}
			_, raw, err := v.Read(id.Key, id.Cookie, im.Size, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.Get("http://" + s.HTTPAddr() + needle.ImagePath(id, im.Size, ""))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			etag, lm := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
			if resp.StatusCode != http.StatusOK || etag == "" || lm == "" {
				t.Fatalf("store %d: %s, ETag %q, Last-Modified %q", i, resp.Status, etag, lm)
			}
			if i == 0 {
				raw0, etag0, lm0 = bytes.Clone(raw), etag, lm
				continue
			}
			if !bytes.Equal(raw, raw0) || etag != etag0 || lm != lm0 {
				t.Fatalf("size %v: store %d differs from store 0: bytes equal %v, ETag %s vs %s, Last-Modified %s vs %s",
					im.Size, i, bytes.Equal(raw, raw0), etag, etag0, lm, lm0)
			}
		}
	}
}
