package client_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
)

// TestStorePhotoWithWebP writes a photo with WebP variants given out of
// order, and checks that every replica serves each needle with the ETag
// and Last-Modified StorePhoto reported, that the variants are read at
// their .webp paths, and that a delete removes them too.
func TestStorePhotoWithWebP(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Stores: 2, Replication: 2})
	cl := newClient(t, c)
	var ims []client.Image
	for i, s := range needle.WebPSizes {
		ims = append(ims, client.Image{Size: s, ContentType: needle.TypeWebP,
			Data: append([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "), bytes.Repeat([]byte{byte(i)}, 100<<i)...)})
	}
	ims = append(ims, images(3)...)
	var st client.StoredPhoto
	var err error
	for range 100 {
		if st, err = cl.StorePhoto(bg, ims); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Checksums) != 8 || time.Since(st.AppendTime) > time.Minute || st.AppendTime.After(time.Now()) {
		t.Fatalf("StorePhoto = %+v", st)
	}
	lastMod := st.AppendTime.Truncate(time.Second).Format(http.TimeFormat)
	for _, im := range ims {
		f, err := cl.Read(bg, st.ID, im.Size)
		if err != nil {
			t.Fatal(err)
		}
		etag := fmt.Sprintf(`"%016x"`, st.Checksums[im.Size])
		if !bytes.Equal(f.Data, im.Data) || f.ContentType != im.ContentType.MIME() || f.ETag != etag || f.LastModified != lastMod {
			t.Errorf("%v: %s %s %s, want %s %s %s", im.Size, f.ContentType, f.ETag, f.LastModified, im.ContentType.MIME(), etag, lastMod)
		}
	}
	// Every replica holds the eight needles.
	for _, s := range c.Stores {
		v, err := s.Srv.Store().Volume(st.ID.Vid)
		if err != nil {
			t.Fatal(err)
		}
		if v.Status().Images < 8 {
			t.Fatalf("store %s holds %d images", s.HB.StoreID(), v.Status().Images)
		}
	}
	if err := cl.Delete(bg, st.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Read(bg, st.ID, needle.SizeMediumWebP); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("WebP read after delete: %v", err)
	}
	dup := []client.Image{ims[0], ims[0]}
	if _, err := cl.StorePhoto(bg, dup); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("a size given twice: %v", err)
	}
}
