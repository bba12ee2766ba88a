// Package gateway is haybale's web-facing HTTP API: it accepts photo
// uploads, resizes them with package resizer, writes the four sizes to
// every replica through package client, answers photo information and
// deletes, and serves a web page for people to upload and browse photos.
//
// # Routes
//
//	POST   /photos              upload; 201 {"id","width","height","urls","webp_urls","sizes","thumbhash"}
//	GET    /photos              the most recent uploads (same as /api/recent)
//	GET    /photos/{id}         200 {"id","urls","webp_urls","thumbhash"} when the photo exists, else 404
//	GET    /photos/{id}/{size}  302 to the image URL of size t, s, m or l (".jpg" etc. allowed; ".webp" its WebP URL)
//	DELETE /photos/{id}         tombstones on every replica; 200 {"id","deleted","cache_evicted"}
//	GET    /api/recent          {"photos": recent upload answers, newest first,
//	                             "max_upload_bytes", "api_key_required"}
//	GET    /                    the web page (embedded; no external resources)
//	GET    /healthz, /readyz, /metrics
//
// Who may call them: POST /photos and DELETE /photos/{id} anyone with the
// API key (everyone when none is set), from no browser page but the
// gateway's own and AllowedOrigins; /photos and /api/recent list photos
// only to holders of the key (see below); the rest anyone who reaches the
// port, as the image URLs are public. /metrics is meant for the operator's
// monitoring.
//
// Every error answer is JSON {"error": "..."} with its status: 400 (empty
// body, malformed photo ID or size), 401 (API key missing or wrong), 403
// (a browser request from another origin), 404, 405 (with Allow), 408 (an
// upload slower than the minimum rate, or not done in time), 413 (body,
// part headers, pixels or decode memory over the limits), 415 (unsupported
// format), 422 (undecodable image), 503 (the cluster could not take or
// serve the request, or no memory is left for upload bodies; with
// Retry-After) and 500 for what should never happen.
//
// # Decisions
//
//   - The upload body is either the raw image (any Content-Type, which is
//     ignored) or multipart/form-data with the image in the field "file".
//     The format is sniffed by the resizer from the bytes; the file name
//     and Content-Type never matter.
//   - The body is limited with http.MaxBytesReader to Options.MaxUploadBytes
//     (default: the resizer's MaxBytes, 32 MiB); a multipart body may carry
//     up to 64 KiB of framing on top. A declared Content-Length over the
//     limit is refused before anything is read. Over the limit is 413.
//   - Upload bodies share a memory budget of Options.MaxConcurrentUploads
//     (at least 2) times MaxUploadBytes, charged as bytes arrive: a body is read into
//     chunks (16 KiB, then doubling up to 1 MiB), each charged before it
//     is allocated, so a body holds what it has received plus at most one
//     chunk; a body of several chunks is then copied into one buffer of
//     its exact size (charged too) and the chunks are freed. A body that
//     holds nothing waits for the budget in arrival order; one that already
//     holds some and cannot get more within UploadRateWindow is answered
//     503 (Retry-After), so bodies waiting for each other cannot deadlock.
//     The charge is released once the upload is resized.
//   - A client must send at least MinUploadRate bytes (default 8 KiB/s)
//     in every UploadRateWindow (10 s), and all of its body within
//     UploadTimeout (2 min); otherwise it is cut off with 408. The
//     connection's read deadline is set to the moment it would fall
//     behind, so a stalled client is not waited for beyond it.
//   - What bounds the harm of slow clients: the budget holds only bytes
//     that arrived, so N clients delay another upload of s bytes only once
//     together they hold more than the budget minus 2s (its chunks and
//     their copy): nearly all of the default 256 MiB on 2 CPUs for a photo
//     of a few MB. Each holds its bytes at most UploadTimeout. Filling the budget
//     therefore takes a sustained budget/UploadTimeout of upload bandwidth
//     (about 2 MiB/s by default), with every client above MinUploadRate:
//     a bandwidth flood, not a few slow connections. Slow clients that
//     have sent little hold a chunk of 16 KiB each (1 MiB for 64), outside
//     the budget only their connection (about 10 KiB of buffers and a
//     goroutine, as for any HTTP server).
//   - A multipart body's part headers are capped at MaxPartHeaderBytes
//     (16 KiB): the multipart reader is cut off once it has read that much
//     looking for a part's headers, before it has buffered more (413).
//   - Decoding is admitted by the resizer's decode memory budget (see
//     resizer.Options.DecodeMemory): an image whose header promises more
//     than the whole budget (a progressive JPEG bomb of a few hundred KB
//     declaring 80 megapixels, say) is 413 before it is decoded.
//   - Browser requests that change state (POST /photos, DELETE
//     /photos/{id}) are checked against their Origin header: the
//     gateway's own origin (the Origin's host and port equal the request's
//     Host) and Options.AllowedOrigins pass, any other origin, "null"
//     included, is 403 before the body is read. Requests without Origin
//     (curl, scripts, servers) are not browsers' cross-site requests and
//     pass; they still need the API key when one is set.
//   - Nothing is written to the cluster for a rejected upload: the whole
//     body is read and resized before the client is asked for an
//     assignment. A cluster write failure after the client's one retry on a
//     fresh assignment is 503.
//   - With Options.APIKey set, POST and DELETE need the header
//     "Authorization: Bearer <key>" (scheme case-insensitive, the key
//     compared in constant time); reads never need it. A refused request is
//     answered before its body is read.
//   - WebP variants: when the resizer's output of a size has a WebP
//     encoding (resizer.Image.WebP, or Options.WebPOf when set), it is
//     stored as the size's WebP variant (size code 8 + the size's) in the
//     same batch as the photo's other needles, and "webp_urls" maps each
//     such size letter to its URL: the size's URL with the extension
//     ".webp". "urls" keeps the JPEG or PNG. "sizes" gives each variant's
//     bytes as "webp_bytes". The web page shows each size as a <picture>
//     with a WebP <source>.
//   - GET /photos/{id} checks that the photo exists by reading its s
//     through the client, with replica failover, and computes the photo's
//     ThumbHash placeholder from it (resizer.Placeholder, the same bytes
//     as the upload answer's; about a millisecond), so the placeholder
//     needs no storage of its own. It then reads the WebP variant of the
//     thumbnail and lists "webp_urls" when it exists. GET
//     /photos/{id}/{size} only redirects, leaving the 404 of a missing
//     image to the server the URL points at.
//   - After a successful upload, with CacheNodes set and NoCachePush
//     false, the gateway pushes the photo's t and s and their WebP
//     variants to the cache node that owns the photo (PUT <internal
//     URL>/p/<photo ID>/<size>[.webp], with the Content-Type, ETag and
//     Last-Modified the stores serve), in parallel and within
//     CacheTimeout, before answering: a fresh upload is hot, and its first
//     views are then cache hits. Failures are logged and counted; the
//     upload still succeeds.
//   - After a successful delete the gateway evicts the photo from the cache
//     tier: it sends DELETE <node>/p/<photo ID> to the node that owns the
//     photo, CacheNodes[needle.Owner(key, CacheNodes)], with a short
//     timeout, before answering. This is best effort: a failure is logged
//     and counted, and the delete still succeeds. CacheNodes must be listed
//     exactly as the directory's --cache-nodes, because ownership hashes the
//     names as written; "host:port" is reached as http://host:port. Caches
//     take evictions only on their internal listener: CacheEvictURLs (one
//     per node, same order) names those, and CacheHTTPClient carries the
//     gateway's client certificate.
//   - The most recent uploads are kept in an in-memory ring of
//     Options.RecentUploads entries (default 20) for the web page; it is
//     lost on restart, and a delete through this gateway removes the photo
//     from it. Their IDs carry the cookies, so with an API key configured
//     the list is given only to requests that carry the key, and on a
//     gateway reachable from other machines (Options.Public) without a key
//     it is given to no one.
//
// Metrics live in Options.Registry (a registry of the gateway's own when
// nil) and are served at /metrics: uploads by outcome, resize and store
// write latency, bytes received and stored, deletes, and cache
// invalidations and pushes by result.
//
// A Gateway and its Handler are safe for concurrent use. Server runs the
// handler on a listener with timeouts and a graceful shutdown.
package gateway
