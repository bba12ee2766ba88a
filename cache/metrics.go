package cache

import (
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Kinds of upstream errors, the reason label of
// haybale_cache_upstream_errors_total.
const (
	upstreamUnavailable = iota // every replica failed
	upstreamTimeout            // UpstreamTimeout expired
	upstreamBadAnswer          // a 200 without usable metadata
	numUpstreamErrors
)

var upstreamErrorNames = [numUpstreamErrors]string{"unavailable", "timeout", "bad-answer"}

// Outcomes of a push, the result label of haybale_cache_pushes_total.
const (
	pushCached   = iota // the image was cached
	pushNotOwner        // this node does not own the key
	pushDeleted         // the photo was deleted recently
	numPushResults
)

var pushResultNames = [numPushResults]string{"cached", "not-owner", "deleted"}

// metrics holds the cache's collectors. Every field is safe for
// concurrent use.
type metrics struct {
	registry *prometheus.Registry

	hits, misses atomic.Uint64 // read by the hit, miss and ratio functions

	requests *prometheus.CounterVec
	// byStatus caches the counter of each status the handler answers, so
	// the hot path does not hash label values.
	byStatus         map[int]prometheus.Counter
	latency          prometheus.Histogram
	bytesServed      prometheus.Counter
	bytesSent        prometheus.Counter // of bytesServed, those sent with sendfile
	admissions       prometheus.Counter
	refused          [numRules]prometheus.Counter
	evictions        prometheus.Counter
	invalidations    prometheus.Counter
	upstreamLatency  prometheus.Histogram
	upstreamErrors   [numUpstreamErrors]prometheus.Counter
	upstreamNotFound prometheus.Counter
	pushes           [numPushResults]prometheus.Counter
}

// imageStatuses are the statuses the image handler answers.
var imageStatuses = []int{
	http.StatusOK, http.StatusNoContent, http.StatusPartialContent, http.StatusNotModified,
	http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed,
	http.StatusPreconditionFailed, http.StatusRequestedRangeNotSatisfiable,
	http.StatusBadGateway, http.StatusGatewayTimeout,
}

func newMetrics(c *Cache, reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{registry: reg}
	var cs []prometheus.Collector
	if reg == nil {
		m.registry = prometheus.NewRegistry()
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haybale_cache_http_requests_total",
		Help: "Requests under /p/ answered (GET and HEAD on the public listener, DELETE and PUT on the internal one), by HTTP status code.",
	}, []string{"code"})
	m.byStatus = make(map[int]prometheus.Counter, len(imageStatuses))
	for _, code := range imageStatuses {
		m.byStatus[code] = m.requests.WithLabelValues(strconv.Itoa(code))
	}
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "haybale_cache_http_request_duration_seconds",
		Help:    "Time to answer a request under /p/, hits and misses together.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
	})
	m.bytesServed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_cache_http_bytes_served_total",
		Help: "Image body bytes sent to clients.",
	})
	m.bytesSent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_cache_http_bytes_sendfile_total",
		Help: "Of the image body bytes sent, those sent from the cache's memfd with sendfile, never copied through the process.",
	})
	hits := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "haybale_cache_hits_total",
		Help: "Image requests answered from memory (including those that found the image cached by a fetch they waited for).",
	}, func() float64 { return float64(m.hits.Load()) })
	misses := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "haybale_cache_misses_total",
		Help: "Image requests answered by a fetch from the stores (requests sharing one fetch count once each).",
	}, func() float64 { return float64(m.misses.Load()) })
	ratio := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "haybale_cache_hit_ratio",
		Help: "hits / (hits + misses) since the process started; 0 before the first request.",
	}, func() float64 {
		h, ms := m.hits.Load(), m.misses.Load()
		if h+ms == 0 {
			return 0
		}
		return float64(h) / float64(h+ms)
	})
	m.admissions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_cache_admissions_total",
		Help: "Fetched images put in the cache.",
	})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haybale_cache_admissions_refused_total",
		Help: "Fetched images not put in the cache, by the first rule that refused: not-owner, cdn, read-only, deleted.",
	}, []string{"rule"})
	for r := ruleNone + 1; r < numRules; r++ {
		m.refused[r] = refused.WithLabelValues(ruleNames[r])
	}
	held := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "haybale_cache_bytes",
		Help: "Weight of the cached entries: image bytes plus a fixed overhead per entry.",
	}, func() float64 { return float64(c.entries.WeightedSize()) })
	capacity := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "haybale_cache_capacity_bytes",
		Help: "The configured capacity.",
	})
	capacity.Set(float64(c.opts.Capacity))
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "haybale_cache_entries",
		Help: "Cached images (an estimate).",
	}, func() float64 { return float64(c.entries.EstimatedSize()) })
	m.evictions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_cache_evictions_total",
		Help: "Entries evicted to stay within the capacity.",
	})
	m.invalidations = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_cache_invalidations_total",
		Help: "Photo invalidations (DELETE /p/<photo ID>) received.",
	})
	m.upstreamLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "haybale_cache_upstream_fetch_duration_seconds",
		Help:    "Time of one fetch from the stores, replica failover included, whatever its outcome.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	upErrs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haybale_cache_upstream_errors_total",
		Help: "Fetches that got no image, by reason: unavailable (every replica failed), timeout, bad-answer.",
	}, []string{"reason"})
	for i := range m.upstreamErrors {
		m.upstreamErrors[i] = upErrs.WithLabelValues(upstreamErrorNames[i])
	}
	m.upstreamNotFound = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_cache_upstream_not_found_total",
		Help: "Fetches that every replica answered with 404.",
	})
	pushes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haybale_cache_pushes_total",
		Help: "Well-formed image pushes (PUT /p/... on the internal listener) by result: cached, not-owner, deleted.",
	}, []string{"result"})
	for i := range m.pushes {
		m.pushes[i] = pushes.WithLabelValues(pushResultNames[i])
	}
	cs = append(cs, memfdCollectors(c)...)
	cs = append(cs, pushes, m.requests, m.latency, m.bytesServed, m.bytesSent, hits, misses, ratio, m.admissions, refused,
		held, capacity, entries, m.evictions, m.invalidations, m.upstreamLatency, upErrs, m.upstreamNotFound)
	for _, col := range cs {
		if err := m.registry.Register(col); err != nil {
			return nil, fmt.Errorf("cache: metrics: %w", err)
		}
	}
	return m, nil
}

// countStatus counts one answer.
func (m *metrics) countStatus(code int) {
	if c, ok := m.byStatus[code]; ok {
		c.Inc()
		return
	}
	m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
}

// memfdCollectors returns the metrics of the cache's memfd (see arena.go);
// without one they read 0.
func memfdCollectors(c *Cache) []prometheus.Collector {
	a := c.arena
	read := func(f func(a *arena) float64) func() float64 {
		return func() float64 {
			if a == nil {
				return 0
			}
			return f(a)
		}
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "haybale_cache_memfd_bytes",
			Help: "Memory of the images kept in the cache's memfd (whole pages), included in the process's RSS; answers still sending a released image's pages included.",
		}, read(func(a *arena) float64 { return float64(a.bytes.Load()) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "haybale_cache_memfd_slots",
			Help: "Images in the cache's memfd, cached or still being sent after their eviction.",
		}, read(func(a *arena) float64 { return float64(a.live.Load()) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "haybale_cache_memfd_slots_releasing",
			Help: "Images of the memfd no longer cached that answers in flight still read; freed when the last one is written.",
		}, read(func(a *arena) float64 { return float64(max(a.live.Load()-a.cached.Load(), 0)) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "haybale_cache_memfd_no_slot_total",
			Help: "Images of MemfdMin bytes or more cached in Go memory because the memfd's extent had no free slot.",
		}, read(func(a *arena) float64 { return float64(a.noSlot.Load()) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "haybale_cache_memfd_punch_failures_total",
			Help: "Freed memfd slots whose hole punch failed; they are never reused.",
		}, read(func(a *arena) float64 { return float64(a.punchFail.Load()) })),
	}
}
