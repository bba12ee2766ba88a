package directory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// Defaults of Options.
const (
	DefaultGRPCAddr          = ":7070"
	DefaultHTTPAddr          = ":7071"
	DefaultReplication       = 3
	DefaultVolumeSizeLimit   = 32 << 30
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultTokenTTL          = 10 * time.Minute
	DefaultKeyBlock          = 10000
	DefaultMaxAssignCount    = 10000
	DefaultMinWritable       = 4
	DefaultMinStoreFreeBytes = 1 << 30
	DefaultPersistInterval   = time.Minute
	// MissedHeartbeats is the number of heartbeat intervals after which a
	// silent store is dead.
	MissedHeartbeats = 3
	// StateFile is the name of the state file in Options.Dir.
	StateFile = "directory.db"
	// SecretFile is the name of the generated secret in Options.Dir.
	SecretFile = "secret"
)

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	// Dir holds the state file (StateFile) and, when Secret is empty, the
	// cluster secret (SecretFile, generated when absent). Required.
	Dir string
	// GRPCAddr is the gRPC listen address; default DefaultGRPCAddr.
	// "127.0.0.1:0" picks a free port (see Server.GRPCAddr).
	GRPCAddr string
	// HTTPAddr is the HTTP listen address (status page, JSON, metrics);
	// default DefaultHTTPAddr.
	HTTPAddr string
	// Replication is the number of replicas of each new volume, on
	// distinct stores; default DefaultReplication (3).
	Replication int
	// VolumeSizeLimit is the size at which a volume turns read-only;
	// default DefaultVolumeSizeLimit (32 GiB, the most a volume can hold).
	VolumeSizeLimit uint64
	// HeartbeatInterval is the interval asked of the stores; a store silent
	// for MissedHeartbeats intervals is dead. Default 5s.
	HeartbeatInterval time.Duration
	// CDNURL, when set, is the base of every image URL, e.g.
	// "https://cdn.example.com".
	CDNURL string
	// CacheNodes are the cache tier's nodes ("host:port" or base URLs).
	// Without a CDN, image URLs point at the node that owns the photo's key
	// (needle.Owner over this list, as the caches configure it).
	CacheNodes []string
	// Secret signs write tokens. Default: the secret in Dir/SecretFile,
	// generated when absent.
	Secret []byte
	// TokenTTL is the validity of a write token; default 10 minutes.
	TokenTTL time.Duration
	// KeyBlock is the number of keys reserved per durable high-water
	// update; default 10000. A restart skips at most this many keys.
	KeyBlock uint64
	// MaxAssignCount is the largest count one Assign may ask for; default
	// 10000.
	MaxAssignCount uint32
	// MinWritable is the number of writable volumes with room left below
	// which new volumes are allocated; default 4.
	MinWritable int
	// MinStoreFreeBytes is the free disk space a store needs to receive a
	// new volume; default 1 GiB.
	MinStoreFreeBytes uint64
	// PersistInterval bounds how stale the persisted heartbeat figures
	// (free space, sizes, counts) may get; changes of addresses, volume
	// sets and states are persisted at once. Default 1 minute.
	PersistInterval time.Duration
	// CompactThreshold, when above 0, is the fraction of a read-only
	// volume's bytes that may be garbage (deleted or superseded needles)
	// before the directory asks its replicas to compact it; 0 turns
	// automatic compaction off. Sealed volumes are already compacted.
	CompactThreshold float64
	// CompactRetry is how long the directory waits before asking a replica
	// to compact the same volume again; default 1 hour.
	CompactRetry time.Duration
	// Credentials secure the gRPC server (mutual TLS, each method allowed
	// to the roles of Policy) and the connections to the stores. nil means
	// rpc.Insecure(): no TLS and no role checks, for tests; cmd/haybale
	// always sets it.
	Credentials *rpc.Credentials
	// KeepOriginals adds the original ("o") to PhotoURLs.
	KeepOriginals bool
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.GRPCAddr == "" {
		o.GRPCAddr = DefaultGRPCAddr
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = DefaultHTTPAddr
	}
	if o.Replication <= 0 {
		o.Replication = DefaultReplication
	}
	if o.VolumeSizeLimit == 0 {
		o.VolumeSizeLimit = DefaultVolumeSizeLimit
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = DefaultTokenTTL
	}
	if o.KeyBlock == 0 {
		o.KeyBlock = DefaultKeyBlock
	}
	if o.MaxAssignCount == 0 {
		o.MaxAssignCount = DefaultMaxAssignCount
	}
	if o.MinWritable <= 0 {
		o.MinWritable = DefaultMinWritable
	}
	if o.MinStoreFreeBytes == 0 {
		o.MinStoreFreeBytes = DefaultMinStoreFreeBytes
	}
	if o.PersistInterval <= 0 {
		o.PersistInterval = DefaultPersistInterval
	}
	if o.CompactRetry <= 0 {
		o.CompactRetry = time.Hour
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.CDNURL = strings.TrimRight(o.CDNURL, "/")
	o.Credentials = rpc.OrInsecure(o.Credentials)
	return o
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("directory: server closed")

// Server is the directory: the FSM, the sequencer, and the gRPC and HTTP
// servers over them. It implements directorypb.DirectoryServer, so a
// process can also call it directly. It is safe for concurrent use; Serve
// is called once.
type Server struct {
	directorypb.UnimplementedDirectoryServer

	opts    Options
	fsm     *FSM
	seq     *sequencer
	signer  *token.Signer
	metrics *metrics
	started time.Time

	grpcLn  net.Listener
	httpLn  net.Listener
	grpcSrv *grpc.Server
	httpSrv *http.Server

	baseCtx  context.Context // cancelled when shutdown starts
	cancel   context.CancelFunc
	wg       sync.WaitGroup // background goroutines
	growing  atomic.Bool    // a background allocation runs
	allocs   singleflight.Group
	serving  atomic.Bool
	stopOnce sync.Once
	stopped  chan struct{} // closed when shutdown has finished
	stopErr  error         // written before stopped is closed

	// live holds what the stores reported since this process started:
	// the fresh figures the views show, and liveness.
	live struct {
		sync.Mutex
		stores map[string]*liveStore
		// compactAsked is when each replica was last asked to compact.
		compactAsked map[compactKey]time.Time
	}
	// conns holds gRPC connections to stores by address.
	conns struct {
		sync.Mutex
		m      map[string]*grpc.ClientConn
		closed bool
	}
}

// NewServer opens the state in opts.Dir and binds both listeners; nothing
// is served until Serve. The bound addresses are known at once.
func NewServer(opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("directory: no data directory")
	}
	opts = opts.withDefaults()
	if opts.VolumeSizeLimit > DefaultVolumeSizeLimit {
		return nil, fmt.Errorf("directory: volume size limit %d is above the maximum %d", opts.VolumeSizeLimit, uint64(DefaultVolumeSizeLimit))
	}
	if err := makeDir(opts.Dir); err != nil {
		return nil, err
	}
	secret := opts.Secret
	if len(secret) == 0 {
		var err error
		if secret, err = token.LoadOrCreateSecret(filepath.Join(opts.Dir, SecretFile)); err != nil {
			return nil, fmt.Errorf("directory: %w", err)
		}
	}
	signer, err := token.NewSigner(secret)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	fsm, err := OpenFSM(filepath.Join(opts.Dir, StateFile))
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:    opts,
		fsm:     fsm,
		seq:     newSequencer(fsm, opts.KeyBlock),
		signer:  signer,
		started: time.Now(),
		stopped: make(chan struct{}),
	}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())
	s.live.stores = map[string]*liveStore{}
	s.conns.m = map[string]*grpc.ClientConn{}
	s.metrics = newMetrics(s)

	// An allocation cut short by a crash never finished: keep its vid
	// used, but do not write to it.
	for _, v := range fsm.Volumes() {
		if v.Allocating {
			if err := fsm.Apply(Command{Type: CmdSetVolumeState, Vid: v.Vid, State: storepb.VolumeState_VOLUME_STATE_READ_ONLY,
				Reason: "allocation interrupted by a directory restart"}); err != nil {
				fsm.Close()
				return nil, err
			}
		}
	}

	if s.grpcLn, err = net.Listen("tcp", opts.GRPCAddr); err != nil {
		fsm.Close()
		return nil, fmt.Errorf("directory: gRPC listener: %w", err)
	}
	if s.httpLn, err = net.Listen("tcp", opts.HTTPAddr); err != nil {
		s.grpcLn.Close()
		fsm.Close()
		return nil, fmt.Errorf("directory: HTTP listener: %w", err)
	}
	if s.grpcSrv, err = rpc.NewServer(opts.Credentials, Policy, rpc.ServerOptions{Unary: []grpc.UnaryServerInterceptor{s.unaryInterceptor}}); err != nil {
		s.httpLn.Close()
		s.grpcLn.Close()
		fsm.Close()
		return nil, fmt.Errorf("directory: %w", err)
	}
	directorypb.RegisterDirectoryServer(s.grpcSrv, s)
	s.httpSrv = &http.Server{
		Handler:           s.httpHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// GRPCAddr returns the address the gRPC server listens on.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLn.Addr() }

// HTTPAddr returns the address the HTTP server listens on.
func (s *Server) HTTPAddr() net.Addr { return s.httpLn.Addr() }

// FSM returns the directory's state machine.
func (s *Server) FSM() *FSM { return s.fsm }

// Serve serves gRPC and HTTP until ctx is cancelled, Shutdown is called or
// a listener fails; on cancellation it shuts down as Shutdown does, waiting
// at most 30 seconds. It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("directory: Serve called twice")
	}
	if s.baseCtx.Err() != nil {
		return ErrServerClosed
	}
	errc := make(chan error, 2)
	go func() { errc <- s.grpcSrv.Serve(s.grpcLn) }()
	go func() {
		err := s.httpSrv.Serve(s.httpLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	s.goFunc(s.livenessLoop)
	s.opts.Logger.Info("directory serving", "grpc", s.GRPCAddr().String(), "http", s.HTTPAddr().String(),
		"replication", s.opts.Replication, "key_high_water", s.fsm.HighWater())

	var serveErr error
	select {
	case <-ctx.Done():
	case <-s.baseCtx.Done():
	case serveErr = <-errc:
		if serveErr != nil {
			serveErr = fmt.Errorf("directory: serve: %w", serveErr)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil && serveErr == nil {
		serveErr = err
	}
	return serveErr
}

// Shutdown stops the servers, ending heartbeat streams and waiting for
// other requests in flight until ctx is done, then closes the state.
// Calling it again waits for the first call and returns its result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.cancel()
		s.stopErr = s.shutdown(ctx)
		close(s.stopped)
	})
	select {
	case <-s.stopped:
		return s.stopErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) shutdown(ctx context.Context) error {
	var errs []error
	done := make(chan struct{})
	go func() {
		s.grpcSrv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpcSrv.Stop()
		<-done
	}
	if err := s.httpSrv.Shutdown(ctx); err != nil {
		errs = append(errs, err)
		s.httpSrv.Close()
	}
	// Serve may never have run; closing twice is harmless.
	s.grpcLn.Close()
	s.httpLn.Close()
	s.wg.Wait()
	s.conns.Lock()
	s.conns.closed = true
	for _, c := range s.conns.m {
		c.Close()
	}
	s.conns.Unlock()
	if err := s.fsm.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// goFunc runs fn in a goroutine that shutdown waits for.
func (s *Server) goFunc(fn func()) {
	s.wg.Go(fn)
}

// storeClient returns a Store client for the store at grpcAddr, reusing
// connections.
func (s *Server) storeClient(grpcAddr string) (storepb.StoreClient, error) {
	s.conns.Lock()
	defer s.conns.Unlock()
	if s.conns.closed {
		return nil, ErrServerClosed
	}
	if c, ok := s.conns.m[grpcAddr]; ok {
		return storepb.NewStoreClient(c), nil
	}
	c, err := rpc.Dial(s.opts.Credentials, grpcAddr, []pki.Role{pki.RoleStore})
	if err != nil {
		return nil, fmt.Errorf("directory: connect to store %s: %w", grpcAddr, err)
	}
	s.conns.m[grpcAddr] = c
	return storepb.NewStoreClient(c), nil
}
