package flows

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// APIVersion is the version of the HTTP API and of Record. A client that
// sees a different major version refuses to guess (see Version).
const APIVersion = 1

// Record is one enriched flow event, or a summary of suppressed events
// (Suppressed > 0).
type Record struct {
	// Seq numbers records in the order they were stored on this node; it
	// survives restarts (the journal carries it).
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Node string    `json:"node,omitempty"`
	// Direction is relative to the endpoint: "ingress" (into the pod) or
	// "egress" (out of it).
	Direction string `json:"direction,omitempty"`
	Src       Peer   `json:"src"`
	Dst       Peer   `json:"dst"`
	// Endpoint is the pod whose interface saw the packet ("ns/name"), also
	// when its addresses do not match (spoofed sources).
	Endpoint string `json:"endpoint,omitempty"`
	// Claimed is, for a spoofed source, whose address the packet forged
	// ("ns/pod", or a reserved name); Src then names the pod that sent it,
	// with the forged address as its IP.
	Claimed  string `json:"claimed,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	TCPFlags string `json:"tcp_flags,omitempty"`
	// Verdict is "drop", "allow" or "audit"; Reason the datapath's reason,
	// e.g. "policy-denied".
	Verdict string `json:"verdict"`
	Reason  string `json:"reason"`
	Hook    string `json:"hook,omitempty"`
	// PeerIdentity is the numeric identity of the remote side as the
	// kernel saw it (the source on ingress, the destination on egress).
	PeerIdentity uint32 `json:"peer_identity,omitempty"`
	// Policies isolate the endpoint in this direction: for policy-denied
	// drops, the policies none of whose rules allowed the packet.
	Policies []string `json:"policies,omitempty"`
	// RuleID and Rule name the explicit rule that decided ("ns/policy
	// ingress[0]"), when there was one.
	RuleID uint32 `json:"rule_id,omitempty"`
	Rule   string `json:"rule,omitempty"`
	Len    uint32 `json:"len,omitempty"`
	// Suppressed counts the events from Src.IP with this verdict the
	// limiter dropped since the previous summary; Summary says it in words.
	Suppressed uint64 `json:"suppressed,omitempty"`
	Summary    string `json:"summary,omitempty"`
}

// Peer is one side of a flow and what it resolved to.
type Peer struct {
	IP   netip.Addr `json:"ip"`
	Port uint16     `json:"port,omitempty"`
	// Namespace, Pod and Labels are set when the address is a pod's (also a
	// pod deleted in the last few minutes: Deleted).
	Namespace string            `json:"namespace,omitempty"`
	Pod       string            `json:"pod,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Deleted   bool              `json:"deleted,omitempty"`
	// Reserved names a non-pod peer: "host", "world" or the ipBlock CIDR.
	Reserved string `json:"reserved,omitempty"`
}

// Name is how the peer is shown: "ns/pod", the reserved name or the
// address.
func (p Peer) Name() string {
	switch {
	case p.Pod != "":
		return p.Namespace + "/" + p.Pod
	case p.Reserved != "" && p.IP.IsValid():
		return p.Reserved + "(" + p.IP.String() + ")"
	case p.Reserved != "":
		return p.Reserved
	case p.IP.IsValid():
		return p.IP.String()
	}
	return "-"
}

// IsSummary reports whether r summarizes suppressed events.
func (r *Record) IsSummary() bool { return r.Suppressed > 0 }

// Counter is one non-zero kernel counter slot (GET /v1/counters). These
// counts are exact: every packet is counted, whether or not an event was
// emitted or stored.
type Counter struct {
	Direction string `json:"direction"`
	Verdict   string `json:"verdict"`
	Reason    string `json:"reason"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

// Version is GET /v1/version.
type Version struct {
	API   int    `json:"api"`
	Agent string `json:"agent"`
	Node  string `json:"node,omitempty"`
}

// CheckVersion returns an error saying what to do when the agent speaks a
// different API version than this client.
func CheckVersion(v Version) error {
	if v.API != APIVersion {
		return fmt.Errorf("version skew: agent %s speaks flows API v%d, this ztctl speaks v%d; use a ztctl matching the agent (%s)",
			v.Agent, v.API, APIVersion, v.Agent)
	}
	return nil
}

// tcpFlagNames in bit order (FIN = bit 0).
var tcpFlagNames = []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

// TCPFlagsString renders TCP flags as "SYN|ACK".
func TCPFlagsString(f uint8) string {
	if f == 0 {
		return ""
	}
	var parts []string
	for i, n := range tcpFlagNames {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, "|")
}

// ProtocolName names an IP protocol number.
func ProtocolName(p uint8) string {
	switch p {
	case 1:
		return "ICMP"
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 58:
		return "ICMPv6"
	case 132:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", p)
}
