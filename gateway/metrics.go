package gateway

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus collectors. Every field is safe for
// concurrent use.
type metrics struct {
	// uploads holds the counter of each upload outcome, resolved once so
	// the request path does not hash label values.
	uploads       map[string]prometheus.Counter
	resizeSeconds prometheus.Histogram
	writeSeconds  prometheus.Histogram
	bytesIn       prometheus.Counter
	bytesOut      prometheus.Counter
	deletes       *prometheus.CounterVec
	invalidations *prometheus.CounterVec
	pushes        *prometheus.CounterVec
}

// newMetrics registers the gateway's collectors. bodyBytes and
// decodeBytes read the memory charged now to the body budget and to the
// resizer's decode budget.
func newMetrics(reg prometheus.Registerer, bodyBytes, decodeBytes func() float64) (*metrics, error) {
	uploads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "haybale_gateway_uploads_total",
		Help: "Uploads (POST /photos) by outcome: created, unauthorized, forbidden, bad_request, too_large, too_slow, unsupported, corrupt, unavailable, error.",
	}, []string{"outcome"})
	m := &metrics{
		uploads: make(map[string]prometheus.Counter, len(uploadOutcomes)),
		resizeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "haybale_gateway_resize_duration_seconds",
			Help:    "Time to decode an accepted upload and produce its four sizes, waiting for a decode slot included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "haybale_gateway_store_write_duration_seconds",
			Help:    "Time to store a photo's four sizes on every replica (assignment and the client's retry included), for writes that succeeded.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haybale_gateway_upload_bytes_received_total",
			Help: "Image bytes received in uploads that were read completely (accepted or not).",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haybale_gateway_stored_bytes_total",
			Help: "Bytes of the resized images stored, counted once per photo (not per replica).",
		}),
		deletes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haybale_gateway_deletes_total",
			Help: "Deletes (DELETE /photos/{id}) by outcome: ok, not_found, forbidden, unauthorized, bad_request, error.",
		}, []string{"outcome"}),
		invalidations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haybale_gateway_cache_invalidations_total",
			Help: "Cache evictions sent to the owning cache node after a delete, by result: ok, error.",
		}, []string{"result"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haybale_gateway_cache_pushes_total",
			Help: "Images of new photos pushed to the owning cache node after an upload, by result: ok, error.",
		}, []string{"result"}),
	}
	for _, o := range uploadOutcomes {
		m.uploads[o] = uploads.WithLabelValues(o)
	}
	for _, o := range []string{"ok", "error"} {
		m.invalidations.WithLabelValues(o)
		m.pushes.WithLabelValues(o)
	}
	budgets := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "haybale_gateway_upload_body_bytes",
			Help: "Bytes of upload bodies in memory, charged to the body budget.",
		}, bodyBytes),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "haybale_gateway_decode_memory_bytes",
			Help: "Estimated bytes of the images being decoded and resized, charged to the decode memory budget.",
		}, decodeBytes),
	}
	for _, c := range append(budgets, uploads, m.resizeSeconds, m.writeSeconds, m.bytesIn, m.bytesOut, m.deletes, m.invalidations, m.pushes) {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("gateway: metrics: %w", err)
		}
	}
	return m, nil
}
