package directory

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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
	// ecJobs counts finished erasure-coding jobs by trigger and result.
	ecJobs *prometheus.CounterVec
}

func newMetrics(d *Directory) *metrics {
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
		ecJobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haybale_directory_ec_jobs_total", Help: "Finished erasure-coding jobs by trigger (operator, policy) and result (ok, failed, interrupted, skipped).",
		}, []string{"trigger", "result"}),
	}
	ecRunning := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "haybale_directory_ec_job_running_vid", Help: "The volume an erasure-coding job works on; 0 when none runs.",
	}, func() float64 { return float64(d.ecRunningVid()) })
	ecBackoff := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "haybale_directory_ec_backoff_volumes", Help: "Volumes whose last erasure-coding job failed, waiting to be tried again.",
	}, func() float64 {
		d.ec.Lock()
		defer d.ec.Unlock()
		return float64(len(d.ec.failures))
	})
	m.reg.MustRegister(m.grpcRequests, m.heartbeats, m.corruptReports, m.assignedKeys, m.allocations, m.compactionsAsked,
		m.ecJobs, ecRunning, ecBackoff,
		&stateCollector{d: d},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// stateCollector reports the directory's state at scrape time.
type stateCollector struct{ d *Directory }

var (
	descStores    = prometheus.NewDesc("haybale_directory_stores", "Known stores by liveness.", []string{"state"}, nil)
	descVolumes   = prometheus.NewDesc("haybale_directory_volumes", "Logical volumes by effective state.", []string{"state"}, nil)
	descHighWater = prometheus.NewDesc("haybale_directory_key_high_water", "The key sequencer's persisted high-water mark.", nil, nil)
	descBytes     = prometheus.NewDesc("haybale_directory_volume_bytes", "Total size of the volumes (largest replica each).", nil, nil)
	descLeader    = prometheus.NewDesc("haybale_directory_leader", "1 while this node leads the directory and may decide.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descStores
	ch <- descVolumes
	ch <- descHighWater
	ch <- descBytes
	ch <- descLeader
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	sn := d.snapshot()
	stores := map[StoreState]int{}
	for id := range sn.stores {
		stores[d.storeState(sn, id)]++
	}
	for _, st := range []StoreState{StoreAlive, StoreDead, StoreUnknown} {
		ch <- prometheus.MustNewConstMetric(descStores, prometheus.GaugeValue, float64(stores[st]), st.String())
	}
	vols := map[VolumeState]int{}
	var bytes uint64
	for _, v := range sn.volumes {
		view := d.volumeView(sn, v)
		vols[view.State]++
		bytes += view.SizeBytes
	}
	for st := StateWritable; st <= StateFailed; st++ {
		ch <- prometheus.MustNewConstMetric(descVolumes, prometheus.GaugeValue, float64(vols[st]), st.String())
	}
	ch <- prometheus.MustNewConstMetric(descHighWater, prometheus.GaugeValue, float64(d.fsm.HighWater()))
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(bytes))
	leader := 0.0
	if sn.leading {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
}
