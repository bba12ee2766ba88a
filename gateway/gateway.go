package gateway

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/semaphore"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/resizer"
)

// Defaults of Options.
const (
	// DefaultRecentUploads is how many recent uploads the web page lists.
	DefaultRecentUploads = 20
	// DefaultCacheTimeout bounds one cache invalidation request.
	DefaultCacheTimeout = 2 * time.Second
	// DefaultMinUploadRate is the slowest accepted upload, in bytes/s.
	DefaultMinUploadRate = 8 << 10
	// DefaultUploadRateWindow is the window the upload rate is measured
	// over.
	DefaultUploadRateWindow = 10 * time.Second
	// DefaultUploadTimeout bounds reading one upload body.
	DefaultUploadTimeout = 2 * time.Minute
)

// multipartSlack is how many bytes of multipart framing (boundaries, part
// headers, other small fields) a multipart upload may carry beyond
// MaxUploadBytes.
const multipartSlack = 64 << 10

// Options configure a Gateway. Client and Resizer are required; a zero
// field takes its documented default.
type Options struct {
	// Client writes, reads and deletes photos in the cluster. Required;
	// the Gateway does not close it.
	Client *client.Client
	// Resizer turns an upload into the four sizes. Required.
	Resizer *resizer.Resizer
	// APIKey, when not empty, is required as "Authorization: Bearer
	// <key>" on uploads and deletes. Empty leaves them open.
	APIKey string
	// CacheNodes are the base URLs ("http://127.0.0.1:8100") or
	// "host:port" of the cache tier's nodes, listed exactly as the
	// directory lists them. After a delete the owning node is asked to
	// evict the photo. Empty: no cache tier.
	CacheNodes []string
	// CacheEvictURLs, when set, are the base URLs of the caches' internal
	// listeners ("https://cache1:8091"), one per CacheNodes entry and in
	// the same order: the owner is chosen by its name in CacheNodes and
	// the eviction is sent to its internal listener (caches serve
	// eviction only there, to gateways). Empty: evictions go to
	// CacheNodes.
	CacheEvictURLs []string
	// CacheTimeout bounds one cache invalidation, and the pushes of one
	// new photo; default DefaultCacheTimeout (2 s).
	CacheTimeout time.Duration
	// NoCachePush turns off pushing new photos to the cache. By default,
	// with CacheNodes set, the gateway puts the t and s sizes of each new
	// photo, and their WebP variants, into the owning cache node's memory
	// (PUT on its internal listener, as for evictions) before it answers
	// the upload, so the first views are cache hits.
	NoCachePush bool
	// WebPOf returns the WebP encoding of one resizer output, or nil for
	// none; the gateway stores it as the size's WebP variant (size codes
	// 8..11) in the photo's batch and lists its URL in "webp_urls". nil:
	// the resizer's own encoding (resizer.Image.WebP), made unless its
	// Options.NoWebP is set.
	WebPOf func(im *resizer.Image) []byte
	// CacheHTTPClient sends the cache invalidations; default a client
	// without its own timeout (CacheTimeout applies).
	CacheHTTPClient *http.Client
	// MaxUploadBytes is the largest accepted image in bytes; default the
	// resizer's MaxBytes (32 MiB unless configured otherwise).
	MaxUploadBytes int64
	// MaxConcurrentUploads sets the memory budget for upload bodies:
	// MaxConcurrentUploads × (MaxUploadBytes+1) bytes (at least twice
	// MaxUploadBytes+1, what one body at the limit needs for an instant
	// while its chunks are copied into one buffer). An upload charges the
	// bytes it has received, as they arrive (see the package doc).
	// Default 4 × GOMAXPROCS.
	MaxConcurrentUploads int
	// MinUploadRate is the slowest an upload body may arrive, in bytes per
	// second, averaged over each UploadRateWindow: a client that sends
	// less in a window is cut off with 408. Default DefaultMinUploadRate
	// (8 KiB/s).
	MinUploadRate int64
	// UploadRateWindow is the window MinUploadRate is measured over; it
	// is also how long a stalled client is waited for. Default
	// DefaultUploadRateWindow (10 s).
	UploadRateWindow time.Duration
	// UploadTimeout bounds reading a whole upload body, from the end of
	// the request headers; default DefaultUploadTimeout (2 min).
	UploadTimeout time.Duration
	// AllowedOrigins lists the origins ("https://photos.example.com"),
	// besides the gateway's own, whose web pages may upload and delete
	// through a browser. A POST or DELETE that carries an Origin header
	// from elsewhere is 403; requests without one (curl, servers) are not
	// affected.
	AllowedOrigins []string
	// Public says the gateway is reachable from other machines. The recent
	// uploads (whose IDs carry the cookies) are then listed only to
	// requests with the API key, and to none when no key is set. Without
	// it, and without a key, anyone who reaches the gateway gets the list.
	Public bool
	// RecentUploads is the length of the recent-uploads ring; default
	// DefaultRecentUploads (20).
	RecentUploads int
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// Registry receives the gateway's metrics and is served at /metrics.
	// Default: a registry of the gateway's own, with the Go runtime and
	// process collectors.
	Registry *prometheus.Registry
}

// Gateway is the HTTP API of a haybale cluster. It is safe for concurrent
// use; construct it with New.
type Gateway struct {
	opts    Options
	metrics *metrics
	recent  *recentRing
	budget  *semaphore.Weighted // bytes of upload bodies in memory
	origins map[string]bool     // normalOrigin of each Options.AllowedOrigins
	// bodyBytes is the part of budget charged now, for the metric.
	bodyBytes atomic.Int64
	web       fs.FS
	handler   http.Handler
	// draining makes /readyz answer 503; set by Server on shutdown.
	draining atomic.Bool
}

// New returns a Gateway with the given options, defaults filled in.
func New(opts Options) (*Gateway, error) {
	if opts.Client == nil {
		return nil, errors.New("gateway: Options.Client is required")
	}
	if opts.Resizer == nil {
		return nil, errors.New("gateway: Options.Resizer is required")
	}
	if opts.MaxUploadBytes <= 0 {
		opts.MaxUploadBytes = opts.Resizer.Options().MaxBytes
	}
	if opts.MaxConcurrentUploads <= 0 {
		opts.MaxConcurrentUploads = 4 * runtime.GOMAXPROCS(0)
	}
	if opts.MinUploadRate <= 0 {
		opts.MinUploadRate = DefaultMinUploadRate
	}
	if opts.UploadRateWindow <= 0 {
		opts.UploadRateWindow = DefaultUploadRateWindow
	}
	if opts.UploadTimeout <= 0 {
		opts.UploadTimeout = DefaultUploadTimeout
	}
	origins := make(map[string]bool, len(opts.AllowedOrigins))
	for _, o := range opts.AllowedOrigins {
		n, ok := normalOrigin(o)
		if !ok {
			return nil, fmt.Errorf("gateway: allowed origin %q: want scheme://host[:port]", o)
		}
		origins[n] = true
	}
	opts.AllowedOrigins = append([]string(nil), opts.AllowedOrigins...)
	if opts.RecentUploads <= 0 {
		opts.RecentUploads = DefaultRecentUploads
	}
	if opts.CacheTimeout <= 0 {
		opts.CacheTimeout = DefaultCacheTimeout
	}
	if opts.CacheHTTPClient == nil {
		opts.CacheHTTPClient = &http.Client{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	for _, n := range opts.CacheNodes {
		if strings.TrimSpace(n) == "" {
			return nil, errors.New("gateway: empty cache node name")
		}
	}
	opts.CacheNodes = append([]string(nil), opts.CacheNodes...)
	if len(opts.CacheEvictURLs) > 0 && len(opts.CacheEvictURLs) != len(opts.CacheNodes) {
		return nil, fmt.Errorf("gateway: %d cache eviction URLs for %d cache nodes", len(opts.CacheEvictURLs), len(opts.CacheNodes))
	}
	opts.CacheEvictURLs = append([]string(nil), opts.CacheEvictURLs...)
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
		if err := opts.Registry.Register(collectors.NewGoCollector()); err != nil {
			return nil, fmt.Errorf("gateway: metrics: %w", err)
		}
		if err := opts.Registry.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
			return nil, fmt.Errorf("gateway: metrics: %w", err)
		}
	}
	g := &Gateway{opts: opts}
	m, err := newMetrics(opts.Registry,
		func() float64 { return float64(g.bodyBytes.Load()) },
		func() float64 { return float64(opts.Resizer.MemoryInUse()) })
	if err != nil {
		return nil, err
	}
	web, err := fs.Sub(webFiles, "web")
	if err != nil {
		return nil, fmt.Errorf("gateway: embedded web page: %w", err)
	}
	g.metrics = m
	g.recent = newRecentRing(opts.RecentUploads)
	// A body of several chunks needs twice its size while it is copied
	// into one buffer: one upload at the limit always fits.
	g.budget = semaphore.NewWeighted(int64(max(opts.MaxConcurrentUploads, 2)) * (opts.MaxUploadBytes + 1))
	g.origins = origins
	g.web = web
	g.handler = g.routes()
	return g, nil
}

// Handler returns the gateway's HTTP handler (every route of the package
// doc).
func (g *Gateway) Handler() http.Handler { return g.handler }

// Options returns the options in effect, defaults filled in.
func (g *Gateway) Options() Options { return g.opts }

func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /photos", g.handleUpload)
	mux.HandleFunc("GET /photos", g.handleRecent)
	mux.HandleFunc("/photos", methods("GET, HEAD, POST"))
	mux.HandleFunc("GET /photos/{id}", g.handleInfo)
	mux.HandleFunc("DELETE /photos/{id}", g.handleDelete)
	mux.HandleFunc("/photos/{id}", methods("GET, HEAD, DELETE"))
	mux.HandleFunc("GET /photos/{id}/{size}", g.handleImage)
	mux.HandleFunc("/photos/{id}/{size}", methods("GET, HEAD"))
	mux.HandleFunc("GET /api/recent", g.handleRecent)
	mux.HandleFunc("/api/recent", methods("GET, HEAD"))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if g.draining.Load() {
			writeError(w, http.StatusServiceUnavailable, "shutting down")
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.opts.Registry, promhttp.HandlerOpts{}))
	static := http.FileServerFS(g.web)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		setPageHeaders(w)
		http.ServeFileFS(w, r, g.web, "index.html")
	})
	mux.HandleFunc("GET /static/", func(w http.ResponseWriter, r *http.Request) {
		setPageHeaders(w)
		http.StripPrefix("/static", static).ServeHTTP(w, r)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such route: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// setPageHeaders sets the headers of the web page and its assets: nothing
// but the page's own scripts and styles may load, while images may come
// from wherever the directory's URLs point (stores, caches, a CDN).
func setPageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src * data: blob:; connect-src 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

// methods answers a request whose path matched but whose method did not:
// 405 with the allowed methods.
func methods(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; allowed: "+allow)
	}
}

// authorized reports whether r carries the API key, answering 401 when it
// does not. Without a configured key every request is authorized.
func (g *Gateway) authorized(w http.ResponseWriter, r *http.Request) bool {
	if g.hasKey(r) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="haybale"`)
	// The body is not read: close the connection rather than drain it.
	w.Header().Set("Connection", "close")
	writeError(w, http.StatusUnauthorized, "missing or wrong API key: send Authorization: Bearer <key>")
	return false
}

// originAllowed reports whether a browser request comes from a page the
// gateway trusts, answering 403 when it does not. A request without an
// Origin header is not from a browser's cross-origin form or script and is
// allowed; one with an Origin must name the gateway itself (the Origin's
// host and port equal the request's Host) or one of AllowedOrigins.
// "Origin: null" (sandboxed pages, local files) is never allowed.
func (g *Gateway) originAllowed(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if n, ok := normalOrigin(origin); ok {
		if g.origins[n] {
			return true
		}
		_, hostport, _ := strings.Cut(n, "://")
		if hostport == normalHost(r.Host, strings.HasPrefix(n, "https://")) {
			return true
		}
	}
	w.Header().Set("Connection", "close") // the body is not read
	writeError(w, http.StatusForbidden, "origin "+strconv.Quote(origin)+" may not upload or delete here")
	return false
}

// normalOrigin returns an origin as "scheme://host[:port]" in lower case
// without the scheme's default port, or false when it is not one.
func normalOrigin(origin string) (string, bool) {
	u, err := url.Parse(strings.TrimSpace(origin))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", false
	}
	return u.Scheme + "://" + normalHost(u.Host, u.Scheme == "https"), true
}

// normalHost lower-cases host[:port] and drops the default port of the
// scheme.
func normalHost(host string, https bool) string {
	host = strings.ToLower(host)
	if https {
		return strings.TrimSuffix(host, ":443")
	}
	return strings.TrimSuffix(host, ":80")
}

// parseID reads the {id} path value, answering 400 when it is malformed.
func parseID(w http.ResponseWriter, r *http.Request) (needle.PhotoID, bool) {
	id, err := needle.ParsePhotoID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "malformed photo ID: "+err.Error())
		return needle.PhotoID{}, false
	}
	return id, true
}

// infoResponse is the answer of GET /photos/{id}.
type infoResponse struct {
	ID   string            `json:"id"`
	URLs map[string]string `json:"urls"`
	// WebPURLs maps each size letter to the URL of its WebP variant;
	// absent for a photo stored without variants.
	WebPURLs map[string]string `json:"webp_urls,omitempty"`
	// ThumbHash is the placeholder, standard base64, as in the upload
	// answer; empty if it could not be computed.
	ThumbHash string `json:"thumbhash"`
}

// handleInfo answers GET /photos/{id}: the photo's ID and URLs, 404 when
// it does not exist. Callers: anyone (the ID is the credential).
func (g *Gateway) handleInfo(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r)
	if !ok {
		return
	}
	// The photo's existence is checked by reading its s, from which the
	// placeholder is computed again: the upload's ThumbHash is defined as
	// that of the stored s (resizer.Placeholder), so it needs no storage
	// of its own. Decoding a 480-pixel image and hashing it costs about a
	// millisecond.
	small, err := g.opts.Client.Read(r.Context(), id, needle.SizeSmall)
	if err != nil {
		g.clusterError(w, r, "read "+id.String(), err)
		return
	}
	urls, err := g.opts.Client.PhotoURLs(r.Context(), id)
	if err != nil {
		g.clusterError(w, r, "photo URLs of "+id.String(), err)
		return
	}
	info := infoResponse{ID: id.String(), URLs: urls}
	if hash, err := resizer.Placeholder(small.Data); err != nil {
		g.opts.Logger.Warn("placeholder of a stored photo failed", "photo", id.String(), "err", err)
	} else {
		info.ThumbHash = base64.StdEncoding.EncodeToString(hash)
	}
	// Every size's variant is written in the photo's batch, so the
	// thumbnail's tells whether the photo has them. A failed probe (no
	// variant, or no replica could be asked) lists none: "urls" serve
	// either way.
	if _, err := g.opts.Client.Read(r.Context(), id, needle.SizeThumbWebP); err == nil {
		info.WebPURLs = webpURLs(urls, needle.PhotoSizes[:])
	}
	writeJSON(w, http.StatusOK, info)
}

// webpURLs returns the URL of the WebP variant of each of sizes, from the
// URLs of the sizes themselves: the same path with the extension ".webp".
func webpURLs(urls map[string]string, sizes []needle.SizeCode) map[string]string {
	out := make(map[string]string, len(sizes))
	for _, s := range sizes {
		u := urls[s.Letter()]
		if u == "" {
			continue
		}
		slash := strings.LastIndexByte(u, '/')
		if dot := strings.LastIndexByte(u, '.'); dot > slash {
			u = u[:dot]
		}
		out[s.Letter()] = u + "." + needle.WebPExt
	}
	return out
}

func (g *Gateway) handleImage(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r)
	if !ok {
		return
	}
	// A cosmetic extension is allowed; ".webp" asks for the WebP variant.
	letter, ext, _ := strings.Cut(r.PathValue("size"), ".")
	size, err := needle.ParseSizeLetter(letter)
	if err != nil || size > needle.SizeLarge {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown size %q: want t, s, m or l", r.PathValue("size")))
		return
	}
	urls, err := g.opts.Client.PhotoURLs(r.Context(), id)
	if err != nil {
		g.clusterError(w, r, "photo URLs of "+id.String(), err)
		return
	}
	u := urls[size.Letter()]
	if u == "" {
		writeError(w, http.StatusServiceUnavailable, "the directory gave no URL for size "+size.Letter())
		return
	}
	if strings.EqualFold(ext, needle.WebPExt) {
		u = webpURLs(urls, []needle.SizeCode{size})[size.Letter()]
	}
	http.Redirect(w, r, u, http.StatusFound)
}

// deleteResponse is the answer of DELETE /photos/{id}.
type deleteResponse struct {
	ID      string `json:"id"`
	Deleted bool   `json:"deleted"`
	// CacheEvicted says whether the owning cache node confirmed the
	// eviction; absent without a cache tier.
	CacheEvicted *bool `json:"cache_evicted,omitempty"`
}

func (g *Gateway) handleDelete(w http.ResponseWriter, r *http.Request) {
	if !g.originAllowed(w, r) {
		g.metrics.deletes.WithLabelValues("forbidden").Inc()
		return
	}
	if !g.authorized(w, r) {
		g.metrics.deletes.WithLabelValues("unauthorized").Inc()
		return
	}
	id, ok := parseID(w, r)
	if !ok {
		g.metrics.deletes.WithLabelValues("bad_request").Inc()
		return
	}
	if err := g.opts.Client.Delete(r.Context(), id); err != nil {
		switch {
		case errors.Is(err, client.ErrNotFound):
			g.metrics.deletes.WithLabelValues("not_found").Inc()
		default:
			g.metrics.deletes.WithLabelValues("error").Inc()
		}
		g.clusterError(w, r, "delete "+id.String(), err)
		return
	}
	g.metrics.deletes.WithLabelValues("ok").Inc()
	g.recent.remove(id)
	resp := deleteResponse{ID: id.String(), Deleted: true}
	if len(g.opts.CacheNodes) > 0 {
		evicted := g.invalidate(r.Context(), id)
		resp.CacheEvicted = &evicted
	}
	g.opts.Logger.Info("photo deleted", "photo", id.String())
	writeJSON(w, http.StatusOK, resp)
}

// invalidate asks the cache node owning id to evict every size of it, and
// reports whether the node confirmed. Failures are logged and counted.
func (g *Gateway) invalidate(ctx context.Context, id needle.PhotoID) bool {
	owner := needle.Owner(id.Key, g.opts.CacheNodes)
	node := g.opts.CacheNodes[owner]
	if len(g.opts.CacheEvictURLs) > 0 {
		node = g.opts.CacheEvictURLs[owner]
	}
	u := baseURL(node) + needle.ImagePathPrefix + id.String()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.opts.CacheTimeout)
	defer cancel()
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
		if err != nil {
			return err
		}
		resp, err := g.opts.CacheHTTPClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		// Evicting what was never cached is still success.
		if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotFound {
			return fmt.Errorf("HTTP %s", resp.Status)
		}
		return nil
	}()
	if err != nil {
		g.metrics.invalidations.WithLabelValues("error").Inc()
		g.opts.Logger.Warn("cache invalidation failed; the cache may serve the deleted photo until it expires",
			"photo", id.String(), "node", node, "err", err)
		return false
	}
	g.metrics.invalidations.WithLabelValues("ok").Inc()
	return true
}

// cacheInternalURL returns the base URL of the internal listener of the
// cache node that owns id.
func (g *Gateway) cacheInternalURL(id needle.PhotoID) string {
	owner := needle.Owner(id.Key, g.opts.CacheNodes)
	if len(g.opts.CacheEvictURLs) > 0 {
		return baseURL(g.opts.CacheEvictURLs[owner])
	}
	return baseURL(g.opts.CacheNodes[owner])
}

// pushedSizes are the sizes of a new photo pushed to the cache: those a
// feed shows first.
var pushedSizes = []needle.SizeCode{needle.SizeThumb, needle.SizeSmall, needle.SizeThumbWebP, needle.SizeSmallWebP}

// push puts the t and s images of a photo just stored, and their WebP
// variants, into the memory of the cache node that owns it, with the
// headers the stores serve them with (PUT /p/<id>/<size>[.webp] on its
// internal listener, which admits gateways only), all at once and within
// CacheTimeout. It returns how many the node took. Failures are logged
// and counted; they cost the first view a store read, nothing else.
func (g *Gateway) push(ctx context.Context, st client.StoredPhoto, images []client.Image) int {
	base := g.cacheInternalURL(st.ID)
	lastMod := st.AppendTime.Truncate(time.Second).Format(http.TimeFormat)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.opts.CacheTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var ok atomic.Int32
	for _, im := range images {
		sum, stored := st.Checksums[im.Size]
		if !stored || !slices.Contains(pushedSizes, im.Size) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := base + needle.ImagePath(st.ID, im.Size, "")
			err := func() error {
				req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(im.Data))
				if err != nil {
					return err
				}
				req.Header.Set("Content-Type", im.ContentType.MIME())
				req.Header.Set("ETag", fmt.Sprintf(`"%016x"`, sum))
				req.Header.Set("Last-Modified", lastMod)
				resp, err := g.opts.CacheHTTPClient.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					return fmt.Errorf("HTTP %s", resp.Status)
				}
				return nil
			}()
			if err != nil {
				g.metrics.pushes.WithLabelValues("error").Inc()
				g.opts.Logger.Warn("cache push failed; the first view will read a store",
					"photo", st.ID.String(), "size", im.Size.String(), "node", base, "err", err)
				return
			}
			g.metrics.pushes.WithLabelValues("ok").Inc()
			ok.Add(1)
		}()
	}
	wg.Wait()
	return int(ok.Load())
}

// baseURL turns "host:port" into "http://host:port" and drops a trailing
// slash; a URL with a scheme is kept.
func baseURL(s string) string {
	s = strings.TrimRight(strings.TrimSpace(s), "/")
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	return s
}

// recentResponse is the answer of GET /api/recent and GET /photos: the
// recent uploads, newest first, and what the web page needs to know.
type recentResponse struct {
	Photos         []UploadResponse `json:"photos"`
	MaxUploadBytes int64            `json:"max_upload_bytes"`
	APIKeyRequired bool             `json:"api_key_required"`
}

// handleRecent lists the recent uploads. Their IDs carry the cookies that
// keep image URLs unguessable, so with an API key configured only a
// request with the key gets the list, and a Public gateway without a key
// lists them to no one; others get an empty list (and what the page needs
// to know).
func (g *Gateway) handleRecent(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	photos := []UploadResponse{}
	if g.hasKey(r) && (g.opts.APIKey != "" || !g.opts.Public) {
		photos = g.recent.list()
	}
	writeJSON(w, http.StatusOK, recentResponse{
		Photos:         photos,
		MaxUploadBytes: g.opts.MaxUploadBytes,
		APIKeyRequired: g.opts.APIKey != "",
	})
}

// hasKey reports whether r carries the API key, or none is configured.
func (g *Gateway) hasKey(r *http.Request) bool {
	if g.opts.APIKey == "" {
		return true
	}
	scheme, key, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(scheme, "Bearer") &&
		subtle.ConstantTimeCompare([]byte(strings.TrimSpace(key)), []byte(g.opts.APIKey)) == 1
}

// clusterError answers a failed client call: 404 for a missing photo, 400
// for a request the cluster calls invalid, 503 when the cluster is
// unavailable or the request was cancelled, 500 otherwise.
func (g *Gateway) clusterError(w http.ResponseWriter, r *http.Request, what string, err error) {
	switch {
	case errors.Is(err, client.ErrNotFound):
		writeError(w, http.StatusNotFound, "photo not found")
	case errors.Is(err, client.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, client.ErrUnavailable), r.Context().Err() != nil,
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		g.opts.Logger.Warn("cluster unavailable", "op", what, "err", err)
		writeError(w, http.StatusServiceUnavailable, "the photo cluster is unavailable; try again later")
	default:
		g.opts.Logger.Error("cluster request failed", "op", what, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
	}
}

// errorResponse is every error answer's body.
type errorResponse struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorResponse{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // answers are JSON, never HTML; keep messages readable
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal error: encoding the answer"}` + "\n")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}
