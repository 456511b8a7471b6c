package policy

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/ztnet/zt/pkg/identity"
)

// Protocol re-exports identity.Protocol: an IANA number, 0 for any.
type Protocol = identity.Protocol

// Protocol numbers.
const (
	ProtoAny  = identity.ProtoAny
	ProtoTCP  = identity.ProtoTCP
	ProtoUDP  = identity.ProtoUDP
	ProtoSCTP = identity.ProtoSCTP
)

// Namespace is the compiler's view of a namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// ContainerPort is a port a pod's container declares.
type ContainerPort struct {
	Name     string
	Port     uint16
	Protocol Protocol
}

// Pod is the compiler's view of a pod: only what policy can test.
type Pod struct {
	Namespace   string
	Name        string
	Labels      map[string]string
	IPs         []netip.Addr
	Ports       []ContainerPort
	NodeName    string
	HostNetwork bool
}

// Key returns the pod's namespace/name.
func (p *Pod) Key() PodKey { return PodKey{Namespace: p.Namespace, Name: p.Name} }

// PodKey names a pod.
type PodKey struct{ Namespace, Name string }

func (k PodKey) String() string { return k.Namespace + "/" + k.Name }

// PolicyKey names a NetworkPolicy.
type PolicyKey struct{ Namespace, Name string }

func (k PolicyKey) String() string { return k.Namespace + "/" + k.Name }

// Direction is the direction of traffic relative to the pod. Its values
// match ZT_DIR_* in bpf/zt_abi.h.
type Direction uint8

// Directions.
const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// RuleID numbers a rule of a policy; the kernel stores it with each allow
// so a verdict can name the rule behind it. 0 means no rule.
type RuleID uint32

// RuleRef says which rule of which policy a RuleID stands for.
type RuleRef struct {
	Policy    PolicyKey
	Direction Direction
	// Index is the rule's position in spec.ingress or spec.egress.
	Index int
}

func (r RuleRef) String() string {
	return fmt.Sprintf("%s %s[%d]", r.Policy, r.Direction, r.Index)
}

// Rule is one compiled allow: traffic with the peer identity Peer (Any for
// every peer), protocol Protocol (ProtoAny: every protocol, ports ignored)
// and destination port in [Port, EndPort] (0, 0: every port) is allowed.
// For ingress the peer is the source, for egress the destination.
type Rule struct {
	Peer     identity.ID
	Protocol Protocol
	Port     uint16
	EndPort  uint16
	ID       RuleID
}

// Matches reports whether the rule allows traffic with peer identity peer,
// protocol proto and destination port port. It is the one definition of a
// match, mirrored by the kernel's policy lookup (peer, then Any).
func (r Rule) Matches(peer identity.ID, proto Protocol, port uint16) bool {
	if r.Peer != identity.Any && r.Peer != peer {
		return false
	}
	if r.Protocol == ProtoAny {
		return true
	}
	if r.Protocol != proto {
		return false
	}
	return r.Port == 0 || (port >= r.Port && port <= r.EndPort)
}

func (r Rule) String() string {
	s := "peer=" + r.Peer.String()
	if r.Protocol != ProtoAny {
		s += " " + r.Protocol.String()
		switch {
		case r.Port == 0:
		case r.EndPort == r.Port:
			s += fmt.Sprintf(":%d", r.Port)
		default:
			s += fmt.Sprintf(":%d-%d", r.Port, r.EndPort)
		}
	}
	return s + fmt.Sprintf(" rule=%d", r.ID)
}

// peerRange is where the rules of peer p are in rules (sorted by peer
// first): rules[lo:hi].
func peerRange(rules []Rule, p identity.ID) (lo, hi int) {
	lo, _ = slices.BinarySearchFunc(rules, p, func(r Rule, p identity.ID) int { return cmpU(uint64(r.Peer), uint64(p)) })
	hi = lo
	for hi < len(rules) && rules[hi].Peer == p {
		hi++
	}
	return lo, hi
}

func compareRule(a, b Rule) int {
	switch {
	case a.Peer != b.Peer:
		return cmpU(uint64(a.Peer), uint64(b.Peer))
	case a.Protocol != b.Protocol:
		return cmpU(uint64(a.Protocol), uint64(b.Protocol))
	case a.Port != b.Port:
		return cmpU(uint64(a.Port), uint64(b.Port))
	case a.EndPort != b.EndPort:
		return cmpU(uint64(a.EndPort), uint64(b.EndPort))
	}
	return cmpU(uint64(a.ID), uint64(b.ID))
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// DirectionPolicy is an endpoint's compiled policy for one direction.
type DirectionPolicy struct {
	// Isolated is true when some policy of this direction selects the pod:
	// then only Rules are allowed.
	Isolated bool
	// IsolatedBy lists the policies that isolate the pod, sorted.
	IsolatedBy []PolicyKey
	// Rules are the allows, sorted by (Peer, Protocol, Port, EndPort, ID),
	// without duplicates of the same (Peer, Protocol, Port, EndPort).
	Rules Rules
}

// Endpoint is the compiled policy of one pod. It is immutable: the compiler
// replaces it when anything about it changes, so consumers may compare
// pointers to skip unchanged endpoints.
type Endpoint struct {
	Pod PodKey
	// IPs are the pod's addresses and Identities their identities, index
	// for index (an address's identity may carry address-specific CIDRs).
	IPs        []netip.Addr
	Identities []identity.ID
	Ingress    DirectionPolicy
	Egress     DirectionPolicy

	// seq numbers the endpoint among those built in the process; from is
	// the seq of the endpoint it was patched from (0: built anew), whose
	// rules it kept but those of the peers in changed.
	seq, from uint64
	changed   []identity.ID
}

// PatchedFrom reports whether e was made from old by recomputing the rules
// of peers (sorted) alone: any rule of another peer is one of old's, in
// the same place among them (rules are sorted by peer first). It is false
// when e was built anew or from another endpoint; the rules then may
// differ for any peer.
func (e *Endpoint) PatchedFrom(old *Endpoint) (peers []identity.ID, ok bool) {
	if old == nil || e.from == 0 || e.from != old.seq {
		return nil, false
	}
	return e.changed, true
}

// Dir returns the policy of direction d.
func (e *Endpoint) Dir(d Direction) *DirectionPolicy {
	if d == Egress {
		return &e.Egress
	}
	return &e.Ingress
}

// Problem is a policy the compiler could not use, and why. The policy is
// skipped; every other policy stays in force.
type Problem struct {
	Policy PolicyKey
	Err    error
}

func (p Problem) Error() string { return fmt.Sprintf("networkpolicy %s: %v", p.Policy, p.Err) }

func (p Problem) Unwrap() error { return p.Err }
