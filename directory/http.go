package directory

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"html/template"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes": humanBytes,
	"ago": func(t time.Time, now time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return now.Sub(t).Round(100*time.Millisecond).String() + " ago"
	},
	"ecVolumes": func(vols []VolumeStatus) []VolumeStatus {
		var out []VolumeStatus
		for _, v := range vols {
			if v.EC != nil {
				out = append(out, v)
			}
		}
		return out
	},
}).Parse(statusHTML))

// Status is the directory's state for people and scripts: GET
// /api/v1/status serves it as JSON and GET / as a page.
type Status struct {
	Time        time.Time `json:"time"`
	Replication int       `json:"replication"`
	// Insecure is true when the internal plane runs without TLS
	// (--insecure).
	Insecure  bool           `json:"insecure"`
	HighWater uint64         `json:"key_high_water"`
	VidMark   uint32         `json:"vid_mark"`
	Leading   bool           `json:"leading"`
	Raft      *RaftStatus    `json:"raft,omitempty"`
	Stores    []StoreStatus  `json:"stores"`
	Volumes   []VolumeStatus `json:"volumes"`
	// ECPolicy is the erasure-coding policy and its jobs on this node.
	ECPolicy ECPolicyStatus `json:"ec_policy"`
}

// StoreStatus describes one store in Status.
type StoreStatus struct {
	ID            string    `json:"id"`
	State         string    `json:"state"`
	GRPCAddr      string    `json:"grpc_addr"`
	HTTPAddr      string    `json:"http_addr"`
	PublicURL     string    `json:"public_url,omitempty"`
	Rack          string    `json:"rack,omitempty"`
	FreeBytes     uint64    `json:"free_bytes"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	Vids          []uint32  `json:"vids"`
	// Suspect are reported vids this directory never handed out: not
	// adopted; an operator should check the store.
	Suspect []uint32 `json:"suspect_vids,omitempty"`
}

// VolumeStatus describes one volume in Status.
type VolumeStatus struct {
	Vid            uint32   `json:"vid"`
	State          string   `json:"state"`
	Reason         string   `json:"reason,omitempty"`
	Replicas       []string `json:"replicas"`
	SizeBytes      uint64   `json:"size_bytes"`
	SizeLimitBytes uint64   `json:"size_limit_bytes"`
	FillPercent    float64  `json:"fill_percent"`
	NeedleCount    uint64   `json:"needle_count"`
	DeletedBytes   uint64   `json:"deleted_bytes"`
	// EC is where the shards of an EC volume are (nil for a plain one).
	EC *ECShardStatus `json:"ec,omitempty"`
}

// Status returns the directory's current state as this node sees it.
func (d *Directory) Status() Status {
	sn := d.snapshot()
	st := Status{Time: sn.now.UTC(), Replication: d.opts.Replication, Insecure: d.opts.Credentials.IsInsecure(), HighWater: d.fsm.HighWater(), VidMark: d.fsm.VidMark(),
		Leading: sn.leading, Stores: []StoreStatus{}, Volumes: []VolumeStatus{}, ECPolicy: d.ECStatus()}
	if r, ok := d.log.(*Raft); ok {
		rs := r.Status()
		st.Raft = &rs
	}
	for _, rec := range d.fsm.Stores() {
		info := d.storeInfo(sn, sn.stores[rec.ID])
		ss := StoreStatus{ID: info.ID, State: info.State.String(), GRPCAddr: info.GRPCAddr,
			HTTPAddr: info.HTTPAddr, PublicURL: info.PublicURL, Rack: info.Rack,
			FreeBytes: info.FreeBytes, Vids: info.Vids, Suspect: info.Suspect}
		if ns := info.LastHeartbeatUnixNano; ns != 0 {
			ss.LastHeartbeat = time.Unix(0, ns).UTC()
		}
		if ss.Vids == nil {
			ss.Vids = []uint32{}
		}
		st.Stores = append(st.Stores, ss)
	}
	for _, v := range sn.volumes {
		view := d.volumeView(sn, v)
		vs := VolumeStatus{Vid: view.Vid, State: view.State.String(), Reason: view.Reason,
			Replicas: view.Replicas, SizeBytes: view.SizeBytes, SizeLimitBytes: view.SizeLimit,
			NeedleCount: view.NeedleCount, DeletedBytes: view.DeletedBytes}
		if vs.SizeLimitBytes > 0 {
			vs.FillPercent = min(100, 100*float64(vs.SizeBytes)/float64(vs.SizeLimitBytes))
		}
		if v.State == StateEC {
			vs.EC = d.ecStatus(sn, v)
		}
		st.Volumes = append(st.Volumes, vs)
	}
	return st
}

// Status returns the directory's current state as this node sees it.
func (s *Server) Status() Status { return s.d.Status() }

// httpHandler serves the status page, its JSON, the metrics and the
// health checks. Callers: operators and monitoring; it is read-only.
func (s *Server) httpHandler() http.Handler {
	d := s.d
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		if err := statusTemplate.Execute(&buf, d.Status()); err != nil {
			d.opts.Logger.Error("status page", "err", err)
			writeJSONError(w, http.StatusInternalServerError, "internal error")
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(buf.Bytes())
	})
	mux.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(d.Status())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{Registry: d.metrics.reg}))
	ok := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	}
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.http.Draining() || d.ctx.Err() != nil {
			writeJSONError(w, http.StatusServiceUnavailable, "shutting down")
			return
		}
		ok(w, r)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, http.StatusNotFound, "no such page")
	})
	return mux
}

// writeJSONError answers {"error": msg} with code.
func writeJSONError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// humanBytes formats n with a binary unit.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return formatUint(n) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return formatFloat(float64(n)/float64(div)) + " " + string("KMGTPE"[exp]) + "iB"
}
