package tools

import (
	"context"

	"github.com/haybale/haybale/store/volume"
)

// ReindexResult is what Reindex reports.
type ReindexResult struct {
	Path    string `json:"path"`
	Idx     string `json:"idx"`
	Records int    `json:"records"`
}

// Reindex rebuilds the .idx of the volume file at path from the .dat alone
// and atomically replaces the old one. Run it on a stopped store.
func Reindex(ctx context.Context, path string, out Output) (ReindexResult, error) {
	res := ReindexResult{Path: path}
	dir, vid, err := volume.ParseDatPath(path)
	if err != nil {
		return res, err
	}
	res.Idx = volume.IdxPath(dir, vid)
	if res.Records, err = volume.Reindex(ctx, path, nil); err != nil {
		return res, err
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("%s: rebuilt %s with %d records\n", path, res.Idx, res.Records)
	return res, nil
}
