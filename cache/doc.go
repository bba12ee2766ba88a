// Package cache is the caching HTTP tier in front of the stores: it serves
// the image path /p/<photo ID>/<size>[.<ext>] exactly as a store does and
// keeps recently fetched images in memory.
//
// # Answers
//
// A hit and a miss give the same answer, byte for byte, as the store would:
// the headers, 304, Range (206/416) and the 404 of a missing image are
// written by internal/imagehttp, which the store uses too. Only the
// failures that a store would answer with a 5xx differ, because the cache
// has already tried every replica:
//
//   - every replica answered 404 (or the directory does not know the
//     volume): the store's 404, "Cache-Control: public, max-age=60";
//   - no replica could serve it (connection errors, 5xx and corrupt
//     answers from all, or no replica known): 502, "X-Haybale-Error:
//     upstream-unavailable", "Cache-Control: no-store", JSON error;
//   - the replicas did not answer within Options.UpstreamTimeout: 504,
//     "X-Haybale-Error: upstream-timeout", the same otherwise.
//
// # Variants
//
// A size and its WebP variant are separate needles and separate entries:
// the cache keys by the needle a request names (internal/imagehttp.Choose).
// "<size>.webp" is the variant, any other extension the size itself, and a
// bare "<size>" follows the Accept header, answering with "Vary: Accept"
// as the store does. When a bare request chooses the variant and the photo
// has none (an older photo), the size itself is served, and the entry is
// remembered under the variant's key too (sharing its bytes, weighing only
// its overhead), so later views of it reach no store; the ".webp" path of
// such a photo stays a 404.
//
// # Pushes
//
// PUT /p/<photo ID>/<size>[.webp] on the internal listener (PushHandler;
// gateways only, like eviction) puts an image the gateway has just stored
// into the cache with the headers the stores serve it with, so that the
// first view of a new photo is a hit: fresh uploads are the hot ones. A
// push obeys ownership (421 on a node that does not own the key) and the
// deletion memory (409), and is bounded by MaxPushBytes (413).
//
// # Eviction
//
// DELETE /p/<photo ID> (optionally followed by /<size>[.<ext>]) evicts
// every size of the photo and answers 204, whether or not anything was
// cached; the gateway sends it to the owning node after a photo delete.
// It is served only on the internal listener (EvictHandler,
// InternalHandler, ServerOptions.InternalAddr), never on the public image
// port (which answers 405): with mutual TLS from the cluster CA, only a
// caller whose certificate names the gateway role may evict, and only an
// operator may read /metrics there (403 for other roles, no TLS session
// without a cluster certificate).
// For a while afterwards (twice UpstreamTimeout, at least 10 s) the node
// remembers the deletion, and no fetch that was in flight at that moment
// can put the old bytes back: such fetches answer their own requests but
// are not admitted.
//
// # Misses
//
// A miss loads the whole image through the cache's Loader, a one-method
// interface (as groupcache's Getter) that anything able to produce an
// image's bytes and headers can implement. A node in a cluster uses
// ClientLoader: client.Client.Read, which looks the volume's replicas up
// in the directory (cached for the client's LookupTTL) and fails over to
// the next replica on a connection error, a timeout, a 5xx (including a
// store's "corrupt" answer), a 404, or an answer whose Content-Type is not
// one of the image types (a store that answers an HTML page is
// misbehaving, and the page is never forwarded: the cache itself refuses
// any loaded answer without an image type, and internal/imagehttp never
// serves one). Only one
// fetch per image is in flight at a time (golang.org/x/sync/singleflight):
// concurrent requests for the same image wait for it and share its bytes.
// A fetch is not tied to the request that started it: it runs under the
// cache's own context with Options.UpstreamTimeout, so a client hanging up
// does not fail the other waiters. Each replica attempt is bounded by the
// client's HTTPClient timeout, which should be well under UpstreamTimeout
// so that a hung replica leaves time for the next one. Answers other than
// an image (404s, failures) are not cached.
//
// # Admission
//
// As in Haystack, a fetched image is cached only when it is likely to be
// read again here. The rules, checked in this order, each counted in
// haybale_cache_admissions_refused_total{rule=...} when it refuses:
//
//   - not-owner: several nodes share the key space by rendezvous hashing on
//     the photo key (needle.Owner over Options.Nodes, the function the
//     directory's URL builder uses), and a node caches only the keys it
//     owns. It still answers for the others, fetching without caching.
//   - cdn: the request carries the Options.CDNHeader header (non-empty),
//     so a CDN is caching the answer; switch off with AdmitFromCDN.
//   - read-only: the image's volume is not writable (Loaded.Writable).
//     Recent uploads, which live on writable volumes, are the hot ones;
//     switch off with AdmitReadOnly. ClientLoader takes the state from
//     the client's lookup cache.
//   - deleted: the photo was invalidated while the fetch was in flight.
//
// Requests refused by the not-owner or cdn rule share fetches among
// themselves but never with admitted ones, so the admitted fetch of an
// image can put it in the cache before its flight ends: later requests
// then hit rather than start a second fetch.
//
// # Engine and HTTP
//
// cache.go is the engine: lookup, admission, loading (one flight per
// image) and invalidation. http.go answers the image path and eviction
// over net/http with internal/imagehttp. fast.go answers the plain hit (a
// GET or HEAD with no conditional or Range header, of a cached image) on
// the public listener without net/http: Server serves that listener with
// fasthttp (internal/serve, Options.Fast), writing the cached bytes and
// the entry's prepared header values with no allocation (a large image
// in the memfd with sendfile, see Memory); every other
// request, misses included, goes to the net/http handler through
// fasthttp's adaptor. With ServerOptions.EventLoop (`haybale cache
// --event-loop`, the command's default), loop.go answers the same hits,
// with the same checks and header values, on internal/evloop's event
// loops instead, and the loops hand every other request to the net/http
// handler off the loop.
//
// # Memory
//
// Images live in a maypok86/otter/v2 cache bounded by Options.Capacity
// bytes: an entry weighs its image bytes plus a fixed overhead for its key,
// headers and bookkeeping. Otter's eviction policy (W-TinyLFU) chooses the
// victims. Otter runs its maintenance on the calling goroutine, so the
// cache starts no goroutine of its own.
//
// An image of Options.MemfdMin bytes or more (64 KiB by default) is kept,
// once admitted, in the cache's memfd rather than in Go memory (arena.go):
// one sparse memfd_create file, mapped once, in page-aligned slots. Its
// entry's bytes are a slice of the mapping, so every answer reads it as
// any other; a plain hit over TCP sends it with sendfile(2) under TCP_CORK
// (as nginx's sendfile and tcp_nopush), with no copy through the process.
// The weights, and so the capacity, are the same either way; the memfd's
// pages count in the process's RSS and in haybale_cache_memfd_bytes. Slots
// are reference-counted by the entries and the answers in flight, and a
// freed slot is hole-punched before it is reused, so that an evicted
// image's pages still in a socket's send queue are never overwritten.
// Without memfd_create (outside Linux, or where it fails) every image
// stays in Go memory.
//
// # Concurrency
//
// A Cache is safe for concurrent use. Its fields are immutable after New
// except the otter cache and singleflight group (internally synchronized),
// the metrics (atomic), the deletion records (under mu) and the memfd's
// allocator (its own mutex; slot reference counts are atomic). A Server is
// safe for concurrent use; Serve is called once.
package cache
