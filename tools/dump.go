package tools

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// DumpRecord is one needle in Dump's output.
type DumpRecord struct {
	Offset      int64  `json:"offset"`
	Length      int    `json:"length"`
	PhotoID     string `json:"photo_id"`
	Key         uint64 `json:"key"`
	Size        string `json:"size"`
	Tombstone   bool   `json:"tombstone,omitempty"`
	ContentType string `json:"content_type"`
	DataSize    int    `json:"data_size"`
	AppendTime  string `json:"append_time"`
	Checksum    string `json:"checksum"`
	Live        bool   `json:"live"`
}

// Dump lists every intact needle of the volume file at path, one line
// each (JSON lines with out.JSON), in file order.
func Dump(ctx context.Context, path string, out Output) error {
	_, vid, err := volume.ParseDatPath(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out.W)
	out.printf("%-12s %-8s %-40s %-4s %-5s %-10s %-10s %-30s %-16s %s\n",
		"offset", "length", "photo id", "size", "kind", "type", "bytes", "appended", "checksum", "status")
	_, err = volume.InspectFile(ctx, path, volume.InspectOptions{Each: func(n volume.NeedleInfo) error {
		id := needle.PhotoID{Vid: vid, Key: n.Needle.Key, Cookie: n.Needle.Cookie}
		r := DumpRecord{
			Offset: n.Offset, Length: n.Length, PhotoID: id.String(), Key: n.Needle.Key,
			Size: n.Needle.Size.String(), Tombstone: n.Needle.IsTombstone(), ContentType: n.Needle.ContentType.MIME(),
			DataSize: len(n.Needle.Data), AppendTime: time.Unix(0, n.Needle.AppendTime).UTC().Format(time.RFC3339Nano),
			Checksum: fmt.Sprintf("%016x", n.Needle.Checksum), Live: n.Live,
		}
		if out.JSON {
			return enc.Encode(r)
		}
		kind, status := "image", "deleted"
		switch {
		case r.Tombstone:
			kind, status = "tomb", "-"
		case r.Live:
			status = "live"
		}
		_, err := fmt.Fprintf(out.W, "%-12d %-8d %-40s %-4s %-5s %-10s %-10d %-30s %-16s %s\n",
			r.Offset, r.Length, r.PhotoID, r.Size, kind, n.Needle.ContentType.Ext(), r.DataSize, r.AppendTime, r.Checksum, status)
		return err
	}})
	return err
}
