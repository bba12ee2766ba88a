package directory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/haybale/haybale/internal/token"
)

// StoreAPI is how the directory asks stores to act. The gRPC adapter
// (grpc.go) implements it over storepb; tests may fake it. It must be safe
// for concurrent use.
type StoreAPI interface {
	// AllocateVolume creates volume vid with the size limit and the needle
	// secret on st and returns the store's report of it. Every replica of
	// a volume gets the same secret, so the replicas stay byte-identical.
	AllocateVolume(ctx context.Context, st StoreRecord, vid uint32, sizeLimit uint64, secret []byte) (Allocated, error)
	// MarkReadOnly makes st's replica of vid read-only with reason.
	MarkReadOnly(ctx context.Context, st StoreRecord, vid uint32, reason string) error
}

// Allocated is a store's answer to AllocateVolume: its report of the new
// volume, and the store's report clock once the volume existed.
type Allocated struct {
	VolumeReport
	// Acknowledged is the store's report clock (Heartbeat.Built) once the
	// volume was listed: a report of that store built later lists it. 0
	// from a store without a report clock.
	Acknowledged int64
}

// Directory is the directory's domain logic: the state machine (FSM)
// behind a Log, the key sequencer, placement and store liveness. It knows
// nothing of gRPC or HTTP: its methods take and return Go types, and fail
// with the errors of errors.go. Only the node whose Log leads decides
// (Assign, heartbeats, allocations, state changes); the read methods
// (Lookup, Stores, Volumes, PhotoURLs) answer from the local state on any
// node. It is safe for concurrent use.
type Directory struct {
	opts    Options
	fsm     *FSM
	log     Log
	seq     *sequencer
	signer  *token.Signer
	stores  StoreAPI
	metrics *metrics

	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // background goroutines
	growing atomic.Bool    // a background allocation runs
	allocs  singleflight.Group
	// inFlight holds the vids this node is allocating.
	inFlight struct {
		sync.Mutex
		vids map[uint32]bool
	}

	// live holds what the stores reported to this node: the fresh figures
	// the views show, and liveness.
	live struct {
		sync.Mutex
		stores map[string]*liveStore
		// compactAsked is when each replica was last asked to compact.
		compactAsked map[compactKey]time.Time
	}

	// ec holds the erasure-coding job that runs and the outcomes of the
	// last ones (ecpolicy.go).
	ec struct {
		sync.Mutex
		ecState
	}
	// ecAwait bounds the wait of an erasure-coding job for the new
	// holders' heartbeats (ecRun.awaitHolders).
	ecAwait time.Duration
}

// NewDirectory returns the directory over fsm, committing through log and
// acting on stores through stores. opts.Secret must be set; the other
// options take their defaults. Close stops its background work; the
// caller closes fsm and log after it.
func NewDirectory(opts Options, fsm *FSM, log Log, stores StoreAPI) (*Directory, error) {
	opts = opts.withDefaults()
	if opts.ECFullPercent > 100 {
		return nil, fmt.Errorf("directory: erasure-coding fill level %g%% is above 100%%", opts.ECFullPercent)
	}
	if opts.VolumeSizeLimit > DefaultVolumeSizeLimit {
		return nil, fmt.Errorf("directory: volume size limit %d is above the maximum %d", opts.VolumeSizeLimit, uint64(DefaultVolumeSizeLimit))
	}
	signer, err := token.NewSigner(opts.Secret)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	d := &Directory{
		opts:   opts,
		fsm:    fsm,
		log:    log,
		seq:    newSequencer(fsm, log, opts.KeyBlock),
		signer: signer,
		stores: stores,
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.live.stores = map[string]*liveStore{}
	d.inFlight.vids = map[uint32]bool{}
	d.live.compactAsked = map[compactKey]time.Time{}
	d.ec.failures = map[uint32]*ECBackoff{}
	d.ecAwait = MissedHeartbeats * opts.HeartbeatInterval
	d.metrics = newMetrics(d)
	d.wg.Go(d.leaderLoop)
	if opts.ECAfter > 0 {
		d.wg.Go(d.ecPolicyLoop)
	}
	return d, nil
}

// Close stops the background work (allocations, liveness logging) and
// waits for it.
func (d *Directory) Close() {
	d.cancel()
	d.wg.Wait()
}

// FSM returns the directory's state machine.
func (d *Directory) FSM() *FSM { return d.fsm }

// Logger returns the directory's logger.
func (d *Directory) Logger() *slog.Logger { return d.opts.Logger }

// goFunc runs fn in a goroutine that Close waits for.
func (d *Directory) goFunc(fn func()) { d.wg.Go(fn) }

// apply commits cmd through the log. Errors other than not-leader and
// closed are wrapped as unavailable: the caller may retry.
func (d *Directory) apply(ctx context.Context, cmd Command) error {
	err := d.log.Apply(ctx, cmd)
	if err == nil || errors.Is(err, ErrNotLeader) || errors.Is(err, ErrClosed) ||
		errors.Is(err, ErrVolumeExists) || errors.Is(err, ErrUnknownVolume) || errors.Is(err, ErrUnknownStore) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// leading returns the current leadership epoch and its start, or a
// *NotLeaderError.
func (d *Directory) leading() (uint64, time.Time, error) {
	epoch, since := d.log.Leadership()
	if epoch == 0 {
		return 0, time.Time{}, d.log.NotLeader()
	}
	return epoch, since, nil
}

// leaderLoop runs the leader's chores: when a leadership starts, it
// ends allocations a previous leader left unfinished; every heartbeat
// interval it logs stores that die.
func (d *Directory) leaderLoop() {
	t := time.NewTicker(min(d.opts.HeartbeatInterval, time.Second))
	defer t.Stop()
	var done uint64 // epoch whose start-up chores ran
	for {
		if epoch, _ := d.log.Leadership(); epoch != 0 && epoch != done {
			if d.endInterruptedAllocations() == nil {
				done = epoch
			}
		}
		d.logDeaths()
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// endInterruptedAllocations makes read-only every volume still recorded as
// allocating: the leader that started the allocation is gone (a crash, a
// restart or a failover), so its vid stays used but is never written.
func (d *Directory) endInterruptedAllocations() error {
	for _, v := range d.fsm.Volumes() {
		if !v.Allocating {
			continue
		}
		if d.allocating(v.Vid) {
			continue
		}
		err := d.apply(d.ctx, Command{Type: CmdSetVolumeState, Vid: v.Vid, State: StateReadOnly,
			Reason: "allocation interrupted by a directory restart or failover"})
		if err != nil {
			d.opts.Logger.Warn("cannot end an interrupted allocation", "vid", v.Vid, "err", err)
			return err
		}
	}
	return nil
}
