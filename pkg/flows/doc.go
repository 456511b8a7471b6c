// Package flows turns the datapath's flow events into records a person can
// read: which pod talked to which, what the kernel did, why, and which
// NetworkPolicy is behind it. It stores them within fixed bounds and serves
// them over a small HTTP API that ztctl flows reads.
//
//	events ringbuf ──Read──▶ Enricher ──▶ Limiter ──▶ Store ──▶ Server (GET /v1/flows)
//	 (zt_flow_event)          │  Resolver: pods by IP,   │   ring (N records)
//	                          │  recently deleted pods,  │   journal: NDJSON files,
//	                          │  isolating policies,     │   rotated, size-capped
//	                          │  rule references         │   followers (streams)
//	                          └ ts_ns → wall clock        └ per-source token buckets,
//	                                                        "suppressed N" summaries
//
// Nothing here grows without bound: the ring and the journal have fixed
// capacities, the limiter's buckets and the recently-deleted pod cache are
// LRU/TTL bounded, and a follower too slow to keep up skips records (and is
// told how many) instead of holding the pipeline back. Exact drop counts are
// never sampled: they come from the kernel's per-CPU counters (/v1/counters).
//
// The package does not log; the agent wires it (pkg/agent/flows.go).
package flows
