package directory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/dirconn"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// NotLeaderReason is the errdetails.ErrorInfo reason of an UNAVAILABLE
// answer from a node that does not lead; its metadata "leader" holds the
// leader's gRPC address when known. Clients follow it (internal/dirconn).
const NotLeaderReason = dirconn.ReasonNotLeader

// ErrorDomain is the errdetails.ErrorInfo domain of the directory's
// errors.
const ErrorDomain = dirconn.Domain

// statusOf maps the Directory's errors to gRPC status codes: the one place
// where that mapping lives.
func statusOf(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	// Every UNAVAILABLE answer carries an ErrorInfo, so that a client can
	// tell a node that cannot serve (try another) from one that answered.
	var nl *NotLeaderError
	switch {
	case errors.As(err, &nl):
		return dirconn.Status(err.Error(), dirconn.ReasonNotLeader, nl.Leader)
	case errors.Is(err, ErrClosed):
		return dirconn.Status(err.Error(), dirconn.ReasonShuttingDown, "")
	case errors.Is(err, ErrInvalidArgument):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrNotClustered), errors.Is(err, ErrWrongState):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrBusy):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, ErrUnknownVolume), errors.Is(err, ErrUnknownStore):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrKeysExhausted), errors.Is(err, ErrVidsExhausted):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, ErrUnavailable):
		return dirconn.Status(err.Error(), dirconn.ReasonUnavailable, "")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// NotLeader returns the leader's address when err is a directory's
// not-leader answer (ok), the empty string when the leader is unknown.
func NotLeader(err error) (leader string, ok bool) { return dirconn.NotLeader(err) }

// Membership changes the raft configuration of a directory cluster; *Raft
// implements it.
type Membership interface {
	// AddVoter adds node id at raft address addr (leader only).
	AddVoter(id, addr string) error
	// RemoveServer removes node id (leader only).
	RemoveServer(id string) error
	// Members lists the configuration.
	Members() ([]Member, error)
}

// newGRPCServer builds the gRPC server with the directory service
// registered. members and fwd are nil on a single-node directory.
func newGRPCServer(d *Directory, members Membership, fwd *forwarder) (*grpc.Server, error) {
	g, err := rpc.NewServer(d.opts.Credentials, Policy, rpc.ServerOptions{Unary: []grpc.UnaryServerInterceptor{unaryInterceptor(d)}})
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	directorypb.RegisterDirectoryServer(g, &grpcService{d: d, members: members, fwd: fwd})
	return g, nil
}

// unaryInterceptor counts calls by method and code and turns a panic in a
// handler into an INTERNAL answer.
func unaryInterceptor(d *Directory) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				d.opts.Logger.Error("gRPC handler panicked", "method", info.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				resp, err = nil, status.Error(codes.Internal, "internal error")
			}
			d.metrics.grpcRequests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
		}()
		return handler(ctx, req)
	}
}

// forwardTo answers a call the Directory refused with err: when err is a
// not-leader error naming the leader, and the call was not forwarded
// already, the call is sent to the leader and its answer returned;
// otherwise, or when the leader cannot be reached, err's status, which
// names the leader for the client to follow.
func forwardTo[Resp any](g *grpcService, ctx context.Context, err error, call func(directorypb.DirectoryClient, context.Context) (Resp, error)) (Resp, error) {
	var zero Resp
	c, fctx, ok := g.fwd.to(ctx, err)
	if !ok {
		return zero, statusOf(err)
	}
	resp, ferr := call(c, fctx)
	if o, _ := dirconn.Classify(ferr); o == dirconn.Unreachable {
		return zero, statusOf(err)
	}
	return resp, ferr
}

// grpcService implements directorypb.DirectoryServer over a Directory:
// it converts messages and errors and decides nothing.
type grpcService struct {
	directorypb.UnimplementedDirectoryServer
	d       *Directory
	members Membership // nil on a single node
	fwd     *forwarder // nil on a single node
}

// Assign grants fresh keys with a write token. Callers: gateways and
// clients that upload. Served by the leader; a follower forwards it there
// (forward.go), as a directory.
func (g *grpcService) Assign(ctx context.Context, req *directorypb.AssignRequest) (*directorypb.AssignResponse, error) {
	a, err := g.d.Assign(ctx, req.GetCount())
	if err != nil {
		return forwardTo(g, ctx, err, func(c directorypb.DirectoryClient, fctx context.Context) (*directorypb.AssignResponse, error) {
			return c.Assign(fctx, req)
		})
	}
	return &directorypb.AssignResponse{KeyStart: a.KeyStart, KeyCount: a.KeyCount, Vid: a.Vid, Replicas: replicasPB(a.Replicas),
		WriteToken: a.WriteToken, TokenExpiryUnix: a.Expiry.Unix()}, nil
}

// Lookup describes a volume. Callers: caches, gateways, clients, tools. Any
// node with fresh state; a stale follower forwards it to the leader
// (forward.go), as a directory.
func (g *grpcService) Lookup(ctx context.Context, req *directorypb.LookupRequest) (*directorypb.LookupResponse, error) {
	state, reps, err := g.d.Lookup(req.GetVid())
	if err != nil {
		return forwardTo(g, ctx, err, func(c directorypb.DirectoryClient, fctx context.Context) (*directorypb.LookupResponse, error) {
			return c.Lookup(fctx, req)
		})
	}
	return &directorypb.LookupResponse{Vid: req.GetVid(), State: volumeStatePB(state), Replicas: replicasPB(reps)}, nil
}

// ListStores describes every store. Callers: operators and tools. Any
// node (a follower reports liveness as unknown).
func (g *grpcService) ListStores(context.Context, *directorypb.ListStoresRequest) (*directorypb.ListStoresResponse, error) {
	resp := &directorypb.ListStoresResponse{}
	for _, s := range g.d.Stores() {
		resp.Stores = append(resp.Stores, storeInfoPB(s))
	}
	return resp, nil
}

// ListVolumes describes every volume. Callers: operators, tools. Any
// node.
func (g *grpcService) ListVolumes(context.Context, *directorypb.ListVolumesRequest) (*directorypb.ListVolumesResponse, error) {
	resp := &directorypb.ListVolumesResponse{}
	for _, v := range g.d.Volumes() {
		resp.Volumes = append(resp.Volumes, volumeViewPB(v))
	}
	return resp, nil
}

// MarkReadOnly makes a volume read-only. Callers: operators. Served by the
// leader; a follower forwards it there (forward.go), as a directory.
func (g *grpcService) MarkReadOnly(ctx context.Context, req *directorypb.DirectoryMarkReadOnlyRequest) (*directorypb.DirectoryMarkReadOnlyResponse, error) {
	v, err := g.d.MarkReadOnly(ctx, req.GetVid(), req.GetReason())
	if err != nil {
		return forwardTo(g, ctx, err, func(c directorypb.DirectoryClient, fctx context.Context) (*directorypb.DirectoryMarkReadOnlyResponse, error) {
			return c.MarkReadOnly(fctx, req)
		})
	}
	return &directorypb.DirectoryMarkReadOnlyResponse{Volume: volumeViewPB(v)}, nil
}

// PhotoURLs builds a photo's image URLs. Callers: gateways, clients. Any
// node with fresh state; a stale follower forwards it to the leader
// (forward.go), as a directory.
func (g *grpcService) PhotoURLs(ctx context.Context, req *directorypb.PhotoURLsRequest) (*directorypb.PhotoURLsResponse, error) {
	id, urls, err := g.d.PhotoURLs(req.GetPhotoId())
	if err != nil {
		return forwardTo(g, ctx, err, func(c directorypb.DirectoryClient, fctx context.Context) (*directorypb.PhotoURLsResponse, error) {
			return c.PhotoURLs(fctx, req)
		})
	}
	return &directorypb.PhotoURLsResponse{PhotoId: id.String(), Urls: urls}, nil
}

// AuthorizeDelete issues a delete token. Callers: gateways, clients. Served
// by the leader; a follower forwards it there (forward.go), as a directory.
func (g *grpcService) AuthorizeDelete(ctx context.Context, req *directorypb.AuthorizeDeleteRequest) (*directorypb.AuthorizeDeleteResponse, error) {
	gr, err := g.d.AuthorizeDelete(req.GetPhotoId())
	if err != nil {
		return forwardTo(g, ctx, err, func(c directorypb.DirectoryClient, fctx context.Context) (*directorypb.AuthorizeDeleteResponse, error) {
			return c.AuthorizeDelete(fctx, req)
		})
	}
	return &directorypb.AuthorizeDeleteResponse{Vid: gr.Vid, Replicas: replicasPB(gr.Replicas), WriteToken: gr.WriteToken,
		TokenExpiryUnix: gr.Expiry.Unix()}, nil
}

// Heartbeat serves a store's heartbeat stream: it records each report and
// answers it with the interval and the commands the store should carry
// out. Callers: stores. Leader only: a follower ends the stream with a
// not-leader error at the first report. The stream ends when the store
// closes it, the directory shuts down or this node stops leading.
func (g *grpcService) Heartbeat(stream directorypb.Directory_HeartbeatServer) error {
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
		case <-g.d.ctx.Done():
			return dirconn.Status("directory shutting down", dirconn.ReasonShuttingDown, "")
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
		ans, err := g.d.Heartbeat(ctx, heartbeatFromPB(r.req))
		if err != nil {
			return statusOf(err)
		}
		if err := stream.Send(heartbeatAnswerPB(ans)); err != nil {
			return err
		}
	}
}

// AddMember adds a voter to the raft cluster. Callers: operators. Leader
// only.
func (g *grpcService) AddMember(ctx context.Context, req *directorypb.AddMemberRequest) (*directorypb.AddMemberResponse, error) {
	if g.members == nil {
		return nil, statusOf(ErrNotClustered)
	}
	id, addr := req.GetId(), req.GetRaftAddr()
	if id == "" || addr == "" {
		return nil, statusOf(fmt.Errorf("%w: a member needs an id and a raft address", ErrInvalidArgument))
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, statusOf(fmt.Errorf("%w: raft address %q: %v", ErrInvalidArgument, clip(addr), err))
	}
	if err := g.members.AddVoter(id, addr); err != nil {
		return forwardTo(g, ctx, err, func(c directorypb.DirectoryClient, fctx context.Context) (*directorypb.AddMemberResponse, error) {
			return c.AddMember(fctx, req)
		})
	}
	g.d.opts.Logger.Info("directory member added", "id", id, "raft_addr", addr)
	ms, err := g.members.Members()
	if err != nil {
		return nil, statusOf(err)
	}
	return &directorypb.AddMemberResponse{Members: membersPB(ms)}, nil
}

// RemoveMember removes a node from the raft cluster. Callers: operators.
// Served by the leader; a follower forwards it there (forward.go), as a
// directory.
func (g *grpcService) RemoveMember(ctx context.Context, req *directorypb.RemoveMemberRequest) (*directorypb.RemoveMemberResponse, error) {
	if g.members == nil {
		return nil, statusOf(ErrNotClustered)
	}
	if err := g.members.RemoveServer(req.GetId()); err != nil {
		return forwardTo(g, ctx, err, func(c directorypb.DirectoryClient, fctx context.Context) (*directorypb.RemoveMemberResponse, error) {
			return c.RemoveMember(fctx, req)
		})
	}
	g.d.opts.Logger.Info("directory member removed", "id", req.GetId())
	ms, err := g.members.Members()
	if err != nil {
		return nil, statusOf(err)
	}
	return &directorypb.RemoveMemberResponse{Members: membersPB(ms)}, nil
}

// RemoveStore forgets a store. Callers: operators. Served by the leader; a
// follower forwards it there (forward.go), as a directory.
func (g *grpcService) RemoveStore(ctx context.Context, req *directorypb.RemoveStoreRequest) (*directorypb.RemoveStoreResponse, error) {
	if err := g.d.RemoveStore(ctx, req.GetStoreId()); err != nil {
		return forwardTo(g, ctx, err, func(c directorypb.DirectoryClient, fctx context.Context) (*directorypb.RemoveStoreResponse, error) {
			return c.RemoveStore(fctx, req)
		})
	}
	return &directorypb.RemoveStoreResponse{}, nil
}

// EcEncode erasure-codes a volume and places its shards (Directory.EncodeEC),
// streaming a message per step and, last, the placement. Callers:
// operators (`haybale ec encode --directory`). Served by the leader; a
// follower forwards it there, as a directory, and relays the stream.
func (g *grpcService) EcEncode(req *directorypb.DirectoryEcEncodeRequest, stream directorypb.Directory_EcEncodeServer) error {
	ctx := stream.Context()
	if req.GetLargeBlock() > 1<<40 || req.GetSmallBlock() > 1<<40 {
		return statusOf(fmt.Errorf("%w: block sizes over 1 TiB", ErrInvalidArgument))
	}
	var sendErr error
	p, err := g.d.EncodeEC(ctx, req.GetVid(), ECEncodeOptions{
		LargeBlock: req.GetLargeBlock(), SmallBlock: req.GetSmallBlock(), Trigger: ECTriggerOperator,
		Progress: func(pr ECProgress) {
			if sendErr == nil {
				sendErr = stream.Send(&directorypb.DirectoryEcEncodeResponse{Step: pr.Step, Message: pr.Message})
			}
		},
	})
	if err != nil {
		c, fctx, ok := g.fwd.to(ctx, err)
		if !ok {
			return statusOf(err)
		}
		up, ferr := c.EcEncode(fctx, req)
		for ferr == nil {
			var m *directorypb.DirectoryEcEncodeResponse
			if m, ferr = up.Recv(); ferr == nil {
				ferr = stream.Send(m)
			}
		}
		if ferr == io.EOF {
			return nil
		}
		if o, _ := dirconn.Classify(ferr); o == dirconn.Unreachable {
			return statusOf(err)
		}
		return ferr
	}
	if sendErr != nil {
		// The caller went away; the job finished all the same.
		return sendErr
	}
	return stream.Send(&directorypb.DirectoryEcEncodeResponse{Step: ecStepDone, Placement: ecPlacementPB(p),
		Message: fmt.Sprintf("volume %d: erasure-coded", p.Vid)})
}

func ecPlacementPB(p ECPlacement) *directorypb.EcPlacement {
	out := &directorypb.EcPlacement{Vid: p.Vid, SourceStoreId: p.Source, SurvivesStores: uint32(p.SurvivesStores),
		SurvivesRacks: uint32(p.SurvivesRacks), Needles: uint32(p.Needles)}
	for _, h := range p.Holders {
		out.Holders = append(out.Holders, &directorypb.EcHolder{StoreId: h.StoreID, Rack: h.Rack, Shards: h.Shards})
	}
	return out
}

func membersPB(ms []Member) []*directorypb.Member {
	out := make([]*directorypb.Member, len(ms))
	for i, m := range ms {
		out[i] = &directorypb.Member{Id: m.ID, RaftAddr: m.RaftAddr, Voter: m.Voter, Leader: m.Leader, GrpcAddr: m.GRPCAddr, HttpAddr: m.HTTPAddr}
	}
	return out
}

func heartbeatFromPB(req *directorypb.HeartbeatRequest) Heartbeat {
	hb := Heartbeat{StoreID: req.GetStoreId(), GRPCAddr: req.GetGrpcAddr(), HTTPAddr: req.GetHttpAddr(), PublicURL: req.GetPublicUrl(),
		Rack: req.GetRack(), FreeBytes: req.GetFreeBytes(), Built: req.GetBuiltUnixNano()}
	for _, v := range req.GetVolumes() {
		hb.Volumes = append(hb.Volumes, volumeReportFromPB(v))
	}
	for _, c := range req.GetCorrupt() {
		hb.Corrupt = append(hb.Corrupt, CorruptReport{Vid: c.GetVid(), Key: c.GetKey(), SizeCode: c.GetSizeCode(), Offset: c.GetOffset(),
			Detail: c.GetDetail(), Detected: time.Unix(0, c.GetDetectedUnixNano())})
	}
	return hb
}

func volumeReportFromPB(v *storepb.VolumeInfo) VolumeReport {
	return VolumeReport{Vid: v.GetVid(), State: volumeStateFromPB(v.GetState()), Reason: v.GetReadOnlyReason(),
		SizeBytes: v.GetSizeBytes(), SizeLimit: v.GetSizeLimitBytes(), NeedleCount: v.GetNeedleCount(), DeletedBytes: v.GetDeletedBytes(),
		EcShards: ecShardIDs(v.GetEcShardIds()), LastAppendUnixNano: v.GetLastAppendUnixNano()}
}

func heartbeatAnswerPB(a HeartbeatAnswer) *directorypb.HeartbeatResponse {
	resp := &directorypb.HeartbeatResponse{IntervalMs: uint32(a.Interval / time.Millisecond)}
	for _, c := range a.Commands {
		switch c.Kind {
		case CommandMarkReadOnly:
			resp.Commands = append(resp.Commands, &directorypb.StoreCommand{Command: &directorypb.StoreCommand_MarkReadOnly{
				MarkReadOnly: &storepb.MarkReadOnlyRequest{Vid: c.Vid, Reason: c.Reason}}})
		case CommandCompact:
			resp.Commands = append(resp.Commands, &directorypb.StoreCommand{Command: &directorypb.StoreCommand_Compact{
				Compact: &storepb.CompactRequest{Vid: c.Vid}}})
		}
	}
	return resp
}

func volumeStateFromPB(s storepb.VolumeState) VolumeState {
	switch s {
	case storepb.VolumeState_VOLUME_STATE_WRITABLE:
		return StateWritable
	case storepb.VolumeState_VOLUME_STATE_READ_ONLY:
		return StateReadOnly
	case storepb.VolumeState_VOLUME_STATE_SEALED:
		return StateSealed
	case storepb.VolumeState_VOLUME_STATE_EC:
		return StateEC
	case storepb.VolumeState_VOLUME_STATE_FAILED:
		return StateFailed
	}
	return StateUnknown
}

func volumeStatePB(s VolumeState) storepb.VolumeState {
	switch s {
	case StateWritable:
		return storepb.VolumeState_VOLUME_STATE_WRITABLE
	case StateReadOnly:
		return storepb.VolumeState_VOLUME_STATE_READ_ONLY
	case StateSealed:
		return storepb.VolumeState_VOLUME_STATE_SEALED
	case StateEC:
		return storepb.VolumeState_VOLUME_STATE_EC
	case StateFailed:
		return storepb.VolumeState_VOLUME_STATE_FAILED
	}
	return storepb.VolumeState_VOLUME_STATE_UNSPECIFIED
}

func storeStatePB(s StoreState) directorypb.StoreState {
	switch s {
	case StoreAlive:
		return directorypb.StoreState_STORE_STATE_ALIVE
	case StoreDead:
		return directorypb.StoreState_STORE_STATE_DEAD
	}
	return directorypb.StoreState_STORE_STATE_UNSPECIFIED
}

func replicasPB(reps []Replica) []*directorypb.Replica {
	out := make([]*directorypb.Replica, len(reps))
	for i, r := range reps {
		out[i] = &directorypb.Replica{StoreId: r.StoreID, GrpcAddr: r.GRPCAddr, HttpAddr: r.HTTPAddr, PublicUrl: r.PublicURL, Rack: r.Rack}
	}
	return out
}

func storeInfoPB(s StoreInfo) *directorypb.StoreInfo {
	return &directorypb.StoreInfo{Id: s.ID, GrpcAddr: s.GRPCAddr, HttpAddr: s.HTTPAddr, PublicUrl: s.PublicURL, Rack: s.Rack,
		FreeBytes: s.FreeBytes, LastHeartbeatUnixNano: s.LastHeartbeatUnixNano, State: storeStatePB(s.State), Vids: s.Vids}
}

func volumeViewPB(v VolumeView) *directorypb.VolumeView {
	return &directorypb.VolumeView{Vid: v.Vid, State: volumeStatePB(v.State), ReadOnlyReason: v.Reason, ReplicaStoreIds: v.Replicas,
		SizeBytes: v.SizeBytes, SizeLimitBytes: v.SizeLimit, NeedleCount: v.NeedleCount, DeletedBytes: v.DeletedBytes}
}

// grpcStores is the StoreAPI over the stores' gRPC services, with one
// connection per store address.
type grpcStores struct {
	creds  *rpc.Credentials
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

func newGRPCStores(creds *rpc.Credentials) *grpcStores {
	return &grpcStores{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

func (s *grpcStores) client(addr string) (storepb.StoreClient, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if c, ok := s.conns[addr]; ok {
		return storepb.NewStoreClient(c), nil
	}
	c, err := rpc.Dial(s.creds, addr, []pki.Role{pki.RoleStore})
	if err != nil {
		return nil, fmt.Errorf("directory: connect to store %s: %w", addr, err)
	}
	s.conns[addr] = c
	return storepb.NewStoreClient(c), nil
}

// AllocateVolume implements StoreAPI.
func (s *grpcStores) AllocateVolume(ctx context.Context, st StoreRecord, vid uint32, sizeLimit uint64, secret []byte) (Allocated, error) {
	c, err := s.client(st.GRPCAddr)
	if err != nil {
		return Allocated{}, err
	}
	resp, err := c.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: vid, SizeLimitBytes: sizeLimit, VolumeSecret: secret})
	if err != nil {
		return Allocated{}, err
	}
	return Allocated{VolumeReport: volumeReportFromPB(resp.GetVolume()), Acknowledged: resp.GetAcknowledgedUnixNano()}, nil
}

// MarkReadOnly implements StoreAPI.
func (s *grpcStores) MarkReadOnly(ctx context.Context, st StoreRecord, vid uint32, reason string) error {
	c, err := s.client(st.GRPCAddr)
	if err != nil {
		return err
	}
	_, err = c.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: vid, Reason: reason})
	return err
}

// storeErr turns a store's NOT_FOUND answer into ErrNotOnStore.
func storeErr(err error) error {
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("%w: %v", ErrNotOnStore, err)
	}
	return err
}

// VolumeStatus implements ECStoreAPI.
func (s *grpcStores) VolumeStatus(ctx context.Context, st StoreRecord, vid uint32) (VolumeReport, error) {
	c, err := s.client(st.GRPCAddr)
	if err != nil {
		return VolumeReport{}, err
	}
	resp, err := c.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: vid})
	if err != nil {
		return VolumeReport{}, storeErr(err)
	}
	for _, v := range resp.GetVolumes() {
		if v.GetVid() == vid {
			return volumeReportFromPB(v), nil
		}
	}
	return VolumeReport{}, fmt.Errorf("%w: store %s does not list volume %d", ErrNotOnStore, st.ID, vid)
}

// Compact implements ECStoreAPI.
func (s *grpcStores) Compact(ctx context.Context, st StoreRecord, vid uint32) (VolumeReport, error) {
	c, err := s.client(st.GRPCAddr)
	if err != nil {
		return VolumeReport{}, err
	}
	resp, err := c.Compact(ctx, &storepb.CompactRequest{Vid: vid})
	if err != nil {
		return VolumeReport{}, storeErr(err)
	}
	return volumeReportFromPB(resp.GetVolume()), nil
}

// ECEncode implements ECStoreAPI.
func (s *grpcStores) ECEncode(ctx context.Context, st StoreRecord, vid uint32, largeBlock, smallBlock uint64) (uint32, error) {
	c, err := s.client(st.GRPCAddr)
	if err != nil {
		return 0, err
	}
	resp, err := c.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: vid, LargeBlock: largeBlock, SmallBlock: smallBlock})
	if err != nil {
		return 0, storeErr(err)
	}
	return resp.GetNeedles(), nil
}

// ECShardMount implements ECStoreAPI.
func (s *grpcStores) ECShardMount(ctx context.Context, st StoreRecord, vid uint32, shards []uint32, source StoreRecord) (VolumeReport, error) {
	c, err := s.client(st.GRPCAddr)
	if err != nil {
		return VolumeReport{}, err
	}
	resp, err := c.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: vid, Shards: shards, SourceGrpcAddr: source.GRPCAddr})
	if err != nil {
		return VolumeReport{}, storeErr(err)
	}
	return volumeReportFromPB(resp.GetVolume()), nil
}

// ECShardDelete implements ECStoreAPI.
func (s *grpcStores) ECShardDelete(ctx context.Context, st StoreRecord, vid uint32, shards []uint32) (VolumeReport, error) {
	c, err := s.client(st.GRPCAddr)
	if err != nil {
		return VolumeReport{}, err
	}
	resp, err := c.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: vid, Shards: shards})
	if err != nil {
		return VolumeReport{}, storeErr(err)
	}
	return volumeReportFromPB(resp.GetVolume()), nil
}

// ECIndexSync implements ECStoreAPI.
func (s *grpcStores) ECIndexSync(ctx context.Context, st StoreRecord, vid uint32) (int, error) {
	c, err := s.client(st.GRPCAddr)
	if err != nil {
		return 0, err
	}
	resp, err := c.EcIndexSync(ctx, &storepb.EcIndexSyncRequest{Vid: vid})
	if err != nil {
		return 0, storeErr(err)
	}
	return int(resp.GetAddedDeletes()), nil
}

// Close closes every connection.
func (s *grpcStores) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var errs []error
	for _, c := range s.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
