package store

import (
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/haybale/haybale/store/volume"
)

// metrics holds the server's Prometheus collectors. They live in the
// server's own registry, never in the global default one, so several
// servers (and tests) can run in one process. Every field is safe for
// concurrent use.
type metrics struct {
	registry *prometheus.Registry

	requests *prometheus.CounterVec // image requests by status code
	// byStatus caches the counter of each status the read path answers, so
	// the hot path does not hash label values.
	byStatus     map[int]prometheus.Counter
	latency      prometheus.Histogram
	bytesServed  prometheus.Counter
	bytesSent    prometheus.Counter // of bytesServed, those sent with sendfile
	corruptReads prometheus.Counter
	loopReads    prometheus.Counter     // disk reads the event loops made themselves
	grpcRequests *prometheus.CounterVec // by method and code
	// unverifiedFast counts the fasthttp answers cut short because their
	// mapped bytes were no longer proven before a send (see sendBody);
	// loopUnverified, set once the HTTP server exists, reports the event
	// loops' (evloop.Answer.Verified).
	unverifiedFast atomic.Int64
	loopUnverified func() int64
}

// imageStatuses are the statuses the image handler answers.
var imageStatuses = []int{
	http.StatusOK, http.StatusPartialContent, http.StatusNotModified,
	http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed,
	http.StatusPreconditionFailed, http.StatusRequestedRangeNotSatisfiable, http.StatusInternalServerError,
	http.StatusServiceUnavailable,
}

func newMetrics(st *Store) (*metrics, error) {
	m := &metrics{registry: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haybale_store_http_requests_total",
		Help: "Image requests (GET and HEAD /p/...) answered, by HTTP status code.",
	}, []string{"code"})
	m.byStatus = make(map[int]prometheus.Counter, len(imageStatuses))
	for _, code := range imageStatuses {
		m.byStatus[code] = m.requests.WithLabelValues(strconv.Itoa(code))
	}
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "haybale_store_http_request_duration_seconds",
		Help:    "Time to answer an image request, from routing to the last byte handed to the kernel.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	m.bytesServed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_store_http_bytes_served_total",
		Help: "Image body bytes sent to clients.",
	})
	m.bytesSent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_store_http_bytes_sendfile_total",
		Help: "Of the image body bytes sent, those sent from the volume file with sendfile, never copied through the process.",
	})
	m.corruptReads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_store_corrupt_reads_total",
		Help: "Reads whose stored bytes failed verification (never served).",
	})
	m.loopReads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "haybale_store_http_loop_disk_reads_total",
		Help: "Image reads from the disk that an event loop made itself, through its io_uring, and answered without a goroutine (the others wait off the loops).",
	})
	m.grpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haybale_store_grpc_requests_total",
		Help: "gRPC calls answered, by method and status code.",
	}, []string{"method", "code"})
	for _, c := range []prometheus.Collector{
		m.requests, m.latency, m.bytesServed, m.bytesSent, m.corruptReads, m.loopReads, m.grpcRequests,
		volumeCollector{st},
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "haybale_store_http_unverified_answers_total",
			Help: "Image answers cut short (the connection ended before the whole body left) because the verified needle's pages were no longer proven to be those verified when a later send of them from the page cache was about to be made: they may have been read again from the disk.",
		}, func() float64 {
			n := m.unverifiedFast.Load()
			if m.loopUnverified != nil {
				n += m.loopUnverified()
			}
			return float64(n)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "haybale_store_index_mapped_bytes",
			Help: "Memory the volume indexes hold outside the Go heap (mapped; resident only where written).",
		}, func() float64 { return float64(volume.IndexMappedBytes()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := m.registry.Register(c); err != nil {
			return nil, fmt.Errorf("store: metrics: %w", err)
		}
	}
	return m, nil
}

// countStatus counts one image answer.
func (m *metrics) countStatus(code int) {
	if c, ok := m.byStatus[code]; ok {
		c.Inc()
		return
	}
	m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
}

// volumeCollector reports the store's volumes at scrape time, so the
// figures are never stale and the write path pays nothing for them.
type volumeCollector struct{ st *Store }

var (
	descVolumes = prometheus.NewDesc("haybale_store_volumes",
		"Volumes held by this store, by state (failed includes volumes that could not be opened).", []string{"state"}, nil)
	descImages = prometheus.NewDesc("haybale_store_images",
		"Live images (needles not deleted or superseded) stored.", nil, nil)
	descLiveBytes = prometheus.NewDesc("haybale_store_image_bytes",
		"Bytes held by live needles.", nil, nil)
	descVolumeBytes = prometheus.NewDesc("haybale_store_volume_bytes",
		"Size of the volume files, superblocks and dead space included.", nil, nil)
	descDeletedBytes = prometheus.NewDesc("haybale_store_deleted_bytes",
		"Bytes held by deleted or superseded needles, reclaimable by compaction.", nil, nil)
	descECReads = prometheus.NewDesc("haybale_store_ec_reads_total",
		"Needle reads of erasure-coded volumes, by kind: all, straddling (two preads: the needle crosses a block), degraded (bytes rebuilt from other shards), unrecoverable.",
		[]string{"kind"}, nil)
	descReads = prometheus.NewDesc("haybale_store_reads_total",
		"Image reads of (not erasure-coded) volumes, by how they read: mapped (verified and served from the page cache through the file mapping, no pread), pread (one pread: the needle was not all in the page cache, or the file system cannot map).",
		[]string{"kind"}, nil)
	descColdReads = prometheus.NewDesc("haybale_store_cold_reads_total",
		"Image reads, with direct reads on, of needles not in the page cache, by how they read: direct (O_DIRECT, leaving the page cache as it was), buffered (read cold again within the policy's window: kept in the page cache). Each is one of the pread reads of haybale_store_reads_total, or, of an erasure-coded volume, one of haybale_store_ec_reads_total (one pread per shard segment).",
		[]string{"kind"}, nil)
	descPins = prometheus.NewDesc("haybale_store_verified_mappings_total",
		"Reads of large needles through verified mappings, by outcome: hit (every verified page still mapped: served without hashing), reverified (a page had been unmapped: hashed again through the mapping); and mappings evicted (to keep the bound) or dropped (pages gone from memory, damage, compaction or close).",
		[]string{"kind"}, nil)
	descPinsLive = prometheus.NewDesc("haybale_store_verified_mappings",
		"Verified mappings of large needles mapped now (each takes two mappings of the process: its own and a guard page).", nil, nil)
	descECShards = prometheus.NewDesc("haybale_store_ec_shards",
		"Shards of erasure-coded volumes held by this store and readable.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descVolumes
	ch <- descImages
	ch <- descLiveBytes
	ch <- descVolumeBytes
	ch <- descDeletedBytes
	ch <- descECReads
	ch <- descReads
	ch <- descColdReads
	ch <- descECShards
	ch <- descPins
	ch <- descPinsLive
}

// Collect implements prometheus.Collector.
func (c volumeCollector) Collect(ch chan<- prometheus.Metric) {
	states := map[string]float64{}
	for _, s := range []volume.State{volume.StateWritable, volume.StateReadOnly, volume.StateSealed, volume.StateFailed} {
		states[s.String()] = 0
	}
	var images, live, size, deleted, mapped, preads, direct, coldBuffered float64
	for _, v := range c.st.Volumes() {
		s := v.Status()
		states[s.State.String()]++
		mapped += float64(s.MappedReads)
		preads += float64(s.Preads)
		direct += float64(s.DirectReads)
		coldBuffered += float64(s.ColdBufferedReads)
		images += float64(s.Images)
		live += float64(s.LiveBytes)
		size += float64(s.Size)
		deleted += float64(s.Deleted)
	}
	states[volume.StateFailed.String()] += float64(len(c.st.Failed()))
	states["ec"] = 0
	var reads, straddling, degraded, lost, shards float64
	for _, e := range c.st.ECVolumes() {
		s := e.Status()
		states["ec"]++
		images += float64(s.Images)
		live += float64(s.LiveBytes)
		reads += float64(s.Reads)
		straddling += float64(s.Straddling)
		degraded += float64(s.Degraded)
		lost += float64(s.Unrecoverable)
		direct += float64(s.DirectReads)
		coldBuffered += float64(s.ColdBufferedReads)
		shards += float64(len(s.Local))
	}
	for kind, n := range map[string]float64{"all": reads, "straddling": straddling, "degraded": degraded, "unrecoverable": lost} {
		ch <- counter(descECReads, n, kind)
	}
	for kind, n := range map[string]float64{"mapped": mapped, "pread": preads} {
		ch <- counter(descReads, n, kind)
	}
	for kind, n := range map[string]float64{"direct": direct, "buffered": coldBuffered} {
		ch <- counter(descColdReads, n, kind)
	}
	ch <- gauge(descECShards, shards)
	ps := c.st.VerifiedMappings()
	for kind, n := range map[string]int64{"hit": ps.Hits, "reverified": ps.Reverified, "evicted": ps.Evicted, "dropped": ps.Dropped} {
		ch <- counter(descPins, float64(n), kind)
	}
	ch <- gauge(descPinsLive, float64(ps.Live))
	for state, n := range states {
		ch <- gauge(descVolumes, n, state)
	}
	ch <- gauge(descImages, images)
	ch <- gauge(descLiveBytes, live)
	ch <- gauge(descVolumeBytes, size)
	ch <- gauge(descDeletedBytes, deleted)
}

// gauge builds a gauge sample; a malformed one (which would be a bug
// here) is reported to the scraper rather than crashing the server.
func gauge(desc *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return sample(desc, prometheus.GaugeValue, v, labels)
}

// counter builds a counter sample, as gauge does a gauge.
func counter(desc *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return sample(desc, prometheus.CounterValue, v, labels)
}

func sample(desc *prometheus.Desc, t prometheus.ValueType, v float64, labels []string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(desc, t, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(desc, err)
	}
	return m
}
