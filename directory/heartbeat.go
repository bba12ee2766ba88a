package directory

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// liveStore is what a store reported since this process started. Its
// fields are guarded by Server.live.
type liveStore struct {
	seen        time.Time // local clock, monotonic
	req         *directorypb.HeartbeatRequest
	vols        map[uint32]*storepb.VolumeInfo
	alive       bool // as last logged by the liveness loop
	persistedAt time.Time
	fingerprint string // of the last persisted report
}

// maxStoreIDLen bounds a store id.
const maxStoreIDLen = 128

func validStoreID(id string) bool {
	if id == "" || len(id) > maxStoreIDLen {
		return false
	}
	return !strings.ContainsFunc(id, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) })
}

// Heartbeat serves a store's heartbeat stream: it records each report and
// answers it with the interval and the commands the store should carry
// out. The stream ends when the store closes it or the directory shuts
// down.
func (s *Server) Heartbeat(stream directorypb.Directory_HeartbeatServer) error {
	ctx := stream.Context()
	type received struct {
		req *directorypb.HeartbeatRequest
		err error
	}
	reqs := make(chan received)
	// Receive in a goroutine so that shutdown can end the stream; the
	// goroutine ends with the stream, whose context is cancelled when this
	// handler returns.
	go func() {
		for {
			req, err := stream.Recv()
			select {
			case reqs <- received{req, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		var r received
		select {
		case r = <-reqs:
		case <-s.baseCtx.Done():
			return status.Error(codes.Unavailable, "directory shutting down")
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err == io.EOF {
			return nil
		}
		if r.err != nil {
			return r.err
		}
		// On a TLS plane a store speaks only for the store ID its
		// certificate names.
		if err := rpc.RequireStore(ctx, r.req.GetStoreId()); err != nil {
			return err
		}
		resp, err := s.handleHeartbeat(r.req)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// handleHeartbeat records one report and builds its answer.
func (s *Server) handleHeartbeat(req *directorypb.HeartbeatRequest) (*directorypb.HeartbeatResponse, error) {
	if !validStoreID(req.GetStoreId()) {
		return nil, status.Errorf(codes.InvalidArgument, "bad store id %q (1 to %d printable characters, no spaces)", clip(req.GetStoreId()), maxStoreIDLen)
	}
	if req.GetGrpcAddr() == "" || req.GetHttpAddr() == "" {
		return nil, status.Errorf(codes.InvalidArgument, "store %s: heartbeat without grpc_addr or http_addr", req.GetStoreId())
	}
	s.metrics.heartbeats.Inc()
	now := time.Now()
	id := req.GetStoreId()

	vols := make(map[uint32]*storepb.VolumeInfo, len(req.GetVolumes()))
	reports := make([]VolumeReport, 0, len(req.GetVolumes()))
	for _, v := range req.GetVolumes() {
		if v.GetVid() == 0 {
			continue
		}
		vols[v.GetVid()] = v
		reports = append(reports, VolumeReport{
			Vid: v.GetVid(), State: v.GetState(), Reason: v.GetReadOnlyReason(),
			SizeBytes: v.GetSizeBytes(), SizeLimit: v.GetSizeLimitBytes(),
			NeedleCount: v.GetNeedleCount(), DeletedBytes: v.GetDeletedBytes(),
		})
	}
	slices.SortFunc(reports, func(a, b VolumeReport) int { return cmp.Compare(a.Vid, b.Vid) })
	fp := s.fingerprint(req, reports)

	s.live.Lock()
	ls, known := s.live.stores[id]
	if !known {
		ls = &liveStore{}
		s.live.stores[id] = ls
	}
	wasAlive := known && ls.alive
	ls.seen, ls.req, ls.vols, ls.alive = now, req, vols, true
	persist := ls.fingerprint != fp || now.Sub(ls.persistedAt) >= s.opts.PersistInterval
	if persist {
		// Claimed under the lock so concurrent streams of one store do not
		// both persist; reset below when the apply fails.
		ls.fingerprint, ls.persistedAt = fp, now
	}
	s.live.Unlock()
	if !wasAlive {
		s.opts.Logger.Info("store alive", "store", id, "grpc", req.GetGrpcAddr(), "http", req.GetHttpAddr(), "rack", req.GetRack(), "volumes", len(reports))
	}

	if persist {
		cmd := Command{Type: CmdStoreReport, Volumes: reports, Store: &StoreRecord{
			ID: id, GRPCAddr: req.GetGrpcAddr(), HTTPAddr: req.GetHttpAddr(), PublicURL: req.GetPublicUrl(),
			Rack: req.GetRack(), FreeBytes: req.GetFreeBytes(), LastHeartbeatUnixNano: now.UnixNano(),
		}}
		if err := s.fsm.Apply(cmd); err != nil {
			s.live.Lock()
			ls.fingerprint = ""
			s.live.Unlock()
			s.opts.Logger.Error("cannot record heartbeat", "store", id, "err", err)
			return nil, status.Errorf(codes.Unavailable, "directory cannot record the heartbeat: %v", err)
		}
	}

	for _, c := range req.GetCorrupt() {
		s.metrics.corruptReports.Inc()
		s.opts.Logger.Warn("store reports a corrupt needle", "store", id, "vid", c.GetVid(), "key", fmt.Sprintf("%x", c.GetKey()),
			"size_code", c.GetSizeCode(), "offset", c.GetOffset(), "detail", c.GetDetail(),
			"detected", time.Unix(0, c.GetDetectedUnixNano()).UTC().Format(time.RFC3339Nano))
	}

	resp := &directorypb.HeartbeatResponse{IntervalMs: uint32(s.opts.HeartbeatInterval / time.Millisecond)}
	// Replicas the directory holds read-only but the store still writes.
	for _, r := range reports {
		if r.State != storepb.VolumeState_VOLUME_STATE_WRITABLE {
			continue
		}
		v, ok := s.fsm.Volume(r.Vid)
		if !ok || v.Allocating || v.State == storepb.VolumeState_VOLUME_STATE_WRITABLE {
			continue
		}
		resp.Commands = append(resp.Commands, &directorypb.StoreCommand{Command: &directorypb.StoreCommand_MarkReadOnly{
			MarkReadOnly: &storepb.MarkReadOnlyRequest{Vid: r.Vid, Reason: cmp.Or(v.Reason, "directory")},
		}})
	}
	for _, vid := range s.dueCompactions(id, reports, now) {
		s.metrics.compactionsAsked.Inc()
		s.opts.Logger.Info("asking a store to compact a volume", "store", id, "vid", vid)
		resp.Commands = append(resp.Commands, &directorypb.StoreCommand{Command: &directorypb.StoreCommand_Compact{
			Compact: &storepb.CompactRequest{Vid: vid},
		}})
	}
	return resp, nil
}

// compactKey names one replica of a volume.
type compactKey struct {
	store string
	vid   uint32
}

// dueCompactions returns the read-only volumes of a store's report whose
// garbage passed the compaction threshold and that the store was not asked
// to compact within CompactRetry.
func (s *Server) dueCompactions(store string, reports []VolumeReport, now time.Time) []uint32 {
	if s.opts.CompactThreshold <= 0 {
		return nil
	}
	var due []uint32
	s.live.Lock()
	defer s.live.Unlock()
	if s.live.compactAsked == nil {
		s.live.compactAsked = map[compactKey]time.Time{}
	}
	for _, r := range reports {
		if r.State != storepb.VolumeState_VOLUME_STATE_READ_ONLY || r.SizeBytes == 0 ||
			float64(r.DeletedBytes) < s.opts.CompactThreshold*float64(r.SizeBytes) {
			continue
		}
		k := compactKey{store, r.Vid}
		if at, ok := s.live.compactAsked[k]; ok && now.Sub(at) < s.opts.CompactRetry {
			continue
		}
		s.live.compactAsked[k] = now
		due = append(due, r.Vid)
	}
	return due
}

// fingerprint summarizes what of a report is persisted at once when it
// changes: addresses, rack, the volume set, states and reasons, and which
// volumes reached their limit.
func (s *Server) fingerprint(req *directorypb.HeartbeatRequest, reports []VolumeReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%q %q %q %q;", req.GetGrpcAddr(), req.GetHttpAddr(), req.GetPublicUrl(), req.GetRack())
	for _, r := range reports {
		limit := uint64(0)
		if v, ok := s.fsm.Volume(r.Vid); ok {
			limit = v.SizeLimit
		}
		fmt.Fprintf(&b, "%d/%d/%q/%t;", r.Vid, r.State, r.Reason, r.atLimit(limit))
	}
	return b.String()
}

// alive reports whether store id heartbeated within MissedHeartbeats
// intervals.
func (s *Server) alive(id string) bool {
	s.live.Lock()
	defer s.live.Unlock()
	return s.aliveLocked(id, time.Now())
}

func (s *Server) aliveLocked(id string, now time.Time) bool {
	ls, ok := s.live.stores[id]
	return ok && now.Sub(ls.seen) <= MissedHeartbeats*s.opts.HeartbeatInterval
}

// livenessLoop logs stores that die or come back; liveness itself is
// computed from the last heartbeat whenever it is needed.
func (s *Server) livenessLoop() {
	t := time.NewTicker(s.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-s.baseCtx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		s.live.Lock()
		var died []string
		for id, ls := range s.live.stores {
			if ls.alive && !s.aliveLocked(id, now) {
				ls.alive = false
				died = append(died, id)
			}
		}
		s.live.Unlock()
		for _, id := range died {
			s.opts.Logger.Warn("store dead: no heartbeat", "store", id, "missed_intervals", MissedHeartbeats)
		}
	}
}

// markReplicasReadOnly asks every live replica of v to mark it read-only,
// concurrently, and returns when all answered or ctx ended. Replicas that
// miss the call get the command with their next heartbeat.
func (s *Server) markReplicasReadOnly(ctx context.Context, v VolumeRecord, reason string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The store prefixes "operator: " to the reasons it is given.
	reason = strings.TrimPrefix(reason, "operator: ")
	done := make(chan struct{}, len(v.Replicas))
	n := 0
	for _, r := range v.Replicas {
		st, ok := s.fsm.Store(r.StoreID)
		if !ok || !s.alive(r.StoreID) {
			continue
		}
		c, err := s.storeClient(st.GRPCAddr)
		if err != nil {
			continue
		}
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			if _, err := c.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: v.Vid, Reason: reason}); err != nil {
				s.opts.Logger.Warn("store did not mark volume read-only; it will be asked again", "store", r.StoreID, "vid", v.Vid, "err", err)
			}
		}()
	}
	for range n {
		<-done
	}
}

// clip shortens hostile input before it is quoted in a message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
