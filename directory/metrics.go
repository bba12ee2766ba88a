package directory

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// metrics are the directory's Prometheus metrics, in a registry of its own.
type metrics struct {
	reg            *prometheus.Registry
	grpcRequests   *prometheus.CounterVec
	heartbeats     prometheus.Counter
	corruptReports prometheus.Counter
	assignedKeys   prometheus.Counter
	allocations    *prometheus.CounterVec
	// compactionsAsked counts compact commands sent to stores.
	compactionsAsked prometheus.Counter
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		grpcRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haybale_directory_grpc_requests_total", Help: "gRPC calls by method and status code.",
		}, []string{"method", "code"}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haybale_directory_heartbeats_total", Help: "Store heartbeats received.",
		}),
		corruptReports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haybale_directory_corrupt_reports_total", Help: "Corrupt needles reported by stores.",
		}),
		assignedKeys: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haybale_directory_assigned_keys_total", Help: "Photo keys handed out by Assign.",
		}),
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haybale_directory_volume_allocations_total", Help: "Volume allocations by result (ok, error, unplaceable).",
		}, []string{"result"}),
		compactionsAsked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haybale_directory_compactions_asked_total", Help: "Compact commands sent to stores for volumes past the garbage threshold.",
		}),
	}
	m.reg.MustRegister(m.grpcRequests, m.heartbeats, m.corruptReports, m.assignedKeys, m.allocations, m.compactionsAsked,
		&stateCollector{s: s},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// stateCollector reports the directory's state at scrape time.
type stateCollector struct{ s *Server }

var (
	descStores    = prometheus.NewDesc("haybale_directory_stores", "Known stores by liveness.", []string{"state"}, nil)
	descVolumes   = prometheus.NewDesc("haybale_directory_volumes", "Logical volumes by effective state.", []string{"state"}, nil)
	descHighWater = prometheus.NewDesc("haybale_directory_key_high_water", "The key sequencer's persisted high-water mark.", nil, nil)
	descBytes     = prometheus.NewDesc("haybale_directory_volume_bytes", "Total size of the volumes (largest replica each).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descStores
	ch <- descVolumes
	ch <- descHighWater
	ch <- descBytes
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	sn := s.snapshot()
	stores := map[directorypb.StoreState]int{}
	for id := range sn.stores {
		stores[s.storeState(sn, id)]++
	}
	for _, st := range []directorypb.StoreState{directorypb.StoreState_STORE_STATE_ALIVE, directorypb.StoreState_STORE_STATE_DEAD, directorypb.StoreState_STORE_STATE_UNSPECIFIED} {
		ch <- prometheus.MustNewConstMetric(descStores, prometheus.GaugeValue, float64(stores[st]), storeStateName(st))
	}
	vols := map[storepb.VolumeState]int{}
	var bytes uint64
	for _, v := range sn.volumes {
		view := s.volumeView(sn, v)
		vols[view.GetState()]++
		bytes += view.GetSizeBytes()
	}
	for st := storepb.VolumeState_VOLUME_STATE_WRITABLE; st <= storepb.VolumeState_VOLUME_STATE_FAILED; st++ {
		ch <- prometheus.MustNewConstMetric(descVolumes, prometheus.GaugeValue, float64(vols[st]), volumeStateName(st))
	}
	ch <- prometheus.MustNewConstMetric(descHighWater, prometheus.GaugeValue, float64(s.fsm.HighWater()))
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(bytes))
}

// volumeStateName is the short name of a volume state, for people and
// labels.
func volumeStateName(st storepb.VolumeState) string {
	switch st {
	case storepb.VolumeState_VOLUME_STATE_WRITABLE:
		return "writable"
	case storepb.VolumeState_VOLUME_STATE_READ_ONLY:
		return "read-only"
	case storepb.VolumeState_VOLUME_STATE_SEALED:
		return "sealed"
	case storepb.VolumeState_VOLUME_STATE_EC:
		return "ec"
	case storepb.VolumeState_VOLUME_STATE_FAILED:
		return "failed"
	}
	return "unknown"
}

// storeStateName is the short name of a store state.
func storeStateName(st directorypb.StoreState) string {
	switch st {
	case directorypb.StoreState_STORE_STATE_ALIVE:
		return "alive"
	case directorypb.StoreState_STORE_STATE_DEAD:
		return "dead"
	}
	return "unknown"
}
