package directory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// unaryInterceptor counts calls by method and code and turns a panic in a
// handler into an INTERNAL answer.
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

// Assign grants count fresh keys on a writable volume chosen at random
// among the assignable ones, with the volume's replicas and a write token
// for the range. It allocates a volume first when none is assignable, and
// in the background when fewer than MinWritable have room.
func (s *Server) Assign(ctx context.Context, req *directorypb.AssignRequest) (*directorypb.AssignResponse, error) {
	count := req.GetCount()
	if count == 0 {
		return nil, status.Error(codes.InvalidArgument, "count must be at least 1")
	}
	if count > s.opts.MaxAssignCount {
		return nil, status.Errorf(codes.InvalidArgument, "count %d is above the maximum of %d per assignment", count, s.opts.MaxAssignCount)
	}
	sn := s.snapshot()
	vols, roomy := s.assignable(sn)
	if roomy < s.opts.MinWritable {
		s.growAsync()
	}
	if len(vols) == 0 {
		if err := s.growSync(ctx); err != nil {
			return nil, err
		}
		sn = s.snapshot()
		if vols, _ = s.assignable(sn); len(vols) == 0 {
			return nil, status.Error(codes.Unavailable, "no writable volume; retry")
		}
	}
	v := vols[rand.IntN(len(vols))]
	first, err := s.seq.next(uint64(count))
	if err != nil {
		if errors.Is(err, ErrKeysExhausted) {
			return nil, status.Error(codes.ResourceExhausted, err.Error())
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	expiry := time.Now().Add(s.opts.TokenTTL)
	tok, err := s.signer.Sign(token.Claims{Kind: token.KindWrite, Vid: v.Vid, KeyStart: first, KeyCount: uint64(count), Expiry: expiry})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.metrics.assignedKeys.Add(float64(count))
	return &directorypb.AssignResponse{
		KeyStart:        first,
		KeyCount:        count,
		Vid:             v.Vid,
		Replicas:        s.replicas(sn, v),
		WriteToken:      tok,
		TokenExpiryUnix: expiry.Unix(),
	}, nil
}

// volumeOrError returns volume vid or a NOT_FOUND / INVALID_ARGUMENT
// status.
func (s *Server) volumeOrError(vid uint32) (VolumeRecord, error) {
	if vid == 0 {
		return VolumeRecord{}, status.Error(codes.InvalidArgument, "vid 0")
	}
	v, ok := s.fsm.Volume(vid)
	if !ok {
		return VolumeRecord{}, status.Errorf(codes.NotFound, "volume %d is unknown", vid)
	}
	return v, nil
}

// Lookup describes volume vid: its state and replicas, live ones first.
func (s *Server) Lookup(_ context.Context, req *directorypb.LookupRequest) (*directorypb.LookupResponse, error) {
	v, err := s.volumeOrError(req.GetVid())
	if err != nil {
		return nil, err
	}
	sn := s.snapshot()
	state, _ := s.effectiveState(sn, v)
	return &directorypb.LookupResponse{Vid: v.Vid, State: state, Replicas: s.replicas(sn, v)}, nil
}

// ListStores describes every known store in id order.
func (s *Server) ListStores(context.Context, *directorypb.ListStoresRequest) (*directorypb.ListStoresResponse, error) {
	sn := s.snapshot()
	resp := &directorypb.ListStoresResponse{}
	for _, st := range s.fsm.Stores() {
		resp.Stores = append(resp.Stores, s.storeInfo(sn, sn.stores[st.ID]))
	}
	return resp, nil
}

// ListVolumes describes every volume in vid order.
func (s *Server) ListVolumes(context.Context, *directorypb.ListVolumesRequest) (*directorypb.ListVolumesResponse, error) {
	sn := s.snapshot()
	resp := &directorypb.ListVolumesResponse{}
	for _, v := range sn.volumes {
		resp.Volumes = append(resp.Volumes, s.volumeView(sn, v))
	}
	return resp, nil
}

// maxReasonLen bounds an operator's read-only reason.
const maxReasonLen = 256

// MarkReadOnly makes volume vid read-only for good (until an operator
// changes it) and tells its live replicas; the others are told with their
// next heartbeat. A volume already beyond writable is left as it is.
func (s *Server) MarkReadOnly(ctx context.Context, req *directorypb.DirectoryMarkReadOnlyRequest) (*directorypb.DirectoryMarkReadOnlyResponse, error) {
	v, err := s.volumeOrError(req.GetVid())
	if err != nil {
		return nil, err
	}
	reason := strings.TrimSpace(req.GetReason())
	if len(reason) > maxReasonLen {
		return nil, status.Errorf(codes.InvalidArgument, "reason longer than %d bytes", maxReasonLen)
	}
	reason = "operator: " + cmp.Or(reason, "marked read-only")
	if v.State == storepb.VolumeState_VOLUME_STATE_WRITABLE {
		if err := s.fsm.Apply(Command{Type: CmdSetVolumeState, Vid: v.Vid, State: storepb.VolumeState_VOLUME_STATE_READ_ONLY, Reason: reason}); err != nil {
			return nil, status.Error(codes.Unavailable, err.Error())
		}
		s.opts.Logger.Info("volume marked read-only", "vid", v.Vid, "reason", reason)
		v, _ = s.fsm.Volume(v.Vid)
	}
	if v.State == storepb.VolumeState_VOLUME_STATE_READ_ONLY {
		s.markReplicasReadOnly(ctx, v, v.Reason)
	}
	return &directorypb.DirectoryMarkReadOnlyResponse{Volume: s.volumeView(s.snapshot(), v)}, nil
}

// PhotoURLs builds a photo's image URLs: under the CDN base URL when one is
// configured, else under the cache node that owns the photo's key, else
// under a store holding a replica (a live one when there is one, chosen by
// the photo's key so that a photo's URLs stay stable).
func (s *Server) PhotoURLs(_ context.Context, req *directorypb.PhotoURLsRequest) (*directorypb.PhotoURLsResponse, error) {
	id, err := needle.ParsePhotoID(req.GetPhotoId())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	v, err := s.volumeOrError(id.Vid)
	if err != nil {
		return nil, err
	}
	base := s.opts.CDNURL
	if base == "" && len(s.opts.CacheNodes) > 0 {
		base = baseURL(s.opts.CacheNodes[needle.Owner(id.Key, s.opts.CacheNodes)])
	}
	if base == "" {
		reps := s.replicas(s.snapshot(), v)
		if len(reps) == 0 {
			return nil, status.Errorf(codes.Unavailable, "volume %d has no replica", id.Vid)
		}
		// Prefer the live replicas, which replicas lists first.
		good := reps[:1]
		for i := 1; i < len(reps) && s.alive(reps[i].GetStoreId()); i++ {
			good = reps[:i+1]
		}
		ids := make([]string, len(good))
		for i, r := range good {
			ids[i] = r.GetStoreId()
		}
		r := good[needle.Owner(id.Key, ids)]
		base = baseURL(cmp.Or(r.GetPublicUrl(), r.GetHttpAddr()))
	}
	sizes := needle.PhotoSizes[:]
	if s.opts.KeepOriginals {
		sizes = append(sizes[:len(sizes):len(sizes)], needle.SizeOriginal)
	}
	resp := &directorypb.PhotoURLsResponse{PhotoId: id.String(), Urls: map[string]string{}}
	for _, size := range sizes {
		resp.Urls[size.Letter()] = base + needle.ImagePath(id, size, "jpg")
	}
	return resp, nil
}

// baseURL turns "host:port" into "http://host:port" and drops a trailing
// slash; a URL with a scheme is kept.
func baseURL(s string) string {
	s = strings.TrimRight(s, "/")
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	return s
}

// AuthorizeDelete issues a delete token for one photo (its vid, key and
// cookie) and returns its replicas, so a client can write tombstones on
// every replica. The token allows tombstones of that photo only, never
// data, and the stores check the cookie against the stored needle.
func (s *Server) AuthorizeDelete(_ context.Context, req *directorypb.AuthorizeDeleteRequest) (*directorypb.AuthorizeDeleteResponse, error) {
	id, err := needle.ParsePhotoID(req.GetPhotoId())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	v, err := s.volumeOrError(id.Vid)
	if err != nil {
		return nil, err
	}
	expiry := time.Now().Add(s.opts.TokenTTL)
	tok, err := s.signer.Sign(token.Claims{Kind: token.KindDelete, Vid: v.Vid, KeyStart: id.Key, KeyCount: 1, Cookie: id.Cookie, Expiry: expiry})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &directorypb.AuthorizeDeleteResponse{
		Vid:             v.Vid,
		Replicas:        s.replicas(s.snapshot(), v),
		WriteToken:      tok,
		TokenExpiryUnix: expiry.Unix(),
	}, nil
}
