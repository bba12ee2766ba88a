package store

import (
	"bytes"
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// TestAllocateVolumeSecret: the secret in an allocation is the one the
// volume's superblock holds; a retried allocation must name the same one;
// a malformed one is refused; none draws a random one.
func TestAllocateVolumeSecret(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, Options{Dir: t.TempDir(), FS: vfs.Default}, ServerOptions{})
	secret := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	if _, err := ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 5, VolumeSecret: secret}); err != nil {
		t.Fatal(err)
	}
	v, err := ts.srv.store.Volume(5)
	if err != nil {
		t.Fatal(err)
	}
	if sb := v.Superblock(); !bytes.Equal(sb.Secret[:], secret) || sb.Version != volume.FormatVersion {
		t.Fatalf("superblock %+v", sb)
	}
	if _, err := ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 5, VolumeSecret: secret}); err != nil {
		t.Fatalf("retried allocation with the same secret: %v", err)
	}
	_, err = ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 5, VolumeSecret: []byte{8, 7, 6, 5, 4, 3, 2, 1}})
	wantCode(t, "allocation with another secret", err, codes.FailedPrecondition)
	for _, bad := range [][]byte{{1, 2, 3}, make([]byte, volume.SecretSize), make([]byte, 9)} {
		_, err = ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 6, VolumeSecret: bad})
		wantCode(t, "allocation with a malformed secret", err, codes.InvalidArgument)
	}
	if _, err := ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 7}); err != nil {
		t.Fatal(err)
	}
	v7, err := ts.srv.store.Volume(7)
	if err != nil {
		t.Fatal(err)
	}
	if sb := v7.Superblock(); sb.Secret == [volume.SecretSize]byte{} || sb.Secret == [volume.SecretSize]byte(secret) {
		t.Fatalf("volume allocated without a secret got %x", sb.Secret)
	}
}

// TestReplicaKeepsVolumeSecret: a replica synced from another store gets
// the source's secret with its superblock, so the two stay byte-identical
// and the replica reads the needles.
func TestReplicaKeepsVolumeSecret(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	src, err := Open(ctx, Options{Dir: "/src", FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := Open(ctx, Options{Dir: "/dst", FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	secret := []byte{0xa, 0xb, 0xc, 0xd, 0xe, 0xf, 1, 2}
	v, err := src.CreateVolumeWithSecret(ctx, 9, secret)
	if err != nil {
		t.Fatal(err)
	}
	n := &needle.Needle{Key: 1, Cookie: 2, Size: needle.SizeSmall, ContentType: needle.TypeJPEG, Data: []byte("replicated")}
	if _, err := v.Write(ctx, []*needle.Needle{n}); err != nil {
		t.Fatal(err)
	}
	nv, err := dst.ReplicateVolume(ctx, 9, "src", &volumeSource{st: src}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sb := nv.Superblock(); !bytes.Equal(sb.Secret[:], secret) {
		t.Fatalf("replica secret %x, want %x", sb.Secret, secret)
	}
	got, _, err := nv.Read(1, 2, needle.SizeSmall, nil)
	if err != nil || got.Checksum != n.Checksum {
		t.Fatalf("replica read: %v", err)
	}
	a, _ := fs.Open(volume.DatPath("/src", 9))
	b, _ := fs.Open(volume.DatPath("/dst", 9))
	defer a.Close()
	defer b.Close()
	sa, _ := a.Size()
	sbz, _ := b.Size()
	ba, bb := make([]byte, sa), make([]byte, sbz)
	a.ReadAt(ba, 0)
	b.ReadAt(bb, 0)
	if !bytes.Equal(ba, bb) {
		t.Fatal("replica bytes differ from the source")
	}
}
