package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ztnet/zt/pkg/datapath"
)

type metrics struct {
	reg          *prometheus.Registry
	syncDuration *prometheus.HistogramVec
	propagation  prometheus.Histogram
	endpoints    prometheus.Gauge
	identities   prometheus.Gauge
	mapEntries   *prometheus.GaugeVec
	mapCapacity  *prometheus.GaugeVec
	errors       *prometheus.CounterVec
	invalid      prometheus.Gauge
	writes       *prometheus.CounterVec
}

func newMetrics(dp *datapath.Datapath) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "zt_sync_duration_seconds",
			Help:    "Time to compile changes and write them to the kernel maps, by kind (incremental or full reconcile).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"kind"}),
		propagation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "zt_policy_propagation_seconds",
			Help:    "Time from the first Kubernetes event of a batch to its enforcement in the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		endpoints:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "zt_endpoints", Help: "Pods enforced on this node."}),
		identities: prometheus.NewGauge(prometheus.GaugeOpts{Name: "zt_identities", Help: "Live identities (label sets), reserved ones included."}),
		mapEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "zt_map_entries", Help: "Entries in a kernel map, as last synced."}, []string{"map"}),
		mapCapacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "zt_map_capacity", Help: "Capacity (max_entries) of a kernel map.",
		}, []string{"map"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zt_errors_total",
			Help: "Errors by kind: sync, map_full, interface_not_found, invalid_policy, attach, socket_hooks, desired_drift.",
		}, []string{"kind"}),
		invalid: prometheus.NewGauge(prometheus.GaugeOpts{Name: "zt_invalid_policies", Help: "NetworkPolicies rejected and skipped."}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zt_map_writes_total", Help: "Kernel map writes by map and operation.",
		}, []string{"map", "op"}),
	}
	m.reg.MustRegister(m.syncDuration, m.propagation, m.endpoints, m.identities, m.mapEntries, m.mapCapacity,
		m.errors, m.invalid, m.writes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if dp != nil {
		m.reg.MustRegister(&counterCollector{dp: dp})
		c := dp.Capacity()
		m.mapCapacity.WithLabelValues("ipcache").Set(float64(c.IPCache))
		m.mapCapacity.WithLabelValues("endpoints").Set(float64(c.Endpoints))
		m.mapCapacity.WithLabelValues("policy").Set(float64(c.Policy))
		m.mapCapacity.WithLabelValues("conntrack").Set(float64(c.Conntrack))
	}
	for _, k := range []string{"sync", "map_full", "interface_not_found", "invalid_policy", "attach", "socket_hooks", "desired_drift"} {
		m.errors.WithLabelValues(k)
	}
	return m
}

// counterCollector reads the kernel's exact per-CPU counters at scrape
// time, so the metric is never sampled.
type counterCollector struct{ dp *datapath.Datapath }

var (
	packetsDesc = prometheus.NewDesc("zt_datapath_packets_total",
		"Packets the datapath decided on, by direction, verdict and reason (exact kernel counters).",
		[]string{"direction", "verdict", "reason"}, nil)
	bytesDesc = prometheus.NewDesc("zt_datapath_bytes_total",
		"Bytes the datapath decided on, by direction, verdict and reason.",
		[]string{"direction", "verdict", "reason"}, nil)
)

func (c *counterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- packetsDesc
	ch <- bytesDesc
}

func (c *counterCollector) Collect(ch chan<- prometheus.Metric) {
	entries, err := c.dp.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(packetsDesc, err)
		return
	}
	for _, e := range entries {
		if e.Packets == 0 {
			continue
		}
		l := []string{e.Dir.String(), e.Verdict.String(), e.Reason.String()}
		ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(e.Packets), l...)
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(e.Bytes), l...)
	}
}
