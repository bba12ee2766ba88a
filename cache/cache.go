package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/textproto"
	"slices"
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
	// Loader loads the images the cache does not hold. Required unless
	// Client is set.
	Loader Loader
	// Client, when Loader is nil, loads misses from the stores with
	// replica failover (ClientLoader). The Cache does not close it.
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
	// MemfdMin is the smallest image kept, once cached, in the cache's
	// memfd rather than in Go memory, and sent with sendfile(2) on a hit
	// over plain TCP (see arena.go); default DefaultMemfdMin. Negative
	// keeps every image in Go memory. Where memfd_create or the mapping is
	// not available, every image stays in Go memory (New logs it).
	MemfdMin int
}

// deletion records when a photo was invalidated.
type deletion struct {
	id needle.PhotoID
	at time.Time
}

// Loader loads an image the cache does not hold: the one thing a Cache
// needs from the cluster (as groupcache's Getter). It is called by one
// fetch per image at a time, under a context bounded by
// Options.UpstreamTimeout, and must be safe for concurrent use.
type Loader interface {
	// Load returns the image, or an error: one wrapping ErrNotFound when
	// the image does not exist (answered 404), any other when it could
	// not be loaded (502, or 504 when ctx's deadline passed).
	Load(ctx context.Context, id needle.PhotoID, size needle.SizeCode) (Loaded, error)
}

// LoaderFunc adapts a function to Loader.
type LoaderFunc func(ctx context.Context, id needle.PhotoID, size needle.SizeCode) (Loaded, error)

// Load calls f.
func (f LoaderFunc) Load(ctx context.Context, id needle.PhotoID, size needle.SizeCode) (Loaded, error) {
	return f(ctx, id, size)
}

// Loaded is an image as a Loader returns it: the bytes and the headers a
// store answered them with, which the cache answers with too.
type Loaded struct {
	Data []byte
	// ContentType, ETag (quoted) and LastModified (http.TimeFormat) are
	// the store's header values; an image without all three is refused as
	// a malformed answer.
	ContentType  string
	ETag         string
	LastModified string
	// Writable reports whether the image's volume takes writes, for the
	// read-only admission rule (Options.AdmitReadOnly).
	Writable bool
	// Source names where the image came from (a store ID), for logs.
	Source string
}

// ErrNotFound is wrapped by a Loader's error for an image that does not
// exist.
var ErrNotFound = errors.New("cache: image not found")

// ClientLoader returns the Loader of a cluster client: client.Read with
// its replica failover, and the volume's writability from the client's
// lookup cache (no RPC after the read's lookup).
func ClientLoader(cl *client.Client) Loader {
	return LoaderFunc(func(ctx context.Context, id needle.PhotoID, size needle.SizeCode) (Loaded, error) {
		f, err := cl.Read(ctx, id, size)
		if errors.Is(err, client.ErrNotFound) {
			return Loaded{}, fmt.Errorf("%w: %v", ErrNotFound, err)
		}
		if err != nil {
			return Loaded{}, err
		}
		writable, err := cl.VolumeWritable(ctx, id.Vid)
		return Loaded{
			Data: f.Data, ContentType: f.ContentType, ETag: f.ETag, LastModified: f.LastModified,
			Writable: err == nil && writable, Source: f.StoreID,
		}, nil
	})
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
	// The same header values as bytes, for the fast hit path.
	contentTypeB, etagB, lastModifiedB []byte
	// noVariant marks an entry held under the key of a WebP variant the
	// photo does not have: it shares the data of the size's own entry and
	// answers bare paths only (the ".webp" path of such a photo is a 404),
	// so that browsers that accept WebP do not send a store a request for
	// the missing variant on every view of an older photo.
	noVariant bool
	// slot, when set, holds data in the cache's memfd. Only entries in
	// otter have one (a noVariant entry shares its size's); an answer
	// reads data only between acquire and release.
	slot *slot
}

// acquire takes an answer's reference to e's bytes and reports whether it
// did: false when e's memfd slot was just freed (e was evicted), which
// the caller treats as a miss. An entry in Go memory needs none.
func (e *entry) acquire() bool { return e.slot == nil || e.slot.acquire() }

// release drops the reference acquire took.
func (e *entry) release() {
	if e.slot != nil {
		e.slot.release()
	}
}

func (e *entry) weight() uint32 {
	// In int64, so that the bound is also a value of the type on 32-bit
	// platforms.
	w := int64(2*(len(e.etag)+len(e.lastModified)+len(e.contentType[0])) + entryOverhead)
	if !e.noVariant {
		w += int64(len(e.data)) // the size's own entry counts the shared bytes
	}
	return uint32(min(w, math.MaxUint32))
}

// Cache is the caching tier's engine: an http.Handler for the image path
// in front of a cluster. It is safe for concurrent use; see the package
// doc for the rules.
type Cache struct {
	opts      Options
	loader    Loader
	cdnHeader string // canonical form of opts.CDNHeader
	self      int    // index of opts.Self in opts.Nodes; -1 without nodes
	memory    time.Duration

	entries *otter.Cache[key, *entry]
	arena   *arena // nil: every image in Go memory
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

// New returns a Cache that loads its misses with opts.Loader, or from
// opts.Client's cluster.
func New(opts Options) (*Cache, error) {
	if opts.Loader == nil {
		if opts.Client == nil {
			return nil, errors.New("cache: Options.Loader or Options.Client is required")
		}
		opts.Loader = ClientLoader(opts.Client)
	}
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
		loader:    opts.Loader,
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
			if e.Value.slot != nil {
				e.Value.slot.drop()
			}
		},
		// Maintenance and deletion events run on the calling goroutine:
		// the cache starts no goroutine that Close would have to wait for.
		Executor: func(fn func()) { fn() },
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if opts.MemfdMin >= 0 {
		if opts.MemfdMin == 0 {
			opts.MemfdMin = DefaultMemfdMin
			c.opts.MemfdMin = opts.MemfdMin
		}
		if c.arena, err = newArena(opts.Capacity, opts.MemfdMin); err != nil {
			opts.Logger.Warn("large images stay in Go memory: no memfd", "err", err)
		}
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
// are atomic with respect to Invalidate. e itself is never modified: an
// image of MemfdMin bytes or more is cached as a copy of e whose bytes
// are in the memfd (e keeps its own, for the answers of the fetch that
// loaded it). When e has a slot already (a noVariant entry sharing its
// size's), the caller's reference to it passes to the cache.
func (c *Cache) insert(k key, e *entry) bool {
	if e.slot == nil && !e.noVariant && c.arena != nil && len(e.data) >= c.arena.min {
		if s := c.arena.store(e.data); s != nil {
			large := *e
			large.data, large.slot = s.data(), s
			e = &large
		}
	}
	if e.slot != nil {
		e.slot.hold()
	}
	c.mu.Lock()
	if at, ok := c.mu.deleted[k.id]; ok && time.Since(at) <= c.memory {
		c.mu.Unlock()
		if e.slot != nil {
			e.slot.drop()
		}
		return false
	}
	c.entries.Set(k, e)
	c.mu.Unlock()
	return true
}

// get returns k's image: from memory, or loaded (see fetch), sharing the
// load in flight for it. When k's needle is missing and fallback is
// another size (a bare size whose WebP variant the photo lacks), it
// returns the fallback's image and remembers under k that the variant is
// missing (an entry with noVariant set). fromCDN tells whether the request
// came through a CDN, for the cdn admission rule. It counts the hit or
// miss. The entry returned is acquired: the caller calls its release once
// the answer is written.
func (c *Cache) get(k key, fallback needle.SizeCode, fromCDN bool) (*entry, error) {
	if e, ok := c.entries.GetIfPresent(k); ok && e.acquire() {
		c.metrics.hits.Add(1)
		return e, nil
	}
	refused := ruleNone
	switch {
	case !c.Owns(k.id.Key):
		refused = ruleNotOwner
	case !c.opts.AdmitFromCDN && fromCDN:
		refused = ruleCDN
	}
	e, fetched, err := c.fetchAcquired(k, refused)
	if errors.Is(err, errNotFound) && fallback != k.size {
		// A photo stored without its WebP variant: serve the size itself,
		// and remember under the variant's key that it is missing.
		variant := k
		k.size = fallback
		e, _, err = c.fetchAcquired(k, refused)
		fetched = true
		if err == nil {
			// The size's own entry, if this fetch (or an earlier one)
			// cached it; the alias shares its bytes, and its slot with one
			// reference of its own.
			if own, ok := c.entries.GetIfPresent(k); ok && own.etag == e.etag && own.acquire() {
				alias := *own
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
	return e, err
}

// fetchAcquired is fetch, with the entry returned acquired. A flight that
// found k cached shares that entry with every request waiting for it; if
// it was evicted (its slot freed) before this one took its reference, k
// is loaded again outside the flight (and admitted again): load returns
// the loaded bytes, which are in Go memory and need no reference.
func (c *Cache) fetchAcquired(k key, refused rule) (*entry, bool, error) {
	e, fetched, err := c.fetch(k, refused)
	if err != nil || e.acquire() {
		return e, fetched, err
	}
	e, err = c.load(k, refused)
	return e, true, err
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
	f, err := c.loader.Load(ctx, k.id, k.size)
	c.metrics.upstreamLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		switch {
		case errors.Is(err, ErrNotFound):
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
	e, err := newEntry(&f)
	if err != nil {
		c.metrics.upstreamErrors[upstreamBadAnswer].Inc()
		c.opts.Logger.Warn("malformed image answer from a store", "photo", k.id.String(), "size", k.size.String(), "store", f.Source, "err", err)
		return nil, fmt.Errorf("%w: %v", errUpstream, err)
	}
	r := refused
	if r == ruleNone && !c.opts.AdmitReadOnly && !f.Writable {
		r = ruleReadOnly
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
func newEntry(f *Loaded) (*entry, error) {
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
		// The header values of a plain hit, as bytes once.
		contentTypeB:  []byte(f.ContentType),
		etagB:         []byte(f.ETag),
		lastModifiedB: []byte(f.LastModified),
	}, nil
}
