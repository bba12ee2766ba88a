package tools

import (
	"archive/tar"
	"context"

	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// ExportResult is what Export reports.
type ExportResult struct {
	Path   string `json:"path"`
	Images int    `json:"images"`
	Bytes  int64  `json:"bytes"`
}

// ExportName is the file name an exported image gets:
// "<photo ID>.<size letter>.<ext>", e.g. "7-1f4a9-8c3e77d2a1b0c4f5.m.jpg".
func ExportName(id needle.PhotoID, size needle.SizeCode, ct needle.ContentType) string {
	name := id.String() + "." + size.String()
	if ext := ct.Ext(); ext != "" {
		name += "." + ext
	}
	return name
}

// Export writes every live image of the volume file at path into toDir,
// named by ExportName. Existing files of the same name are replaced.
func Export(ctx context.Context, path, toDir string, out Output) (ExportResult, error) {
	if err := os.MkdirAll(toDir, 0o755); err != nil {
		return ExportResult{Path: path}, err
	}
	return export(ctx, path, out, func(name string, data []byte, _ time.Time) error {
		return os.WriteFile(filepath.Join(toDir, name), data, 0o644)
	})
}

// ExportTar writes every live image of the volume file at path to w as a
// tar stream, with the names ExportName gives and the append times as
// modification times. The report goes to out (use a writer other than w).
func ExportTar(ctx context.Context, path string, w io.Writer, out Output) (ExportResult, error) {
	tw := tar.NewWriter(w)
	res, err := export(ctx, path, out, func(name string, data []byte, mtime time.Time) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	})
	if cerr := tw.Close(); err == nil {
		err = cerr
	}
	return res, err
}

func export(ctx context.Context, path string, out Output, put func(name string, data []byte, mtime time.Time) error) (ExportResult, error) {
	res := ExportResult{Path: path}
	_, vid, err := volume.ParseDatPath(path)
	if err != nil {
		return res, err
	}
	prog, done := out.progress("export " + path)
	_, err = volume.InspectFile(ctx, path, volume.InspectOptions{Progress: prog, Each: func(n volume.NeedleInfo) error {
		if !n.Live {
			return nil
		}
		id := needle.PhotoID{Vid: vid, Key: n.Needle.Key, Cookie: n.Needle.Cookie}
		if err := put(ExportName(id, n.Needle.Size, n.Needle.ContentType), n.Needle.Data, time.Unix(0, n.Needle.AppendTime)); err != nil {
			return fmt.Errorf("export %s: %w", id, err)
		}
		res.Images++
		res.Bytes += int64(len(n.Needle.Data))
		return nil
	}})
	done()
	if err != nil {
		return res, err
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("%s: exported %d images, %d bytes\n", path, res.Images, res.Bytes)
	return res, nil
}
