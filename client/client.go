// Package client is the Go client of a haybale cluster: it asks the
// directory for assignments, writes a photo's needles to every replica,
// reads images with replica failover, deletes photos on every replica and
// builds photo URLs. The gateway, the cache and the benchmarks use it.
//
// Writes go to every replica of the assigned volume in parallel and succeed
// only when all acknowledge. The client chooses the append time once for
// all replicas, so they store byte-identical needles: the same ETag and
// Last-Modified whichever replica answers. When one replica fails, the
// client retries once on a fresh assignment (another key, usually another
// volume) and then gives up with ErrUnavailable. The failed attempt's key is
// tombstoned on every replica of its volume, not only on those that
// acknowledged: a replica whose call was cancelled or whose answer was lost
// may hold the needles, or get them later. A store keeps the tombstone of a
// key it does not hold yet and refuses (or never indexes) a write of that
// key that lands after it, so the abandoned photo cannot appear later.
//
// Reads look the volume's replicas up in the directory (answers are cached
// for LookupTTL) and fetch the image over HTTP from the first replica that
// has it, moving on after a connection error, a timeout, a 5xx (including a
// store's "corrupt" answer), an answer whose Content-Type is not an image
// type, or a 404 (a replica may have lost the volume).
// Only when every replica answered 404 is the image reported missing.
//
// The directory may be a cluster: Options.Directory lists its nodes, and
// every directory call goes to the leader, found and followed by
// internal/dirconn (a follower's not-leader answer names the leader; an
// unreachable node is skipped; rounds are paced with backoff), so a
// client keeps working across a leader failover without a restart.
package client

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/dirconn"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// Errors returned by the client.
var (
	// ErrNotFound is returned when no replica holds the image or photo.
	ErrNotFound = errors.New("client: not found")
	// ErrUnavailable is returned when the cluster cannot complete a request
	// now: no assignment, replicas down, writes refused after the retry.
	ErrUnavailable = errors.New("client: unavailable")
	// ErrInvalid is returned for a request that can never succeed: no
	// images, an unknown size code, a malformed photo ID.
	ErrInvalid = errors.New("client: invalid request")
)

// Options configure a Client.
type Options struct {
	// Directory is the directory's gRPC address (host:port), or the
	// comma-separated addresses of the nodes of a directory cluster.
	// Required.
	Directory string
	// HTTPClient fetches images from stores; default: a client with a 10 s
	// timeout per attempt.
	HTTPClient *http.Client
	// Credentials secure every gRPC connection (rpc.Dial): on a TLS plane
	// the client presents its certificate (a gateway's, a cache's or an
	// operator's) and requires the directory and the stores to present
	// theirs. nil means rpc.Insecure(), for tests; cmd/haybale always
	// sets it.
	Credentials *rpc.Credentials
	// DialOptions are added to every gRPC connection after the defaults
	// of rpc.Dial (interceptors in tests).
	DialOptions []grpc.DialOption
	// FailoverTimeout bounds how long a directory call without a
	// deadline keeps looking for the leader; default 30 s.
	FailoverTimeout time.Duration
	// LookupTTL is how long a volume's replica list is cached; default 30 s.
	LookupTTL time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Client talks to a haybale cluster. It is safe for concurrent use.
type Client struct {
	opts      Options
	dirConn   *dirconn.Conn
	directory directorypb.DirectoryClient

	mu struct {
		sync.Mutex
		conns   map[string]*grpc.ClientConn
		lookups map[uint32]lookupEntry
		closed  bool
	}
}

type lookupEntry struct {
	replicas []Replica
	state    storepb.VolumeState
	at       time.Time
}

// Replica is one store holding a copy of a volume.
type Replica struct {
	StoreID   string
	GRPCAddr  string
	HTTPAddr  string
	PublicURL string
	Rack      string
}

// New returns a client of the cluster whose directory is at
// opts.Directory. Connections are made lazily.
func New(opts Options) (*Client, error) {
	addrs, err := dirconn.SplitAddrs(opts.Directory)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.LookupTTL <= 0 {
		opts.LookupTTL = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.Credentials = rpc.OrInsecure(opts.Credentials)
	c := &Client{opts: opts}
	c.mu.conns = map[string]*grpc.ClientConn{}
	c.mu.lookups = map[uint32]lookupEntry{}
	conn, err := dirconn.New(dirconn.Options{Addrs: addrs, Credentials: opts.Credentials, DialOptions: opts.DialOptions,
		FailoverTimeout: opts.FailoverTimeout, Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c.dirConn = conn
	c.directory = directorypb.NewDirectoryClient(conn)
	return c, nil
}

func (c *Client) dial(addr string, role pki.Role) (*grpc.ClientConn, error) {
	conn, err := rpc.Dial(c.opts.Credentials, addr, []pki.Role{role}, c.opts.DialOptions...)
	if err != nil {
		return nil, fmt.Errorf("client: connect %s: %w", addr, err)
	}
	return conn, nil
}

// Directory returns the directory's gRPC client, for the calls this
// package does not wrap. Its unary calls follow the leader as the
// client's own do.
func (c *Client) Directory() directorypb.DirectoryClient { return c.directory }

// DirectoryElsewhere reports whether err, the error of a call on
// Directory(), says that another directory node may serve the call: the
// node was not the leader (the client has learnt the leader from the
// answer), was shutting down or could not be reached. Unary calls are
// retried on the leader by the client itself; a caller of a streaming
// call, which the client cannot replay, retries it when this is true and
// the stream delivered nothing yet.
func DirectoryElsewhere(err error) bool {
	o, _ := dirconn.Classify(err)
	return o != dirconn.Answered
}

// Store returns a gRPC client of the store at addr, sharing one connection
// per address.
func (c *Client) Store(addr string) (storepb.StoreClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil, errors.New("client: closed")
	}
	conn, ok := c.mu.conns[addr]
	if !ok {
		var err error
		if conn, err = c.dial(addr, pki.RoleStore); err != nil {
			return nil, err
		}
		c.mu.conns[addr] = conn
	}
	return storepb.NewStoreClient(conn), nil
}

// Close closes every connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil
	}
	c.mu.closed = true
	errs := []error{c.dirConn.Close()}
	for _, conn := range c.mu.conns {
		errs = append(errs, conn.Close())
	}
	return errors.Join(errs...)
}

// Assignment is a key range on a writable volume, with the token that
// lets its replicas accept the writes.
type Assignment struct {
	Vid      uint32
	KeyStart uint64
	KeyCount uint32
	Replicas []Replica
	Token    string
	Expiry   time.Time
}

func replicasOf(rs []*directorypb.Replica) []Replica {
	out := make([]Replica, len(rs))
	for i, r := range rs {
		out[i] = Replica{StoreID: r.GetStoreId(), GRPCAddr: r.GetGrpcAddr(), HTTPAddr: r.GetHttpAddr(), PublicURL: r.GetPublicUrl(), Rack: r.GetRack()}
	}
	return out
}

// grpcErr maps a gRPC error to the client's sentinels, keeping the cause.
func grpcErr(what string, err error) error {
	switch status.Code(err) {
	case codes.NotFound:
		return fmt.Errorf("%w: %s: %s", ErrNotFound, what, status.Convert(err).Message())
	case codes.InvalidArgument:
		return fmt.Errorf("%w: %s: %s", ErrInvalid, what, status.Convert(err).Message())
	case codes.Canceled, codes.DeadlineExceeded:
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%w: %s: %s", ErrUnavailable, what, status.Convert(err).Message())
}

// Assign asks the directory for count keys on a writable volume.
func (c *Client) Assign(ctx context.Context, count uint32) (Assignment, error) {
	resp, err := c.directory.Assign(ctx, &directorypb.AssignRequest{Count: count})
	if err != nil {
		return Assignment{}, grpcErr("assign", err)
	}
	return Assignment{
		Vid: resp.GetVid(), KeyStart: resp.GetKeyStart(), KeyCount: resp.GetKeyCount(),
		Replicas: replicasOf(resp.GetReplicas()), Token: resp.GetWriteToken(),
		Expiry: time.Unix(resp.GetTokenExpiryUnix(), 0),
	}, nil
}

// Image is one resolution of a photo to write.
type Image struct {
	Size        needle.SizeCode
	ContentType needle.ContentType
	Data        []byte
}

// WritePhoto stores the images of one new photo on every replica of an
// assigned volume and returns the photo's ID. See the package doc for the
// retry rule.
func (c *Client) WritePhoto(ctx context.Context, images []Image) (needle.PhotoID, error) {
	st, err := c.StorePhoto(ctx, images)
	return st.ID, err
}

// StoredPhoto is what StorePhoto returns: what the stores now serve.
type StoredPhoto struct {
	// ID is the new photo's ID.
	ID needle.PhotoID
	// AppendTime is the append time every replica stored (the images'
	// Last-Modified, in whole seconds).
	AppendTime time.Time
	// Checksums holds each image's needle checksum (its ETag), by size.
	Checksums map[needle.SizeCode]uint64
}

// StorePhoto is WritePhoto that also returns the append time and the
// needle checksums the stores recorded, so that the caller can put the
// images in a cache with the headers the stores serve them with. The
// images are written in one batch in ascending size code order (sizes
// before their WebP variants, as the store's index packs them); each size
// code may appear once.
func (c *Client) StorePhoto(ctx context.Context, images []Image) (StoredPhoto, error) {
	if len(images) == 0 {
		return StoredPhoto{}, fmt.Errorf("%w: no images", ErrInvalid)
	}
	seen := map[needle.SizeCode]bool{}
	for _, im := range images {
		if !im.Size.Valid() {
			return StoredPhoto{}, fmt.Errorf("%w: size code %d", ErrInvalid, im.Size)
		}
		if seen[im.Size] {
			return StoredPhoto{}, fmt.Errorf("%w: size %v given twice", ErrInvalid, im.Size)
		}
		seen[im.Size] = true
	}
	images = slices.Clone(images)
	slices.SortStableFunc(images, func(a, b Image) int { return cmp.Compare(a.Size, b.Size) })
	var firstErr error
	for attempt := 0; attempt < 2; attempt++ {
		st, err := c.writeOnce(ctx, images)
		if err == nil {
			return st, nil
		}
		if errors.Is(err, ErrInvalid) || ctx.Err() != nil {
			return StoredPhoto{}, err
		}
		if firstErr == nil {
			firstErr = err
		}
		c.opts.Logger.Warn("photo write failed; retrying on a fresh assignment", "attempt", attempt+1, "err", err)
	}
	return StoredPhoto{}, fmt.Errorf("%w: write failed twice: %v", ErrUnavailable, firstErr)
}

func newCookie() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (c *Client) writeOnce(ctx context.Context, images []Image) (StoredPhoto, error) {
	a, err := c.Assign(ctx, 1)
	if err != nil {
		return StoredPhoto{}, err
	}
	if len(a.Replicas) == 0 {
		return StoredPhoto{}, fmt.Errorf("%w: volume %d has no replicas", ErrUnavailable, a.Vid)
	}
	cookie, err := newCookie()
	if err != nil {
		return StoredPhoto{}, err
	}
	id := needle.PhotoID{Vid: a.Vid, Key: a.KeyStart, Cookie: cookie}
	req := &storepb.WriteRequest{Vid: a.Vid, WriteToken: a.Token}
	// One append time for every replica: they store identical bytes.
	at := time.Now().UnixNano()
	for _, im := range images {
		req.Needles = append(req.Needles, &storepb.Needle{
			Key: id.Key, Cookie: cookie, SizeCode: uint32(im.Size), ContentType: uint32(im.ContentType), Data: im.Data,
			AppendTimeUnixNano: at,
		})
	}
	g, gctx := errgroup.WithContext(ctx)
	results := make([]*storepb.WriteResponse, len(a.Replicas))
	for i, r := range a.Replicas {
		g.Go(func() error {
			sc, err := c.Store(r.GRPCAddr)
			if err != nil {
				return err
			}
			resp, err := sc.Write(gctx, req)
			if err != nil {
				return grpcErr(fmt.Sprintf("write %s to store %s", id, r.StoreID), err)
			}
			results[i] = resp
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		c.forget(a.Vid)
		c.cleanup(id, a)
		return StoredPhoto{}, err
	}
	// Replicas store byte-identical needles: any one's checksums do.
	st := StoredPhoto{ID: id, AppendTime: time.Unix(0, at).UTC(), Checksums: make(map[needle.SizeCode]uint64, len(images))}
	for _, res := range results[0].GetResults() {
		st.Checksums[needle.SizeCode(res.GetSizeCode())] = res.GetChecksum()
	}
	return st, nil
}

// cleanupTimeout bounds the tombstoning of an abandoned write.
const cleanupTimeout = 5 * time.Second

// cleanup tombstones an abandoned write on every replica of its volume, in
// parallel, trying each up to three times within cleanupTimeout. Every
// replica, because one whose call failed may still have taken the write, or
// may take it later: the store keeps the tombstone of a key it does not
// hold yet, so such a late write stays deleted. The write token allows data
// only, so it asks the directory for the photo's delete token first.
func (c *Client) cleanup(id needle.PhotoID, a Assignment) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	auth, err := c.directory.AuthorizeDelete(ctx, &directorypb.AuthorizeDeleteRequest{PhotoId: id.String()})
	if err != nil {
		c.opts.Logger.Warn("could not remove an abandoned write", "photo", id.String(), "err", err)
		return
	}
	req := &storepb.DeleteRequest{Vid: id.Vid, Key: id.Key, Cookie: id.Cookie, SizeCode: uint32(needle.SizeAll),
		WriteToken: auth.GetWriteToken(), AppendTimeUnixNano: time.Now().UnixNano()}
	var wg sync.WaitGroup
	for _, r := range a.Replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			for attempt := 0; attempt < 3 && ctx.Err() == nil; attempt++ {
				if attempt > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
					}
				}
				var sc storepb.StoreClient
				if sc, err = c.Store(r.GRPCAddr); err == nil {
					if _, err = sc.Delete(ctx, req); err == nil {
						return
					}
				}
				if code := status.Code(err); code == codes.InvalidArgument || code == codes.Unauthenticated || code == codes.NotFound {
					break // retrying cannot help
				}
			}
			c.opts.Logger.Warn("could not remove an abandoned write", "photo", id.String(), "store", r.StoreID, "err", err)
		}()
	}
	wg.Wait()
}

// Lookup returns a volume's replicas (live ones first) and state, cached
// for LookupTTL.
func (c *Client) Lookup(ctx context.Context, vid uint32) ([]Replica, storepb.VolumeState, error) {
	c.mu.Lock()
	e, ok := c.mu.lookups[vid]
	c.mu.Unlock()
	if ok && time.Since(e.at) < c.opts.LookupTTL {
		return e.replicas, e.state, nil
	}
	resp, err := c.directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
	if err != nil {
		return nil, 0, grpcErr(fmt.Sprintf("look up volume %d", vid), err)
	}
	e = lookupEntry{replicas: replicasOf(resp.GetReplicas()), state: resp.GetState(), at: time.Now()}
	c.mu.Lock()
	c.mu.lookups[vid] = e
	c.mu.Unlock()
	return e.replicas, e.state, nil
}

// forget drops a cached lookup, after a replica misbehaved.
func (c *Client) forget(vid uint32) {
	c.mu.Lock()
	delete(c.mu.lookups, vid)
	c.mu.Unlock()
}

// Fetched is an image read from a replica, with the store's metadata.
type Fetched struct {
	Data         []byte
	ContentType  string
	ETag         string
	LastModified string
	// StoreID is the replica that answered.
	StoreID string
}

// Read fetches one image from the first replica that has it. See the
// package doc for the failover rule.
func (c *Client) Read(ctx context.Context, id needle.PhotoID, size needle.SizeCode) (*Fetched, error) {
	if !size.Valid() {
		return nil, fmt.Errorf("%w: size code %d", ErrInvalid, size)
	}
	replicas, _, err := c.Lookup(ctx, id.Vid)
	if err != nil {
		return nil, err
	}
	path := needle.ImagePath(id, size, "")
	notFound := 0
	var lastErr error
	for _, r := range replicas {
		f, err := c.fetch(ctx, r, path)
		if err == nil {
			return f, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, ErrNotFound) {
			notFound++
		} else {
			lastErr = err
		}
	}
	if notFound == len(replicas) && len(replicas) > 0 {
		return nil, fmt.Errorf("%w: %s/%s", ErrNotFound, id, size)
	}
	c.forget(id.Vid)
	if lastErr == nil {
		lastErr = errors.New("no replica")
	}
	return nil, fmt.Errorf("%w: read %s/%s: %v", ErrUnavailable, id, size, lastErr)
}

// maxImageBytes bounds what Read accepts from a store.
const maxImageBytes = needle.MaxDataSize

func (c *Client) fetch(ctx context.Context, r Replica, path string) (*Fetched, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.HTTPAddr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", r.StoreID, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("%w: store %s", ErrNotFound, r.StoreID)
	case resp.StatusCode != http.StatusOK:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("store %s: HTTP %d %s", r.StoreID, resp.StatusCode, resp.Header.Get("X-Haybale-Error"))
	}
	// Only the image media types are images; a replica answering anything
	// else (an HTML page, say) is misbehaving, and the next one is tried.
	if ct := resp.Header.Get("Content-Type"); needle.ContentTypeFromMIME(ct) == needle.TypeUnknown {
		return nil, fmt.Errorf("store %s: Content-Type %q is not an image type", r.StoreID, ct)
	}
	n := resp.ContentLength
	if n < 0 || n > maxImageBytes {
		return nil, fmt.Errorf("store %s: bad Content-Length %d", r.StoreID, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(resp.Body, data); err != nil {
		return nil, fmt.Errorf("store %s: body: %w", r.StoreID, err)
	}
	return &Fetched{
		Data: data, ContentType: resp.Header.Get("Content-Type"), ETag: resp.Header.Get("ETag"),
		LastModified: resp.Header.Get("Last-Modified"), StoreID: r.StoreID,
	}, nil
}

// Delete writes tombstones for every size of the photo on every replica
// of its volume. It returns ErrNotFound when no replica held the photo.
func (c *Client) Delete(ctx context.Context, id needle.PhotoID) error {
	auth, err := c.directory.AuthorizeDelete(ctx, &directorypb.AuthorizeDeleteRequest{PhotoId: id.String()})
	if err != nil {
		return grpcErr("authorize delete of "+id.String(), err)
	}
	replicas := replicasOf(auth.GetReplicas())
	found := make([]bool, len(replicas))
	at := time.Now().UnixNano() // one tombstone, byte-identical on every replica
	// Not errgroup.WithContext: a replica that is down must not cancel the
	// delete on the others, which journal it (and give it to the down one
	// when it is back, for an EC volume; replica sync does for a plain one).
	var g errgroup.Group
	gctx := ctx
	for i, r := range replicas {
		g.Go(func() error {
			sc, err := c.Store(r.GRPCAddr)
			if err != nil {
				return err
			}
			resp, err := sc.Delete(gctx, &storepb.DeleteRequest{
				Vid: id.Vid, Key: id.Key, Cookie: id.Cookie, SizeCode: uint32(needle.SizeAll), WriteToken: auth.GetWriteToken(),
				AppendTimeUnixNano: at,
			})
			switch status.Code(err) {
			case codes.OK:
				// Deletes are idempotent: a replica without the photo
				// answers OK with nothing deleted.
				found[i] = resp.GetDeletedCount() > 0
				return nil
			case codes.NotFound:
				return nil // the replica lost the volume
			}
			return grpcErr(fmt.Sprintf("delete %s on store %s", id, r.StoreID), err)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, f := range found {
		if f {
			return nil
		}
	}
	return fmt.Errorf("%w: photo %s", ErrNotFound, id)
}

// PhotoURLs returns the image URL of each size of the photo, keyed by size
// letter, under the directory's URL policy.
func (c *Client) PhotoURLs(ctx context.Context, id needle.PhotoID) (map[string]string, error) {
	resp, err := c.directory.PhotoURLs(ctx, &directorypb.PhotoURLsRequest{PhotoId: id.String()})
	if err != nil {
		return nil, grpcErr("photo URLs of "+id.String(), err)
	}
	return resp.GetUrls(), nil
}

// VolumeWritable reports whether the directory last said the volume was
// writable (from the lookup cache when fresh).
func (c *Client) VolumeWritable(ctx context.Context, vid uint32) (bool, error) {
	_, st, err := c.Lookup(ctx, vid)
	return st == storepb.VolumeState_VOLUME_STATE_WRITABLE, err
}
