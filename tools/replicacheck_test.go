package tools

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// TestReplicaCheckFindsAndRepairs runs the replica check on a cluster of
// three replicas: healthy replicas report nothing; then photos and deletes
// that one or two replicas lack are found and repaired byte for byte, and
// different images under one key are reported and never overwritten.
func TestReplicaCheckFindsAndRepairs(t *testing.T) {
	ctx := context.Background()
	secret := []byte("a secret for the replica check tests")
	c := testcluster.Start(t, testcluster.Options{Stores: 3, Replication: 3, Secret: secret})
	cl, err := client.New(client.Options{Directory: c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var ids []needle.PhotoID
	for k := 1; k <= 6; k++ {
		ids = append(ids, writeOnline(t, cl, k))
	}
	if err := cl.Delete(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	vid := ids[1].Vid
	signer, err := token.NewSigner(secret)
	if err != nil {
		t.Fatal(err)
	}
	opts := ReplicaCheckOptions{Vids: []uint32{vid}, Token: func(_ context.Context, vid uint32, key, cookie uint64, tombstone bool) (string, error) {
		if tombstone {
			return signer.Sign(token.Claims{Kind: token.KindDelete, Vid: vid, KeyStart: key, KeyCount: 1, Cookie: cookie, Expiry: time.Now().Add(time.Minute)})
		}
		return signer.Sign(token.Claims{Kind: token.KindWrite, Vid: vid, KeyStart: key, KeyCount: 1, Expiry: time.Now().Add(time.Minute)})
	}}
	var buf bytes.Buffer
	res, err := ReplicaCheck(ctx, rpc.Insecure(), c.DirAddr, ReplicaCheckOptions{}, Output{W: &buf})
	if err != nil || res.Differences != 0 || len(res.Volumes) == 0 {
		t.Fatalf("healthy replicas: %v, %+v\n%s", err, res, buf.String())
	}
	for _, vc := range res.Volumes {
		if len(vc.Replicas) != 3 {
			t.Fatalf("volume %d checked on %v, want 3 replicas", vc.Vid, vc.Replicas)
		}
	}

	vols := make([]*volume.Volume, 3)
	for i, s := range c.Stores {
		if vols[i], err = s.Srv.Store().Volume(vid); err != nil {
			t.Fatal(err)
		}
	}
	at := time.Now().Add(-time.Hour).UnixNano()
	photo := func(key uint64, seed byte) []*needle.Needle {
		var ns []*needle.Needle
		for _, s := range needle.PhotoSizes {
			ns = append(ns, &needle.Needle{Key: key, Cookie: key * 31, Size: s, ContentType: needle.TypePNG,
				Data: bytes.Repeat([]byte{seed, byte(s)}, 700+int(s)*300), AppendTime: at})
		}
		return ns
	}
	write := func(key uint64, seed byte, on ...int) {
		t.Helper()
		for _, i := range on {
			if _, err := vols[i].Write(ctx, photo(key, seed)); err != nil {
				t.Fatal(err)
			}
		}
	}
	del := func(key uint64, size needle.SizeCode, on ...int) {
		t.Helper()
		for _, i := range on {
			if _, err := vols[i].DeleteAt(ctx, key, key*31, size, at+1); err != nil {
				t.Fatal(err)
			}
		}
	}
	const base = 1 << 40
	write(base+1, 1, 0, 1)    // a photo store 2 lacks
	write(base+2, 2, 0)       // a photo only store 0 has
	write(base+3, 3, 0, 1, 2) // a photo whose delete store 2 lacks
	del(base+3, needle.SizeAll, 0, 1)
	write(base+4, 4, 0, 1, 2) // one size deleted on one replica only
	del(base+4, needle.SizeMedium, 1)
	del(base+5, needle.SizeAll, 2) // a delete of a key nobody holds

	buf.Reset()
	res, err = ReplicaCheck(ctx, rpc.Insecure(), c.DirAddr, opts, Output{W: &buf, JSON: true})
	if !errors.Is(err, ErrReplicasDiffer) || res.Remaining == 0 {
		t.Fatalf("check: %v, want ErrReplicasDiffer", err)
	}
	var decoded ReplicaCheckResult
	if err := json.Unmarshal(buf.Bytes(), &decoded); err != nil {
		t.Fatalf("--json output: %v\n%s", err, buf.String())
	}
	got := map[string]int{}
	for _, d := range decoded.Volumes[0].Found {
		got[fmt.Sprintf("%s %s %s lack=%d", d.Key, d.Size, d.Kind, len(d.Lack))]++
	}
	want := map[string]int{}
	for _, s := range needle.PhotoSizes {
		want[fmt.Sprintf("%x %s %s lack=1", base+1, s, DiffMissing)]++
		want[fmt.Sprintf("%x %s %s lack=2", base+2, s, DiffMissing)]++
	}
	want[fmt.Sprintf("%x all %s lack=1", base+3, DiffDeleteMissing)]++
	want[fmt.Sprintf("%x m %s lack=2", base+4, DiffDeleteMissing)]++
	want[fmt.Sprintf("%x all %s lack=2", base+5, DiffDeleteMissing)]++
	if fmt.Sprint(got) != fmt.Sprint(want) || decoded.Remaining != len(decoded.Volumes[0].Found) {
		t.Fatalf("differences:\n got %v\nwant %v\n%s", got, want, buf.String())
	}

	// Repair, then the replicas agree, byte for byte.
	opts.Repair = true
	buf.Reset()
	res, err = ReplicaCheck(ctx, rpc.Insecure(), c.DirAddr, opts, Output{W: &buf})
	if err != nil || res.Differences != len(decoded.Volumes[0].Found) || res.Repaired != res.Differences || res.Remaining != 0 {
		t.Fatalf("repair: %v, %+v\n%s", err, res, buf.String())
	}
	t.Logf("repair:\n%s", buf.String())
	for _, key := range []uint64{base + 1, base + 2} {
		for _, n := range photo(key, byte(key-base)) {
			var first []byte
			for i, v := range vols {
				_, raw, err := v.Read(key, key*31, n.Size, nil)
				if err != nil {
					t.Fatalf("store %d key %x size %v after repair: %v", i, key, n.Size, err)
				}
				if i == 0 {
					first = bytes.Clone(raw)
				} else if !bytes.Equal(raw, first) {
					t.Fatalf("store %d key %x size %v: repaired needle differs from the original", i, key, n.Size)
				}
			}
		}
	}
	for i, v := range vols {
		if v.Has(base+3, needle.SizeThumb) || v.Has(base+4, needle.SizeMedium) || !v.Has(base+4, needle.SizeLarge) || !v.Deleted(base+5, needle.SizeAll) {
			t.Fatalf("store %d: deletes not repaired", i)
		}
	}
	buf.Reset()
	if res, err := ReplicaCheck(ctx, rpc.Insecure(), c.DirAddr, ReplicaCheckOptions{}, Output{W: &buf}); err != nil || res.Differences != 0 {
		t.Fatalf("after the repair: %v, %+v\n%s", err, res, buf.String())
	}

	// Different images under one key: reported, never overwritten.
	write(base+6, 6, 0, 1)
	write(base+6, 7, 2)
	buf.Reset()
	res, err = ReplicaCheck(ctx, rpc.Insecure(), c.DirAddr, opts, Output{W: &buf})
	if !errors.Is(err, ErrReplicasDiffer) || res.Remaining != 4 {
		t.Fatalf("different images: %v, %+v\n%s", err, res, buf.String())
	}
	for _, d := range res.Volumes[0].Found {
		if d.Kind != DiffContent || d.Repaired || !slices.Equal(d.Lack, []string{c.Stores[2].HB.StoreID()}) {
			t.Fatalf("different images reported as %+v (kind %v repaired %v lack %v want %v)", d, d.Kind, d.Repaired, d.Lack, c.Stores[2].HB.StoreID())
		}
	}
	if n, _, err := vols[2].Read(base+6, (base+6)*31, needle.SizeThumb, nil); err != nil || n.Data[0] != 7 {
		t.Fatalf("the differing needle was overwritten: %v", err)
	}
}
