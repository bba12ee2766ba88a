package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// syncDir is the folder of a data directory where replica syncs stage the
// volumes they pull. A partial pull stays there across restarts, so an
// interrupted sync resumes where it stopped.
const syncDir = ".sync"

// ErrSourceDamaged is returned by ReplicateVolume when the copy pulled from
// the source does not verify.
var ErrSourceDamaged = errors.New("store: the source's copy of the volume is damaged")

// VolumeSource is the store a replica sync copies from.
type VolumeSource interface {
	// CopyVolume streams a volume's .dat, as the store's CopyVolume RPC
	// does (see volume.Volume.CopyTo for the contract).
	CopyVolume(ctx context.Context, vid uint32, offset int64, generation uint32,
		fn func(chunk []byte, off, total int64, gen uint32) error) error
	// Tombstones returns every tombstone the volume holds now, as the
	// store's ListNeedles RPC with tombstones_only lists them.
	Tombstones(ctx context.Context, vid uint32) ([]needle.Needle, error)
}

// GRPCVolumeSource is a VolumeSource reading from another store's
// CopyVolume RPC.
type GRPCVolumeSource struct{ Client storepb.StoreClient }

// CopyVolume implements VolumeSource. A generation change is reported as
// volume.ErrGenerationChanged.
func (g GRPCVolumeSource) CopyVolume(ctx context.Context, vid uint32, offset int64, generation uint32,
	fn func(chunk []byte, off, total int64, gen uint32) error) error {
	stream, err := g.Client.CopyVolume(ctx, &storepb.CopyVolumeRequest{Vid: vid, Offset: uint64(offset), Generation: generation})
	if err != nil {
		return err
	}
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if status.Code(err) == codes.FailedPrecondition && offset > 0 {
			return fmt.Errorf("%w: %s", volume.ErrGenerationChanged, status.Convert(err).Message())
		}
		if err != nil {
			return err
		}
		if err := fn(c.GetData(), int64(c.GetOffset()), int64(c.GetTotalSize()), c.GetGeneration()); err != nil {
			return err
		}
	}
}

// Tombstones implements VolumeSource with ListNeedles.
func (g GRPCVolumeSource) Tombstones(ctx context.Context, vid uint32) ([]needle.Needle, error) {
	stream, err := g.Client.ListNeedles(ctx, &storepb.ListNeedlesRequest{Vid: vid, TombstonesOnly: true})
	if err != nil {
		return nil, err
	}
	var out []needle.Needle
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		for _, e := range resp.GetEntries() {
			if e.GetTombstone() {
				out = append(out, needle.Needle{Key: e.GetKey(), Cookie: e.GetCookie(), Size: needle.SizeCode(e.GetSizeCode()),
					Flags: needle.FlagTombstone, AppendTime: e.GetAppendTimeUnixNano()})
			}
		}
	}
}

// ReplicateProgress is called by ReplicateVolume with its phase ("copy",
// "verify") and the bytes held so far of the total.
type ReplicateProgress func(phase string, done, total int64)

// ReplicateVolume makes this store's copy of volume vid a verified copy of
// src's: it pulls the .dat into the sync folder (resuming a partial pull of
// the same generation), verifies every needle, builds its idx, and then
// swaps it in place of whatever copy the store had, open and serving.
//
// The swap removes the old idx durably before renaming the new .dat and
// idx into place, so a crash at any point leaves a .dat that the next open
// indexes correctly. The copy is a consistent prefix of the source as of
// when the pull (or its last resumption) began; for a writable volume,
// writes acknowledged after that are not in it, so sync read-only volumes
// (the directory marks a volume read-only when a replica is missing).
//
// Read-only volumes still take deletes, on both sides, while the pull
// runs. No delete is lost in the swap: before the new copy is renamed into
// place it gets, durably, every tombstone the source holds by then and
// every tombstone of the old local copy (which is retired first: deletes
// queued on it are committed, later ones wait for the new copy); once the
// new copy serves, the source's tombstones are fetched and applied once
// more. Tombstones are permanent (see volume.Volume.Tombstones), so adding
// them never undoes anything.
func (s *Store) ReplicateVolume(ctx context.Context, vid uint32, source string, src VolumeSource, progress ReplicateProgress) (*volume.Volume, error) {
	if progress == nil {
		progress = func(string, int64, int64) {}
	}
	// The copy being replaced takes no more writes: what it would
	// acknowledge now would be lost in the swap.
	if old, err := s.Volume(vid); err == nil {
		if st, _ := old.State(); st == volume.StateWritable {
			if err := old.MarkReadOnly(ctx, "replica sync"); err != nil {
				return nil, fmt.Errorf("store: mark volume %d read-only for the sync: %w", vid, err)
			}
		}
	}
	fs := s.opts.FS
	stage := filepath.Join(s.opts.Dir, syncDir)
	if err := fs.MkdirAll(stage, 0o755); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := fs.SyncDir(s.opts.Dir); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	part := volume.DatPath(stage, vid)
	for attempt := 0; ; attempt++ {
		err := s.pull(ctx, vid, part, source, src, progress)
		if err == nil {
			break
		}
		if errors.Is(err, volume.ErrGenerationChanged) && attempt == 0 {
			// The source compacted since the partial pull: start over.
			s.opts.Logger.Info("source volume was compacted; pulling it again from the start", "vid", vid)
			if err := fs.Remove(part); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("store: %w", err)
			}
			continue
		}
		return nil, err
	}

	// Verify every needle of what was pulled, then index it.
	rep, err := volume.InspectFile(ctx, part, volume.InspectOptions{FS: fs, Progress: func(done, total int64) {
		progress("verify", done, total)
	}})
	if err != nil {
		return nil, fmt.Errorf("store: verify pulled volume %d: %w", vid, err)
	}
	if !rep.Healthy() || rep.Vid != vid {
		fs.Remove(part)
		return nil, fmt.Errorf("%w: volume %d: %d damaged stretch(es), torn tail %v", ErrSourceDamaged, vid, len(rep.Corrupt), rep.TornTail != nil)
	}
	if _, err := volume.Reindex(ctx, part, fs); err != nil {
		return nil, fmt.Errorf("store: index pulled volume %d: %w", vid, err)
	}
	if err := fs.Remove(checkpointPath(part)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("store: %w", err)
	}

	// The source's tombstones, including those taken since the pull's
	// snapshot.
	srcTombs, err := src.Tombstones(ctx, vid)
	if err != nil {
		return nil, fmt.Errorf("store: list the source's tombstones of volume %d: %w", vid, err)
	}

	// Swap it in.
	v, err := s.swapIn(ctx, vid, stage, part, srcTombs)
	if err != nil {
		return nil, err
	}
	// Deletes the source took between the listing above and the swap.
	if srcTombs, err = src.Tombstones(ctx, vid); err != nil {
		return nil, fmt.Errorf("store: list the source's tombstones of volume %d after the swap: %w", vid, err)
	}
	if n, err := v.ApplyTombstones(ctx, srcTombs); err != nil {
		return nil, fmt.Errorf("store: apply the source's tombstones to volume %d: %w", vid, err)
	} else if n > 0 {
		s.opts.Logger.Info("applied deletes the source took during the swap", "vid", vid, "tombstones", n)
	}
	s.opts.Logger.Info("volume replicated", "vid", vid, "images", v.Status().Images, "bytes", v.Status().Size)
	return v, nil
}

// swapIn retires the open copy of volume vid (if any), adds to the staged
// copy every tombstone of the old copy and of tombs, and puts the staged
// copy in service in place of the old one. If the staged copy cannot take
// the tombstones, the old copy is reopened and keeps serving.
func (s *Store) swapIn(ctx context.Context, vid uint32, stage, part string, tombs []needle.Needle) (*volume.Volume, error) {
	fs := s.opts.FS
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil, volume.ErrClosed
	}
	dat, idx := volume.DatPath(s.opts.Dir, vid), volume.IdxPath(s.opts.Dir, vid)
	if old, ok := s.mu.volumes[vid]; ok {
		delete(s.mu.volumes, vid)
		oldTombs, err := old.Retire(ctx)
		if err != nil {
			s.reopenLocked(ctx, vid)
			return nil, fmt.Errorf("store: take the deletes of the replaced copy of volume %d: %w", vid, err)
		}
		tombs = append(tombs, oldTombs...)
	}
	if err := applyStaged(ctx, stage, vid, s.volumeOptions(), tombs); err != nil {
		if _, err := fs.Stat(dat); err == nil {
			s.reopenLocked(ctx, vid)
		}
		return nil, fmt.Errorf("store: add the tombstones to the pulled copy of volume %d: %w", vid, err)
	}
	if err := fs.Remove(idx); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := fs.SyncDir(s.opts.Dir); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := fs.Rename(part, dat); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := fs.Rename(volume.IdxPath(stage, vid), idx); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := fs.SyncDir(s.opts.Dir); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	v, err := volume.Open(ctx, s.opts.Dir, vid, s.volumeOptions())
	if err != nil {
		s.mu.failed[vid] = err
		return nil, fmt.Errorf("store: open replicated volume %d: %w", vid, err)
	}
	delete(s.mu.failed, vid)
	s.mu.volumes[vid] = v
	return v, nil
}

// applyStaged opens the staged copy of volume vid, appends the tombstones
// it lacks durably, and closes it.
func applyStaged(ctx context.Context, stage string, vid uint32, opts volume.Options, tombs []needle.Needle) error {
	sv, err := volume.Open(ctx, stage, vid, opts)
	if err != nil {
		return err
	}
	_, err = sv.ApplyTombstones(ctx, tombs)
	if cerr := sv.Close(); err == nil {
		err = cerr
	}
	return err
}

// reopenLocked puts the copy of volume vid in the data folder back in
// service after a failed swap. s.mu must be held.
func (s *Store) reopenLocked(ctx context.Context, vid uint32) {
	v, err := volume.Open(ctx, s.opts.Dir, vid, s.volumeOptions())
	if err != nil {
		s.mu.failed[vid] = err
		s.opts.Logger.Error("cannot reopen a volume after a failed replica swap", "vid", vid, "err", err)
		return
	}
	s.mu.volumes[vid] = v
}

// checkpointEvery is how many pulled bytes are synced between updates of
// the resume checkpoint.
const checkpointEvery = 64 << 20

// checkpointPath names the file beside a partial pull that records which
// source it comes from and how much of it is durable: "<source>\n<offset>\n".
func checkpointPath(part string) string { return part + ".from" }

// readCheckpoint returns the durable offset of a partial pull from source,
// or 0 when there is no usable checkpoint for that source.
func (s *Store) readCheckpoint(part, source string) int64 {
	f, err := s.opts.FS.Open(checkpointPath(part))
	if err != nil {
		return 0
	}
	defer f.Close()
	b := make([]byte, 1024)
	n, _ := f.ReadAt(b, 0)
	lines := strings.Split(string(b[:n]), "\n")
	if len(lines) < 2 || lines[0] != source {
		return 0
	}
	off, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || off < 0 {
		return 0
	}
	return off
}

// pull copies the source's .dat into part, resuming from the last
// checkpoint when part holds a partial pull from the same source (another
// replica's bytes are laid out differently, and bytes past the checkpoint
// may not have reached the disk).
func (s *Store) pull(ctx context.Context, vid uint32, part, source string, src VolumeSource, progress ReplicateProgress) error {
	fs := s.opts.FS
	f, err := fs.OpenReadWrite(part)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	have := min(size, s.readCheckpoint(part, source))
	var gen uint32
	if have >= volume.SuperblockSize {
		sb := make([]byte, volume.SuperblockSize)
		if _, err := f.ReadAt(sb, 0); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		super, err := volume.DecodeSuperblock(sb)
		if err != nil || super.Vid != vid {
			have = 0 // not a usable partial: start over
		} else {
			gen = super.Generation
		}
	} else {
		have = 0
	}
	if err := f.Truncate(have); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if have > 0 {
		s.opts.Logger.Info("resuming a partial replica pull", "vid", vid, "from", have, "source", source)
	}
	checkpoint := func(off int64) error {
		if err := f.Sync(); err != nil {
			return err
		}
		return vfs.WriteFileAtomic(fs, checkpointPath(part), fmt.Appendf(nil, "%s\n%d\n", source, off))
	}
	if err := checkpoint(have); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	last, written := have, have
	err = src.CopyVolume(ctx, vid, have, gen, func(chunk []byte, off, total int64, _ uint32) error {
		if _, err := f.WriteAt(chunk, off); err != nil {
			return err
		}
		end := off + int64(len(chunk))
		written = end
		if end-last >= checkpointEvery {
			if err := checkpoint(end); err != nil {
				return err
			}
			last = end
		}
		progress("copy", end, total)
		return nil
	})
	if err != nil {
		// Interrupted (the source went away, the call was cancelled):
		// make what arrived durable so the next pull resumes after it.
		if written > last {
			if cerr := checkpoint(written); cerr != nil {
				s.opts.Logger.Warn("cannot record how far a replica pull got", "vid", vid, "err", cerr)
			}
		}
		return fmt.Errorf("store: pull volume %d: %w", vid, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return fs.SyncDir(filepath.Dir(part))
}
