package store

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// MaxMessageSize is the largest gRPC message the store sends or accepts:
// 64 MiB of needle data plus room for the message's own fields.
const MaxMessageSize = rpc.MaxMessageSize

// WriteAuthorizer checks the token that comes with a Write or a Delete. It
// must be safe for concurrent use. *token.Signer implements it.
type WriteAuthorizer interface {
	// AuthorizeWrite returns nil when token is a write token allowing
	// data needles for every one of keys in volume vid, and an error
	// saying why not otherwise.
	AuthorizeWrite(token string, vid uint32, keys []uint64) error
	// AuthorizeDelete returns nil when token is a delete token for the
	// photo (vid, key, cookie), and an error saying why not otherwise.
	AuthorizeDelete(token string, vid uint32, key, cookie uint64) error
}

// Policy is who may call each method of the Store service (the table in
// store.proto). Write and Delete also need a token from the directory;
// the role check comes first.
var Policy = rpc.Policy{
	storepb.Store_Write_FullMethodName:           {pki.RoleGateway, pki.RoleOperator},
	storepb.Store_Delete_FullMethodName:          {pki.RoleGateway, pki.RoleOperator},
	storepb.Store_Read_FullMethodName:            {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_AllocateVolume_FullMethodName:  {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_VolumeStatus_FullMethodName:    {pki.RoleDirectory, pki.RoleOperator, pki.RoleStore},
	storepb.Store_MarkReadOnly_FullMethodName:    {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_Compact_FullMethodName:         {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_CopyVolume_FullMethodName:      {pki.RoleDirectory, pki.RoleOperator, pki.RoleStore},
	storepb.Store_ReplicateVolume_FullMethodName: {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_ListNeedles_FullMethodName:     {pki.RoleDirectory, pki.RoleOperator, pki.RoleStore},
	// Degraded reads of EC volumes read shard ranges from peer stores, and
	// a store mounting shards copies them from another store.
	storepb.Store_EcShardRead_FullMethodName:   {pki.RoleStore, pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_EcShardCopy_FullMethodName:   {pki.RoleStore, pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_EcEncode_FullMethodName:      {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_EcDecode_FullMethodName:      {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_EcShardMount_FullMethodName:  {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_EcShardDelete_FullMethodName: {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_EcRebuild_FullMethodName:     {pki.RoleDirectory, pki.RoleOperator},
	storepb.Store_EcIndexSync_FullMethodName:   {pki.RoleDirectory, pki.RoleOperator},
}

// newGRPCServer builds the gRPC server with the store service registered.
func newGRPCServer(s *Server) (*grpc.Server, error) {
	g, err := rpc.NewServer(s.opts.Credentials, Policy, rpc.ServerOptions{
		Unary:             []grpc.UnaryServerInterceptor{s.unaryInterceptor},
		ConnectionTimeout: s.opts.ReadHeaderTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	storepb.RegisterStoreServer(g, &grpcService{srv: s})
	return g, nil
}

// unaryInterceptor counts calls by method and code and turns a panic in a
// handler into an INTERNAL answer rather than a dead process.
func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.opts.Logger.Error("gRPC handler panicked", "method", info.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
		s.metrics.grpcRequests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	}()
	return handler(ctx, req)
}

// grpcService implements storepb.StoreServer over the Server's Store. It
// is safe for concurrent use; allocations are serialised by allocMu so
// that of two concurrent AllocateVolume calls for one vid, one fails.
type grpcService struct {
	storepb.UnimplementedStoreServer
	srv     *Server
	allocMu sync.Mutex
	// replicateMu runs one replica sync at a time.
	replicateMu sync.Mutex
}

// volume returns the open volume vid or a NOT_FOUND (absent) or
// UNAVAILABLE (failed to open) status.
func (g *grpcService) volume(vid uint32) (*volume.Volume, error) {
	if vid == 0 {
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	}
	v, err := g.srv.store.Volume(vid)
	switch {
	case err == nil:
		return v, nil
	case errors.Is(err, ErrVolumeNotHere):
		return nil, status.Errorf(codes.NotFound, "volume %d is not on this store", vid)
	default:
		return nil, status.Errorf(codes.FailedPrecondition, "volume %d is failed: %v", vid, err)
	}
}

// volumeError maps a volume error to the status codes store.proto lists.
func volumeError(vid uint32, err error) error {
	switch {
	case errors.Is(err, volume.ErrFull):
		return status.Errorf(codes.ResourceExhausted, "volume %d is full: %v", vid, err)
	case errors.Is(err, volume.ErrReadOnly):
		return status.Errorf(codes.FailedPrecondition, "volume %d is read-only: %v", vid, err)
	case errors.Is(err, volume.ErrDeleted):
		return status.Errorf(codes.FailedPrecondition, "volume %d: %v; a deleted image is never written again", vid, err)
	case errors.Is(err, volume.ErrInvalid):
		return status.Errorf(codes.InvalidArgument, "%v", err)
	case errors.Is(err, volume.ErrNotFound):
		return status.Errorf(codes.NotFound, "%v", err)
	case errors.Is(err, volume.ErrClosed):
		return status.Errorf(codes.Unavailable, "volume %d is closed: the store is shutting down", vid)
	case volume.IsCorruption(err):
		return status.Errorf(codes.DataLoss, "%v", err)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Errorf(codes.Internal, "volume %d: %v", vid, err)
}

// errNoAuthorizer refuses writes on a store started without the cluster
// secret.
var errNoAuthorizer = status.Error(codes.Unauthenticated, "this store has no cluster secret: it takes no writes or deletes")

func (g *grpcService) authorizeWrite(token string, vid uint32, keys []uint64) error {
	if g.srv.opts.Authorizer == nil {
		return errNoAuthorizer
	}
	if err := g.srv.opts.Authorizer.AuthorizeWrite(token, vid, keys); err != nil {
		return status.Errorf(codes.Unauthenticated, "write token refused: %v", err)
	}
	return nil
}

func (g *grpcService) authorizeDelete(token string, vid uint32, key, cookie uint64) error {
	if g.srv.opts.Authorizer == nil {
		return errNoAuthorizer
	}
	if err := g.srv.opts.Authorizer.AuthorizeDelete(token, vid, key, cookie); err != nil {
		return status.Errorf(codes.Unauthenticated, "delete token refused: %v", err)
	}
	return nil
}

// Write implements storepb.StoreServer.
func (g *grpcService) Write(ctx context.Context, req *storepb.WriteRequest) (*storepb.WriteResponse, error) {
	if req.GetVid() == 0 {
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	}
	if len(req.GetNeedles()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "empty batch")
	}
	needles := make([]*needle.Needle, len(req.Needles))
	keys := make([]uint64, len(req.Needles))
	for i, pn := range req.Needles {
		switch {
		case pn.GetKey() == 0:
			return nil, status.Errorf(codes.InvalidArgument, "needle %d: key 0", i)
		case !needle.SizeCode(pn.GetSizeCode()).Valid():
			return nil, status.Errorf(codes.InvalidArgument, "needle %d: unknown size code %d", i, pn.GetSizeCode())
		case pn.GetContentType() > 255 || !needle.ContentType(pn.GetContentType()).Valid():
			return nil, status.Errorf(codes.InvalidArgument, "needle %d: unknown content type %d", i, pn.GetContentType())
		case len(pn.GetData()) > needle.MaxDataSize:
			return nil, status.Errorf(codes.InvalidArgument, "needle %d: %d bytes of data, over the %d limit", i, len(pn.GetData()), needle.MaxDataSize)
		}
		needles[i] = &needle.Needle{
			Key:         pn.GetKey(),
			Cookie:      pn.GetCookie(),
			Size:        needle.SizeCode(pn.GetSizeCode()),
			ContentType: needle.ContentType(pn.GetContentType()),
			AppendTime:  pn.GetAppendTimeUnixNano(),
			Data:        pn.GetData(),
		}
		keys[i] = pn.GetKey()
	}
	if err := g.authorizeWrite(req.GetWriteToken(), req.GetVid(), keys); err != nil {
		return nil, err
	}
	v, err := g.volume(req.GetVid())
	if err != nil {
		return nil, err
	}
	written, err := v.Write(ctx, needles)
	if err != nil {
		return nil, volumeError(req.GetVid(), err)
	}
	resp := &storepb.WriteResponse{
		Results:         make([]*storepb.WriteResult, len(written)),
		VolumeSizeBytes: uint64(v.Status().Size),
	}
	for i, w := range written {
		resp.Results[i] = &storepb.WriteResult{
			Key:                needles[i].Key,
			SizeCode:           uint32(needles[i].Size),
			Checksum:           w.Checksum,
			Offset:             uint64(w.Offset),
			Size:               uint32(w.Length),
			AppendTimeUnixNano: needles[i].AppendTime,
		}
	}
	return resp, nil
}

// Delete implements storepb.StoreServer.
func (g *grpcService) Delete(ctx context.Context, req *storepb.DeleteRequest) (*storepb.DeleteResponse, error) {
	size := needle.SizeCode(req.GetSizeCode())
	switch {
	case req.GetVid() == 0:
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	case req.GetKey() == 0:
		return nil, status.Error(codes.InvalidArgument, "key 0")
	case !size.Valid() && size != needle.SizeAll:
		return nil, status.Errorf(codes.InvalidArgument, "unknown size code %d", req.GetSizeCode())
	}
	if err := g.authorizeDelete(req.GetWriteToken(), req.GetVid(), req.GetKey(), req.GetCookie()); err != nil {
		return nil, err
	}
	var count uint32
	var freed int64
	var err error
	// A volume closed under the delete by a replica sync's swap is
	// replaced by its new copy, and one an EC encode retired by its
	// shards: look it up again once.
	for attempt := 0; attempt < 2; attempt++ {
		var v *volume.Volume
		v, err = g.volume(req.GetVid())
		if status.Code(err) == codes.NotFound {
			if e, eerr := g.srv.store.ECVolume(req.GetVid()); eerr == nil {
				return ecDelete(ctx, e, req.GetKey(), req.GetCookie(), size)
			}
		}
		if err != nil {
			return nil, err
		}
		// Count what the tombstone will remove. Another delete racing with
		// this one may remove some first; the count is then an upper bound.
		count = 0
		for _, s := range needle.StoredSizes {
			if (size == needle.SizeAll || s == size) && v.Has(req.GetKey(), s) {
				count++
			}
		}
		freed, err = v.DeleteAt(ctx, req.GetKey(), req.GetCookie(), size, req.GetAppendTimeUnixNano())
		if !errors.Is(err, volume.ErrClosed) {
			break
		}
	}
	switch {
	case errors.Is(err, volume.ErrNotFound):
		return &storepb.DeleteResponse{}, nil
	case err != nil:
		return nil, volumeError(req.GetVid(), err)
	}
	if freed == 0 {
		count = 0 // already deleted, or deleted meanwhile by another call
	}
	return &storepb.DeleteResponse{DeletedCount: count, FreedBytes: uint64(freed)}, nil
}

// Read implements storepb.StoreServer.
func (g *grpcService) Read(ctx context.Context, req *storepb.ReadRequest) (*storepb.ReadResponse, error) {
	size := needle.SizeCode(req.GetSizeCode())
	switch {
	case req.GetKey() == 0:
		return nil, status.Error(codes.InvalidArgument, "key 0")
	case !size.Valid():
		return nil, status.Errorf(codes.InvalidArgument, "unknown size code %d", req.GetSizeCode())
	}
	v, err := g.volume(req.GetVid())
	if status.Code(err) == codes.NotFound {
		if e, eerr := g.srv.store.ECVolume(req.GetVid()); eerr == nil {
			return g.ecRead(ctx, e, req)
		}
	}
	if err != nil {
		return nil, err
	}
	n, raw, err := v.Read(req.GetKey(), req.GetCookie(), size, nil)
	if err != nil {
		if volume.IsCorruption(err) {
			g.srv.reportCorrupt(req.GetVid(), req.GetKey(), size, err)
		}
		return nil, volumeError(req.GetVid(), err)
	}
	return readResponse(n, raw, req.GetIncludeRaw(), v.Locate), nil
}

// readResponse is the answer to a Read of needle n: with includeRaw, also
// its raw bytes and, when locate finds it, its offset.
func readResponse(n needle.Needle, raw []byte, includeRaw bool, locate func(uint64, needle.SizeCode) (volume.Entry, bool)) *storepb.ReadResponse {
	resp := &storepb.ReadResponse{Needle: &storepb.Needle{
		Key:                n.Key,
		Cookie:             n.Cookie,
		SizeCode:           uint32(n.Size),
		ContentType:        uint32(n.ContentType),
		Data:               n.Data,
		AppendTimeUnixNano: n.AppendTime,
		Checksum:           n.Checksum,
	}}
	if includeRaw {
		resp.Raw = raw
		if e, ok := locate(n.Key, n.Size); ok {
			resp.Offset = uint64(e.Offset)
		}
	}
	return resp
}

// AllocateVolume implements storepb.StoreServer. The volume gets the
// store's size limit; a request may ask for that limit or leave it 0, but
// not for another, because the limit is the store's configuration and is
// not kept with the volume across restarts.
func (g *grpcService) AllocateVolume(ctx context.Context, req *storepb.AllocateVolumeRequest) (*storepb.AllocateVolumeResponse, error) {
	vid := req.GetVid()
	if vid == 0 {
		return nil, status.Error(codes.InvalidArgument, "vid 0")
	}
	if lim := req.GetSizeLimitBytes(); lim > uint64(volume.MaxSize) {
		return nil, status.Errorf(codes.InvalidArgument, "size limit %d is over the %d maximum", lim, volume.MaxSize)
	}
	secret := req.GetVolumeSecret()
	if len(secret) == 0 {
		secret = nil // the store draws one
	} else if len(secret) != volume.SecretSize || bytes.Equal(secret, make([]byte, volume.SecretSize)) {
		return nil, status.Errorf(codes.InvalidArgument, "volume secret of %d bytes: want %d, not all zero", len(secret), volume.SecretSize)
	}
	g.allocMu.Lock()
	defer g.allocMu.Unlock()
	if v, err := g.srv.store.Volume(vid); err == nil {
		// A retried allocation (its first answer lost) finds the volume it
		// created still empty: that is success, not a conflict.
		sb := v.Superblock()
		if st := v.Status(); st.Needles == 0 && st.Size == volume.SuperblockSize && (secret == nil || bytes.Equal(sb.Secret[:], secret)) {
			return &storepb.AllocateVolumeResponse{Volume: volumeInfo(st), AcknowledgedUnixNano: g.srv.store.ReportStamp()}, nil
		}
		return nil, status.Errorf(codes.FailedPrecondition, "volume %d already exists on this store and holds data", vid)
	} else if !errors.Is(err, ErrVolumeNotHere) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %d exists on this store but failed to open: %v", vid, err)
	}
	v, err := g.srv.store.CreateVolumeWithSecret(ctx, vid, secret)
	if err != nil {
		if errors.Is(err, volume.ErrExists) {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %d: %v", vid, err)
		}
		return nil, volumeError(vid, err)
	}
	if lim := req.GetSizeLimitBytes(); lim != 0 && lim != uint64(v.Status().SizeLimit) {
		g.srv.opts.Logger.Warn("allocated volume with the store's size limit, not the requested one",
			"vid", vid, "requested", lim, "limit", v.Status().SizeLimit)
	}
	// Stamped once the volume is listed: every report stamped later lists
	// it.
	return &storepb.AllocateVolumeResponse{Volume: volumeInfo(v.Status()), AcknowledgedUnixNano: g.srv.store.ReportStamp()}, nil
}

// VolumeStatus implements storepb.StoreServer. Volumes that failed to open
// are listed with state FAILED.
func (g *grpcService) VolumeStatus(ctx context.Context, req *storepb.VolumeStatusRequest) (*storepb.VolumeStatusResponse, error) {
	st := g.srv.store
	if vid := req.GetVid(); vid != 0 {
		v, err := st.Volume(vid)
		if err == nil {
			return &storepb.VolumeStatusResponse{Volumes: []*storepb.VolumeInfo{volumeInfo(v.Status())}}, nil
		}
		if errors.Is(err, ErrVolumeNotHere) {
			if e, eerr := st.ECVolume(vid); eerr == nil {
				return &storepb.VolumeStatusResponse{Volumes: []*storepb.VolumeInfo{ecVolumeInfo(e)}}, nil
			}
			return nil, status.Errorf(codes.NotFound, "volume %d is not on this store", vid)
		}
		return &storepb.VolumeStatusResponse{Volumes: []*storepb.VolumeInfo{g.failedVolumeInfo(vid, err)}}, nil
	}
	resp := &storepb.VolumeStatusResponse{}
	failed := st.Failed()
	for _, v := range st.Volumes() {
		resp.Volumes = append(resp.Volumes, volumeInfo(v.Status()))
	}
	for _, e := range st.ECVolumes() {
		resp.Volumes = append(resp.Volumes, ecVolumeInfo(e))
	}
	for vid, err := range failed {
		resp.Volumes = append(resp.Volumes, g.failedVolumeInfo(vid, err))
	}
	sortInfos(resp.Volumes)
	return resp, nil
}

// MarkReadOnly implements storepb.StoreServer.
func (g *grpcService) MarkReadOnly(ctx context.Context, req *storepb.MarkReadOnlyRequest) (*storepb.MarkReadOnlyResponse, error) {
	v, err := g.volume(req.GetVid())
	if err != nil {
		return nil, err
	}
	reason := req.GetReason()
	if reason != "" {
		reason = "operator: " + reason
	}
	if err := v.MarkReadOnly(ctx, reason); err != nil {
		return nil, volumeError(req.GetVid(), err)
	}
	g.srv.opts.Logger.Info("volume marked read-only", "vid", req.GetVid(), "reason", reason)
	return &storepb.MarkReadOnlyResponse{Volume: volumeInfo(v.Status())}, nil
}

// volumeInfo converts a volume's status to its wire form.
func volumeInfo(s volume.Status) *storepb.VolumeInfo {
	info := &storepb.VolumeInfo{
		Vid:                  s.Vid,
		State:                stateToProto(s.State),
		SizeBytes:            uint64(s.Size),
		SizeLimitBytes:       uint64(s.SizeLimit),
		NeedleCount:          uint64(s.Images),
		DeletedBytes:         uint64(s.Deleted),
		CompactionGeneration: s.Generation,
		CreatedUnixNano:      s.Created.UnixNano(),
	}
	if s.State != volume.StateWritable {
		info.ReadOnlyReason = s.Reason
	}
	return info
}

// failedVolumeInfo is failedInfo, with the shards still held here of an
// EC volume whose index is lost: peers regenerating the index read them.
func (g *grpcService) failedVolumeInfo(vid uint32, err error) *storepb.VolumeInfo {
	info := failedInfo(vid, err)
	if st := g.srv.store; st.ecIndexLost(vid) {
		for _, i := range volume.LocalShards(st.opts.FS, st.opts.Dir, vid) {
			info.EcShardIds = append(info.EcShardIds, uint32(i))
		}
	}
	return info
}

func failedInfo(vid uint32, err error) *storepb.VolumeInfo {
	return &storepb.VolumeInfo{Vid: vid, State: storepb.VolumeState_VOLUME_STATE_FAILED, ReadOnlyReason: "failed to open: " + err.Error()}
}

func stateToProto(s volume.State) storepb.VolumeState {
	switch s {
	case volume.StateWritable:
		return storepb.VolumeState_VOLUME_STATE_WRITABLE
	case volume.StateReadOnly:
		return storepb.VolumeState_VOLUME_STATE_READ_ONLY
	case volume.StateSealed:
		return storepb.VolumeState_VOLUME_STATE_SEALED
	case volume.StateFailed:
		return storepb.VolumeState_VOLUME_STATE_FAILED
	}
	return storepb.VolumeState_VOLUME_STATE_UNSPECIFIED
}

func sortInfos(infos []*storepb.VolumeInfo) {
	slices.SortFunc(infos, func(a, b *storepb.VolumeInfo) int { return cmp.Compare(a.GetVid(), b.GetVid()) })
}

// Compact implements storepb.StoreServer.
func (g *grpcService) Compact(ctx context.Context, req *storepb.CompactRequest) (*storepb.CompactResponse, error) {
	v, err := g.volume(req.GetVid())
	if err != nil {
		return nil, err
	}
	res, err := v.Compact(ctx, volume.CompactOptions{})
	if errors.Is(err, volume.ErrCompacting) {
		return nil, status.Errorf(codes.Aborted, "volume %d: %v", req.GetVid(), err)
	}
	if err != nil {
		return nil, volumeError(req.GetVid(), err)
	}
	g.srv.opts.Logger.Info("volume compacted", "vid", res.Vid, "generation", res.Generation,
		"reclaimed", res.Reclaimed, "copied", res.Copied, "corrupt", res.CorruptNeedle, "took", res.Duration)
	return &storepb.CompactResponse{
		Volume: volumeInfo(v.Status()), SizeBefore: uint64(res.SizeBefore), SizeAfter: uint64(res.SizeAfter),
		ReclaimedBytes: uint64(max(res.Reclaimed, 0)), CopiedNeedles: uint64(res.Copied),
		CorruptNeedles: uint64(res.CorruptNeedle), DurationMs: uint64(res.Duration.Milliseconds()),
	}, nil
}

// CopyVolume implements storepb.StoreServer.
func (g *grpcService) CopyVolume(req *storepb.CopyVolumeRequest, stream storepb.Store_CopyVolumeServer) error {
	v, err := g.volume(req.GetVid())
	if err != nil {
		return err
	}
	err = v.CopyTo(stream.Context(), int64(req.GetOffset()), req.GetGeneration(), func(chunk []byte, off, total int64, gen uint32) error {
		return stream.Send(&storepb.CopyVolumeResponse{Offset: uint64(off), Data: chunk, TotalSize: uint64(total), Generation: gen})
	})
	if errors.Is(err, volume.ErrGenerationChanged) {
		return status.Errorf(codes.FailedPrecondition, "volume %d: %v", req.GetVid(), err)
	}
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return volumeError(req.GetVid(), err)
	}
	return nil
}

// ReplicateVolume implements storepb.StoreServer.
func (g *grpcService) ReplicateVolume(req *storepb.ReplicateVolumeRequest, stream storepb.Store_ReplicateVolumeServer) error {
	vid := req.GetVid()
	if vid == 0 || req.GetSourceGrpcAddr() == "" {
		return status.Error(codes.InvalidArgument, "vid and source_grpc_addr are required")
	}
	// The source must be a store of this cluster: with TLS, its
	// certificate must name the store role, so a rogue server cannot
	// stand in for a replica.
	conn, err := rpc.Dial(g.srv.opts.Credentials, req.GetSourceGrpcAddr(), []pki.Role{pki.RoleStore})
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "source %s: %v", req.GetSourceGrpcAddr(), err)
	}
	defer conn.Close()
	source := storepb.NewStoreClient(conn)
	// A writable source may acknowledge writes after the pull has begun,
	// which the copy would miss: sync only read-only (or sealed) volumes.
	st, err := source.VolumeStatus(stream.Context(), &storepb.VolumeStatusRequest{Vid: vid})
	if err != nil {
		return status.Errorf(codes.Unavailable, "source %s: volume %d: %v", req.GetSourceGrpcAddr(), vid, err)
	}
	if len(st.GetVolumes()) != 1 || st.GetVolumes()[0].GetState() == storepb.VolumeState_VOLUME_STATE_WRITABLE {
		return status.Errorf(codes.FailedPrecondition,
			"volume %d is writable on %s: mark it read-only first (the directory's MarkReadOnly), so no write acknowledged during the copy is missed",
			vid, req.GetSourceGrpcAddr())
	}
	g.replicateMu.Lock()
	defer g.replicateMu.Unlock()
	last := ""
	var lastDone int64
	v, err := g.srv.store.ReplicateVolume(stream.Context(), vid, req.GetSourceGrpcAddr(), GRPCVolumeSource{Client: source},
		func(phase string, done, total int64) {
			// Report each phase change and then every 16 MiB.
			if phase == last && done-lastDone < 16<<20 && done != total {
				return
			}
			last, lastDone = phase, done
			stream.Send(&storepb.ReplicateVolumeResponse{Phase: phase, CopiedBytes: uint64(done), TotalBytes: uint64(total)})
		})
	if err != nil {
		if errors.Is(err, ErrSourceDamaged) {
			return status.Error(codes.DataLoss, err.Error())
		}
		if _, fromSource := status.FromError(err); fromSource {
			return status.Errorf(codes.Unavailable, "%v", err)
		}
		return volumeError(vid, err)
	}
	vs := v.Status()
	return stream.Send(&storepb.ReplicateVolumeResponse{Phase: "done", CopiedBytes: uint64(vs.Size), TotalBytes: uint64(vs.Size), Volume: volumeInfo(vs)})
}

// listBatch is how many entries one ListNeedlesResponse carries.
const listBatch = 1024

// ListNeedles implements storepb.StoreServer. Callers: operators' replica
// checks, the directory, and stores syncing a replica (it discloses
// cookies, like Read).
func (g *grpcService) ListNeedles(req *storepb.ListNeedlesRequest, stream storepb.Store_ListNeedlesServer) error {
	v, err := g.volume(req.GetVid())
	if err != nil {
		return err
	}
	resp := &storepb.ListNeedlesResponse{}
	err = v.List(stream.Context(), req.GetTombstonesOnly(), func(e volume.ListEntry, total int) error {
		resp.Total = uint64(total)
		resp.Entries = append(resp.Entries, needleEntry(e))
		if len(resp.Entries) < listBatch {
			return nil
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		resp = &storepb.ListNeedlesResponse{}
		return nil
	})
	if err == nil && (len(resp.Entries) > 0 || resp.Total == 0) {
		err = stream.Send(resp)
	}
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return volumeError(req.GetVid(), err)
	}
	return nil
}

// needleEntry converts a listed needle to its wire form.
func needleEntry(e volume.ListEntry) *storepb.NeedleEntry {
	pe := &storepb.NeedleEntry{
		Key: e.Key, SizeCode: uint32(e.Size), Tombstone: e.Tombstone, Length: uint32(e.Length),
		Cookie: e.Cookie, Checksum: e.Checksum, ContentHash: e.ContentHash, AppendTimeUnixNano: e.AppendTime,
	}
	if e.Damaged != nil {
		pe.Damaged = e.Damaged.Error()
	}
	return pe
}
