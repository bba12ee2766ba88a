package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
)

// Defaults of Options.
const (
	// DefaultCapacity is the default byte capacity, 1 GiB.
	DefaultCapacity = 1 << 30
	// DefaultCDNHeader is the default header that marks CDN traffic.
	DefaultCDNHeader = "X-Haybale-CDN"
	// DefaultUpstreamTimeout bounds one miss's fetch, failover included.
	DefaultUpstreamTimeout = 10 * time.Second
	// DefaultMaxAge is how long an image stays cached at most.
	DefaultMaxAge = time.Hour
)

// entryOverhead is what an entry weighs beyond its image bytes: the key,
// the entry struct and its header strings, and otter's node, roughly.
const entryOverhead = 256

// minDeletionMemory is the shortest time a deletion is remembered.
const minDeletionMemory = 10 * time.Second

// Options configure a Cache. Zero values take the documented defaults.
type Options struct {
	// Client fetches misses from the stores, with replica failover, and
	// tells whether a volume is writable. Required. The Cache does not
	// close it.
	Client *client.Client
	// Capacity bounds the bytes of cached images (plus a small overhead
	// per entry); default DefaultCapacity.
	Capacity int64
	// CDNHeader names the request header that marks traffic coming
	// through a CDN; default DefaultCDNHeader.
	CDNHeader string
	// AdmitFromCDN caches images requested through a CDN too. Default
	// false: as in Haystack, the CDN caches those.
	AdmitFromCDN bool
	// AdmitReadOnly caches images of volumes that are not writable too.
	// Default false: only images of writable volumes, the recent and hot
	// ones, are cached.
	AdmitReadOnly bool
	// Nodes are the base URLs (or "host:port", written exactly as the
	// directory's --cache-nodes lists them) of every cache node; a node
	// caches only the photo keys it owns under needle.Owner(key, Nodes).
	// Empty: this node owns every key.
	Nodes []string
	// Self is this node's entry in Nodes. Required when Nodes is set.
	Self string
	// UpstreamTimeout bounds one miss's fetch from the stores, every
	// replica attempt included; default DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
	// MaxAge bounds how long an image stays cached after it was fetched;
	// default DefaultMaxAge. It limits how long a deleted photo can still
	// be served should the eviction request from the gateway be lost.
	MaxAge time.Duration
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// Registry receives the cache's metrics. Default: a registry of the
	// cache's own, which also holds the Go and process collectors.
	Registry *prometheus.Registry
}

// deletion records when a photo was invalidated.
type deletion struct {
	id needle.PhotoID
	at time.Time
}

// upstream is what the cache needs from the cluster; *client.Client
// implements it.
type upstream interface {
	Read(ctx context.Context, id needle.PhotoID, size needle.SizeCode) (*client.Fetched, error)
	VolumeWritable(ctx context.Context, vid uint32) (bool, error)
}

// key names one cached image.
type key struct {
	id   needle.PhotoID
	size needle.SizeCode
}

// entry is one cached image with its prepared header values. It is never
// modified once built, so answers share it without a lock.
type entry struct {
	data         []byte
	contentType  []string // a header value slice: len == cap, never written
	etag         string
	lastModified string
	modTime      time.Time
	// noVariant marks an entry held under the key of a WebP variant the
	// photo does not have: it shares the data of the size's own entry and
	// answers bare paths only (the ".webp" path of such a photo is a 404),
	// so that browsers that accept WebP do not send a store a request for
	// the missing variant on every view of an older photo.
	noVariant bool
}

func (e *entry) weight() uint32 {
	w := len(e.etag) + len(e.lastModified) + len(e.contentType[0]) + entryOverhead
	if !e.noVariant {
		w += len(e.data) // the size's own entry counts the shared bytes
	}
	return uint32(min(w, math.MaxUint32))
}

// Cache is the caching tier's engine: an http.Handler for the image path
// in front of a cluster. It is safe for concurrent use; see the package
// doc for the rules.
type Cache struct {
	opts      Options
	up        upstream
	cdnHeader string // canonical form of opts.CDNHeader
	self      int    // index of opts.Self in opts.Nodes; -1 without nodes
	memory    time.Duration

	entries *otter.Cache[key, *entry]
	flights singleflight.Group
	metrics *metrics

	// ctx is the parent of every fetch; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu struct {
		sync.Mutex
		// deleted holds when each recently invalidated photo was
		// invalidated; deletedOrder holds the same in time order, so
		// entries older than memory are pruned from its front.
		deleted      map[needle.PhotoID]time.Time
		deletedOrder []deletion
	}
}

// New returns a Cache in front of opts.Client's cluster.
func New(opts Options) (*Cache, error) {
	if opts.Client == nil {
		return nil, errors.New("cache: Options.Client is required")
	}
	return newCache(opts, opts.Client)
}

func newCache(opts Options, up upstream) (*Cache, error) {
	if opts.Capacity < 0 {
		return nil, fmt.Errorf("cache: negative capacity %d", opts.Capacity)
	}
	if opts.Capacity == 0 {
		opts.Capacity = DefaultCapacity
	}
	if opts.CDNHeader == "" {
		opts.CDNHeader = DefaultCDNHeader
	}
	if opts.UpstreamTimeout <= 0 {
		opts.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Cache{
		opts:      opts,
		up:        up,
		cdnHeader: textproto.CanonicalMIMEHeaderKey(opts.CDNHeader),
		self:      -1,
		memory:    max(2*opts.UpstreamTimeout, minDeletionMemory),
	}
	if len(opts.Nodes) > 0 {
		opts.Nodes = slices.Clone(opts.Nodes)
		c.opts.Nodes = opts.Nodes
		c.self = slices.Index(opts.Nodes, opts.Self)
		if c.self < 0 {
			return nil, fmt.Errorf("cache: Self %q is not one of Nodes %q (names must match exactly)", opts.Self, opts.Nodes)
		}
	}
	c.mu.deleted = map[needle.PhotoID]time.Time{}
	var err error
	c.entries, err = otter.New(&otter.Options[key, *entry]{
		MaximumWeight:    uint64(opts.Capacity),
		ExpiryCalculator: otter.ExpiryWriting[key, *entry](opts.MaxAge),
		Weigher:          func(_ key, e *entry) uint32 { return e.weight() },
		OnAtomicDeletion: func(e otter.DeletionEvent[key, *entry]) {
			// c.metrics is set before the first insert.
			if e.Cause == otter.CauseOverflow {
				c.metrics.evictions.Inc()
			}
		},
		// Maintenance and deletion events run on the calling goroutine:
		// the cache starts no goroutine that Close would have to wait for.
		Executor: func(fn func()) { fn() },
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if c.metrics, err = newMetrics(c, opts.Registry); err != nil {
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Close cancels the fetches in flight (their requests get 502) and stops
// the cache's background work. Hits are still served after Close; misses
// fail. It is safe to call more than once.
func (c *Cache) Close() error {
	c.cancel()
	c.entries.StopAllGoroutines()
	return nil
}

// Registry returns the registry holding the cache's metrics.
func (c *Cache) Registry() *prometheus.Registry { return c.metrics.registry }

// Owns reports whether this node owns the photo key, and so may cache its
// images.
func (c *Cache) Owns(photoKey uint64) bool {
	return c.self < 0 || needle.Owner(photoKey, c.opts.Nodes) == c.self
}

// Invalidate evicts every size of the photo and remembers the deletion
// for a while, so that no fetch in flight puts it back (see the package
// doc).
func (c *Cache) Invalidate(id needle.PhotoID) {
	now := time.Now()
	c.mu.Lock()
	drop := 0
	for _, d := range c.mu.deletedOrder {
		if now.Sub(d.at) <= c.memory {
			break
		}
		if c.mu.deleted[d.id] == d.at {
			delete(c.mu.deleted, d.id)
		}
		drop++
	}
	c.mu.deletedOrder = append(c.mu.deletedOrder[drop:], deletion{id, now})
	c.mu.deleted[id] = now
	for _, s := range needle.StoredSizes {
		c.entries.Invalidate(key{id, s})
	}
	c.mu.Unlock()
	// Requests from now on start fresh fetches instead of joining one
	// that began before the delete.
	for _, s := range needle.StoredSizes {
		c.flights.Forget(flightKey(key{id, s}, true))
		c.flights.Forget(flightKey(key{id, s}, false))
	}
	c.metrics.invalidations.Inc()
}

// insert caches e under k unless the photo was invalidated within the
// deletion memory, and reports whether it did. The check and the insert
// are atomic with respect to Invalidate.
func (c *Cache) insert(k key, e *entry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if at, ok := c.mu.deleted[k.id]; ok && time.Since(at) <= c.memory {
		return false
	}
	c.entries.Set(k, e)
	return true
}

// Handler returns the public http.Handler of the image path: GET and HEAD
// of /p/...; other paths get the store's JSON 404, and DELETE is not
// allowed (eviction is internal, see EvictHandler). Mount it at /p/ on a
// shared mux, or use Server.
func (c *Cache) Handler() http.Handler { return http.HandlerFunc(c.serveHTTP) }

// EvictHandler returns the internal http.Handler of eviction: DELETE
// /p/<photo ID>[/<size>[.<ext>]]. It checks no credential itself: serve it
// only where the caller is authenticated (Server's internal listener
// admits gateways only).
func (c *Cache) EvictHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix) {
			imagehttp.NoRoute(w)
			return
		}
		if r.Method != http.MethodDelete {
			c.metrics.countStatus(imagehttp.MethodNotAllowed(w, "DELETE"))
			return
		}
		c.metrics.countStatus(c.serveDelete(w, r))
	})
}

// MaxPushBytes bounds the image of one push (PUT on the internal
// listener); pushes are meant for the small sizes of new photos.
const MaxPushBytes = 4 << 20

// PushHandler returns the internal http.Handler of pushes: PUT
// /p/<photo ID>/<size>[.webp] with the image as the body and the
// Content-Type, ETag and Last-Modified headers the stores serve it with.
// It caches the image as if a miss had fetched it, so the first view of a
// new photo is a hit. Callers: the gateway, right after it stored the
// photo. It checks no credential itself: serve it only where the caller is
// authenticated (Server's internal listener admits gateways only).
//
// Answers: 204 cached; 400 for a malformed path or headers (JSON error);
// 413 for a body over MaxPushBytes; 421 when this node does not own the
// photo's key (nothing cached); 409 when the photo was deleted within the
// deletion memory (nothing cached).
func (c *Cache) PushHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix) {
			imagehttp.NoRoute(w)
			return
		}
		if r.Method != http.MethodPut {
			c.metrics.countStatus(imagehttp.MethodNotAllowed(w, "PUT"))
			return
		}
		code := c.servePush(w, r)
		c.metrics.countStatus(code)
	})
}

// servePush answers one push and returns its status.
func (c *Cache) servePush(w http.ResponseWriter, r *http.Request) int {
	id, size, _, err := needle.ParseImagePath(r.URL.Path)
	if err != nil {
		return imagehttp.BadPath(w, err)
	}
	if r.ContentLength > MaxPushBytes {
		w.Header().Set("Connection", "close")
		return pushAnswer(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("pushed image over %d bytes", MaxPushBytes))
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxPushBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return pushAnswer(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("pushed image over %d bytes", MaxPushBytes))
		}
		return pushAnswer(w, http.StatusBadRequest, "reading the pushed image: "+err.Error())
	}
	if len(data) == 0 {
		return pushAnswer(w, http.StatusBadRequest, "empty pushed image")
	}
	e, err := newEntry(&client.Fetched{
		Data: data, ContentType: r.Header.Get("Content-Type"),
		ETag: r.Header.Get("ETag"), LastModified: r.Header.Get("Last-Modified"),
	})
	if err != nil {
		return pushAnswer(w, http.StatusBadRequest, "pushed image: "+err.Error())
	}
	if !c.Owns(id.Key) {
		c.metrics.pushes[pushNotOwner].Inc()
		return pushAnswer(w, http.StatusMisdirectedRequest, "this cache node does not own photo "+id.String())
	}
	if !c.insert(key{id, size}, e) {
		c.metrics.pushes[pushDeleted].Inc()
		return pushAnswer(w, http.StatusConflict, "photo "+id.String()+" was deleted")
	}
	c.metrics.pushes[pushCached].Inc()
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

// pushAnswer writes a JSON error answer of a push and returns its status.
func pushAnswer(w http.ResponseWriter, code int, msg string) int {
	imagehttp.WriteJSON(w, code, map[string]any{"error": msg})
	return code
}

func (c *Cache) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix) {
		imagehttp.NoRoute(w)
		return
	}
	start := time.Now()
	code := c.serveImage(w, r)
	c.metrics.countStatus(code)
	c.metrics.latency.Observe(time.Since(start).Seconds())
}

// Static JSON bodies of the cache's own error answers.
var (
	bodyUpstream = []byte(`{"error":"no replica could serve the image"}` + "\n")
	bodyTimeout  = []byte(`{"error":"the replicas did not answer in time"}` + "\n")
)

// serveImage answers one request under /p/ and returns its status.
func (c *Cache) serveImage(w http.ResponseWriter, r *http.Request) int {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	default:
		return imagehttp.MethodNotAllowed(w, "GET, HEAD")
	}
	id, size, ext, err := needle.ParseImagePath(r.URL.Path)
	if err != nil {
		return imagehttp.BadPath(w, err)
	}
	// Entries are keyed by the needle they hold: a size and its WebP
	// variant are cached apart, and a bare path is answered from the one
	// its Accept header chooses.
	choice := imagehttp.Choose(r.Header, size, ext)
	choice.SetVary(w)
	k := key{id, choice.Size}
	if e, ok := c.entries.GetIfPresent(k); ok {
		c.metrics.hits.Add(1)
		if e.noVariant && choice.Fallback == k.size {
			return imagehttp.NotFound(w) // the photo has no such variant
		}
		return c.answer(w, r, e)
	}
	refused := ruleNone
	switch {
	case !c.Owns(id.Key):
		refused = ruleNotOwner
	case !c.opts.AdmitFromCDN && c.fromCDN(r):
		refused = ruleCDN
	}
	e, fetched, err := c.fetch(k, refused)
	if errors.Is(err, errNotFound) && choice.Fallback != k.size {
		// A photo stored without its WebP variant: serve the size itself,
		// and remember under the variant's key that it is missing.
		variant := k
		k.size = choice.Fallback
		e, _, err = c.fetch(k, refused)
		fetched = true
		if err == nil {
			if own, ok := c.entries.GetIfPresent(k); ok && own == e {
				alias := *e
				alias.noVariant = true
				c.insert(variant, &alias)
			}
		}
	}
	if fetched {
		c.metrics.misses.Add(1)
	} else {
		c.metrics.hits.Add(1)
	}
	switch {
	case err == nil:
		return c.answer(w, r, e)
	case errors.Is(err, errNotFound):
		return imagehttp.NotFound(w)
	case errors.Is(err, errTimeout):
		return imagehttp.Failure(w, http.StatusGatewayTimeout, imagehttp.ErrorUpstreamTimeout, bodyTimeout)
	default:
		return imagehttp.Failure(w, http.StatusBadGateway, imagehttp.ErrorUpstreamUnavailable, bodyUpstream)
	}
}

// answer serves a cached or fetched image.
func (c *Cache) answer(w http.ResponseWriter, r *http.Request, e *entry) int {
	im := imagehttp.Image{
		Data:         e.data,
		ContentType:  e.contentType,
		ETag:         e.etag,
		LastModified: e.lastModified,
		ModTime:      e.modTime,
	}
	code, written := imagehttp.Serve(w, r, &im)
	if written > 0 {
		c.metrics.bytesServed.Add(float64(written))
	}
	return code
}

// fromCDN reports whether the request came through a CDN.
func (c *Cache) fromCDN(r *http.Request) bool {
	v := r.Header[c.cdnHeader]
	return len(v) > 0 && v[0] != ""
}

// serveDelete answers DELETE /p/<photo ID>[/<size>[.<ext>]]: 204 after
// evicting every size of the photo.
func (c *Cache) serveDelete(w http.ResponseWriter, r *http.Request) int {
	rest := strings.TrimPrefix(r.URL.Path, needle.ImagePathPrefix)
	idPart, _, hasSize := strings.Cut(rest, "/")
	id, err := needle.ParsePhotoID(idPart)
	if err == nil && hasSize {
		_, _, _, err = needle.ParseImagePath(r.URL.Path)
	}
	if err != nil {
		return imagehttp.BadPath(w, err)
	}
	c.Invalidate(id)
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

// Errors of a fetch, mapped to answers by serveImage.
var (
	errNotFound = errors.New("cache: image not found on any replica")
	errTimeout  = errors.New("cache: replicas did not answer in time")
	errUpstream = errors.New("cache: no replica could serve the image")
)

// rule is an admission rule; ruleNone admits.
type rule int

const (
	ruleNone rule = iota
	ruleNotOwner
	ruleCDN
	ruleReadOnly
	ruleDeleted
	numRules
)

var ruleNames = [numRules]string{"", "not-owner", "cdn", "read-only", "deleted"}

// flightKey names the fetch of k for singleflight. Fetches that may be
// admitted and fetches that may not are kept apart (see the package doc).
func flightKey(k key, admissible bool) string {
	var b []byte
	if admissible {
		b = append(b, 'a')
	} else {
		b = append(b, 'n')
	}
	b = append(b, k.id.String()...)
	b = append(b, '/')
	b = append(b, k.size.String()...)
	return string(b)
}

// flight is the shared result of one fetch.
type flight struct {
	e       *entry
	fetched bool // false: a hit found by the flight's re-check
}

// fetch returns k's image, joining the fetch in flight for it or
// starting one. refused is the rule that already refuses admission, or
// ruleNone. fetched reports whether the image came from the stores.
func (c *Cache) fetch(k key, refused rule) (e *entry, fetched bool, err error) {
	v, err, _ := c.flights.Do(flightKey(k, refused == ruleNone), func() (any, error) {
		if refused == ruleNone {
			// A flight for k may have admitted it between this request's
			// miss and its call.
			if e, ok := c.entries.GetIfPresent(k); ok {
				return flight{e: e}, nil
			}
		}
		e, err := c.load(k, refused)
		return flight{e: e, fetched: true}, err
	})
	f, _ := v.(flight)
	return f.e, f.fetched || err != nil, err
}

// load fetches k from the stores and admits it unless a rule refuses.
func (c *Cache) load(k key, refused rule) (*entry, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.UpstreamTimeout)
	defer cancel()
	start := time.Now()
	f, err := c.up.Read(ctx, k.id, k.size)
	c.metrics.upstreamLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		switch {
		case errors.Is(err, client.ErrNotFound):
			c.metrics.upstreamNotFound.Inc()
			return nil, errNotFound
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			c.metrics.upstreamErrors[upstreamTimeout].Inc()
			c.opts.Logger.Warn("image fetch timed out", "photo", k.id.String(), "size", k.size.String(), "timeout", c.opts.UpstreamTimeout, "err", err)
			return nil, fmt.Errorf("%w: %v", errTimeout, err)
		default:
			c.metrics.upstreamErrors[upstreamUnavailable].Inc()
			c.opts.Logger.Warn("image fetch failed on every replica", "photo", k.id.String(), "size", k.size.String(), "err", err)
			return nil, fmt.Errorf("%w: %v", errUpstream, err)
		}
	}
	e, err := newEntry(f)
	if err != nil {
		c.metrics.upstreamErrors[upstreamBadAnswer].Inc()
		c.opts.Logger.Warn("malformed image answer from a store", "photo", k.id.String(), "size", k.size.String(), "store", f.StoreID, "err", err)
		return nil, fmt.Errorf("%w: %v", errUpstream, err)
	}
	r := refused
	if r == ruleNone && !c.opts.AdmitReadOnly {
		// The lookup Read just made is cached, so this is no RPC.
		if ok, err := c.up.VolumeWritable(ctx, k.id.Vid); err != nil || !ok {
			r = ruleReadOnly
		}
	}
	if r == ruleNone && !c.insert(k, e) {
		r = ruleDeleted
	}
	if r == ruleNone {
		c.metrics.admissions.Inc()
	} else {
		c.metrics.refused[r].Inc()
	}
	return e, nil
}

// newEntry prepares a fetched image for serving, checking the metadata
// the answers need.
func newEntry(f *client.Fetched) (*entry, error) {
	if !imagehttp.IsImageContentType(f.ContentType) {
		return nil, fmt.Errorf("Content-Type %q is not an image type", f.ContentType)
	}
	if len(f.ETag) < 2 || f.ETag[0] != '"' || f.ETag[len(f.ETag)-1] != '"' {
		return nil, fmt.Errorf("bad ETag %q", f.ETag)
	}
	mod, err := http.ParseTime(f.LastModified)
	if err != nil {
		return nil, fmt.Errorf("bad Last-Modified %q", f.LastModified)
	}
	return &entry{
		data:         f.Data,
		contentType:  []string{f.ContentType},
		etag:         f.ETag,
		lastModified: f.LastModified,
		modTime:      mod.UTC(),
	}, nil
}
