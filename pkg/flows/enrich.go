package flows

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/pkg/datapath"
)

// Enricher turns kernel flow events into records.
type Enricher struct {
	node     string
	resolver Resolver
	// boot is the wall-clock time of CLOCK_MONOTONIC zero, which is what
	// bpf_ktime_get_ns counts from. Computed once: the records of one run
	// share one offset, so their order is the kernel's even if the wall
	// clock steps.
	boot time.Time
}

// NewEnricher returns an enricher for events of node, resolving with r.
func NewEnricher(node string, r Resolver) (*Enricher, error) {
	boot, err := monotonicZero()
	if err != nil {
		return nil, err
	}
	return &Enricher{node: node, resolver: r, boot: boot}, nil
}

// monotonicZero returns the wall-clock time at which CLOCK_MONOTONIC was 0.
func monotonicZero() (time.Time, error) {
	var ts unix.Timespec
	before := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	after := time.Now()
	mid := before.Add(after.Sub(before) / 2).Round(0) // wall clock only
	return mid.Add(-time.Duration(ts.Nano())), nil
}

// Time converts a kernel timestamp (bpf_ktime_get_ns) to wall-clock time.
func (e *Enricher) Time(tsNs uint64) time.Time { return e.boot.Add(time.Duration(tsNs)) }

// Decode decodes a raw ring buffer record and enriches it.
func (e *Enricher) Decode(raw []byte) (Record, error) {
	ev, err := datapath.DecodeEvent(raw)
	if err != nil {
		return Record{}, err
	}
	return e.Enrich(&ev), nil
}

// Enrich turns one event into a record: both addresses resolved to pods
// (or the reserved name of the peer identity), the policies isolating the
// endpoint for policy denials, and the deciding rule.
func (e *Enricher) Enrich(ev *datapath.FlowEvent) Record {
	r := Record{
		Time:         e.Time(ev.TsNs),
		Node:         e.node,
		Direction:    ev.Dir.String(),
		Protocol:     ProtocolName(ev.Proto),
		Verdict:      ev.Verdict.String(),
		Reason:       ev.Reason.String(),
		Hook:         ev.Hook.String(),
		PeerIdentity: uint32(ev.PeerId),
		RuleID:       ev.RuleId,
		Len:          ev.Len,
		Src:          Peer{IP: ev.SrcAddr(), Port: ev.SrcPort()},
		Dst:          Peer{IP: ev.DstAddr(), Port: ev.DstPort()},
	}
	if ev.Proto == 6 {
		r.TCPFlags = TCPFlagsString(ev.TcpFlags)
	}
	e.resolvePeer(&r.Src)
	e.resolvePeer(&r.Dst)
	// The remote side of the endpoint carries the kernel's identity.
	remote := &r.Src
	if ev.Dir == datapath.DirEgress {
		remote = &r.Dst
	}
	if remote.Pod == "" {
		remote.Reserved = e.reserved(ev.PeerId)
	}
	ep, ok := e.resolver.Endpoint(ev.Ifindex, ev.EpId)
	if ok {
		r.Endpoint = ep.Pod.Namespace + "/" + ep.Pod.Name
		// The endpoint's side is the pod whose interface (or socket) saw
		// the packet, whatever its address says: a socket hook sees no
		// source address yet (0.0.0.0 before the bind), and a forged one
		// may be another pod's (recorded as Claimed), never the sender.
		local := &r.Dst
		if ev.Dir == datapath.DirEgress {
			local = &r.Src
			if ev.Reason == datapath.ReasonSpoofed && (r.Src.Pod != "" || r.Src.Reserved != "") {
				r.Claimed = r.Src.Name()
			}
		}
		if local.Namespace != ep.Pod.Namespace || local.Pod != ep.Pod.Name {
			*local = Peer{IP: local.IP, Port: local.Port, Namespace: ep.Pod.Namespace, Pod: ep.Pod.Name,
				Labels: ep.Pod.Labels, Deleted: ep.Pod.Deleted}
		}
		switch ev.Reason {
		case datapath.ReasonPolicyDenied, datapath.ReasonSockDenied:
			if d := int(ev.Dir); d < len(ep.IsolatedBy) {
				r.Policies = ep.IsolatedBy[d]
			}
		}
	}
	if ev.RuleId != 0 {
		if s, ok := e.resolver.Rule(ev.RuleId); ok {
			r.Rule = s
		} else {
			r.Rule = fmt.Sprintf("rule %d (no longer known)", ev.RuleId)
		}
	}
	return r
}

func (e *Enricher) resolvePeer(p *Peer) {
	if pod, ok := e.resolver.PodByIP(p.IP); ok {
		p.Namespace, p.Pod, p.Labels, p.Deleted = pod.Namespace, pod.Name, pod.Labels, pod.Deleted
	}
}

func (e *Enricher) reserved(id datapath.Identity) string {
	switch id {
	case datapath.IdentityHost:
		return "host"
	case datapath.IdentityWorld:
		return "world"
	case datapath.IdentityAny:
		return ""
	}
	if s, ok := e.resolver.Identity(uint32(id)); ok {
		return s
	}
	return ""
}
