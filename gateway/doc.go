// Package gateway is haybale's web-facing HTTP API: it accepts photo
// uploads, resizes them with package resizer, writes the four sizes to
// every replica through package client, answers photo information and
// deletes, and serves a web page for people to upload and browse photos.
//
// # Routes
//
//	POST   /photos              upload; 201 {"id","width","height","urls","sizes"}
//	GET    /photos              the most recent uploads (same as /api/recent)
//	GET    /photos/{id}         200 {"id","urls"} when the photo exists, else 404
//	GET    /photos/{id}/{size}  302 to the image URL of size t, s, m or l (".jpg" etc. allowed)
//	DELETE /photos/{id}         tombstones on every replica; 200 {"id","deleted","cache_evicted"}
//	GET    /api/recent          {"photos": recent upload answers, newest first,
//	                             "max_upload_bytes", "api_key_required"}
//	GET    /                    the web page (embedded; no external resources)
//	GET    /healthz, /readyz, /metrics
//
// Every error answer is JSON {"error": "..."} with its status: 400 (empty
// body, malformed photo ID or size), 401 (API key missing or wrong), 404,
// 405 (with Allow), 413 (body or pixels over the limits), 415 (unsupported
// format), 422 (undecodable image), 503 (the cluster could not take or
// serve the request) and 500 for what should never happen.
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
//     times MaxUploadBytes: an upload charges its declared size (the limit
//     when it declares none) before reading and allocates one buffer of at
//     most that size, so a burst costs at most the budget on top of the
//     resizer's own bounded pool; further uploads wait, honouring their
//     context. A client that sends nothing for BodyIdleTimeout (15 s) is
//     cut off, so stalled uploads cannot hold the budget.
//   - Nothing is written to the cluster for a rejected upload: the whole
//     body is read and resized before the client is asked for an
//     assignment. A cluster write failure after the client's one retry on a
//     fresh assignment is 503.
//   - With Options.APIKey set, POST and DELETE need the header
//     "Authorization: Bearer <key>" (scheme case-insensitive, the key
//     compared in constant time); reads never need it. A refused request is
//     answered before its body is read.
//   - GET /photos/{id} checks that the photo exists by reading its
//     thumbnail (the smallest needle) through the client, with replica
//     failover; GET /photos/{id}/{size} only redirects, leaving the 404 of
//     a missing image to the server the URL points at.
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
//     the list is given only to requests that carry the key.
//
// Metrics live in Options.Registry (a registry of the gateway's own when
// nil) and are served at /metrics: uploads by outcome, resize and store
// write latency, bytes received and stored, deletes and cache
// invalidations by result.
//
// A Gateway and its Handler are safe for concurrent use. Server runs the
// handler on a listener with timeouts and a graceful shutdown.
package gateway
