// Package identity turns label sets into node-local numeric identities and
// addresses into identities.
//
// Packets carry no identity: every node derives a peer's identity from its
// address, so identities are node-local numbers and need no cluster-wide
// allocator. An identity stands for everything a NetworkPolicy peer can test:
//
//	pod:  namespace + pod labels + namespace labels
//	      + the resolutions of policy-referenced named ports (egress)
//	      + the CIDRs referenced by egress rules with a named port that
//	        contain the address
//	cidr: the policy-referenced CIDRs that contain the prefix
//	host, world: reserved
//
// Folding referenced CIDRs and named ports into the label set keeps every
// peer test a plain set test on one identity, in Go and in the kernel alike:
// ipBlock{cidr, except} matches an identity that carries cidr and none of the
// except prefixes. A pod's address is matched against ipBlocks by its
// prefix identity (IPCache Entry.CIDR: the cidr identity of the longest
// referenced prefix holding it), which the kernel probes after the pod's
// own identity, so a new ipBlock relabels no pod; only rules whose named
// ports resolve on the destination pod need the pod identity itself to
// carry the prefixes.
package identity

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ID is a node-local numeric identity. Its values match the reserved
// identities of bpf/zt_abi.h.
type ID uint32

// Reserved identities.
const (
	// Any is the wildcard peer in compiled rules; no address has it.
	Any ID = 0
	// Host is the node itself (kubelet probes come from it).
	Host ID = 1
	// World is every address that no pod, node or referenced CIDR covers.
	World ID = 2
	// FirstAllocated is the first identity handed out for a label set.
	FirstAllocated ID = 256
)

// String names reserved identities and prints others as numbers.
func (id ID) String() string {
	switch id {
	case Any:
		return "any"
	case Host:
		return "host"
	case World:
		return "world"
	}
	return strconv.FormatUint(uint64(id), 10)
}

// Kind tells what an identity stands for.
type Kind uint8

// Identity kinds.
const (
	KindWorld Kind = iota
	KindHost
	KindPod
	KindCIDR
)

func (k Kind) String() string {
	switch k {
	case KindWorld:
		return "world"
	case KindHost:
		return "host"
	case KindPod:
		return "pod"
	case KindCIDR:
		return "cidr"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Protocol is an IANA protocol number; 0 means any protocol.
type Protocol uint8

// Protocols NetworkPolicy names.
const (
	ProtoAny    Protocol = 0
	ProtoICMP   Protocol = 1
	ProtoTCP    Protocol = 6
	ProtoUDP    Protocol = 17
	ProtoICMPv6 Protocol = 58
	ProtoSCTP   Protocol = 132
)

// String returns the Kubernetes spelling (TCP, UDP, SCTP) or a number.
func (p Protocol) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	case ProtoICMP:
		return "ICMP"
	case ProtoICMPv6:
		return "ICMPv6"
	}
	return strconv.Itoa(int(p))
}

// ParseProtocol parses TCP, UDP or SCTP (case-sensitive, as the API is).
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "TCP":
		return ProtoTCP, nil
	case "UDP":
		return ProtoUDP, nil
	case "SCTP":
		return ProtoSCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want TCP, UDP or SCTP)", s)
}

// NamedPort is one resolution of a container port name.
type NamedPort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// Labels is the full label set an identity stands for. It is data only;
// Key gives its canonical form.
type Labels struct {
	Kind      Kind
	Namespace string
	// Pod labels and namespace labels (pods only).
	PodLabels       map[string]string
	NamespaceLabels map[string]string
	// Policy-referenced prefixes that contain the prefix (CIDR
	// identities), or the address (pod identities: only those of egress
	// rules with named ports), sorted.
	CIDRs []netip.Prefix
	// Resolutions of policy-referenced named ports, sorted.
	NamedPorts []NamedPort
}

// Key is the canonical, comparable form of a label set: equal label sets
// have equal keys. It is a binary encoding in which every string and list
// is preceded by its length, so no two label sets share one. It is built
// in one allocation: a relabel computes a key per pod address, thousands
// per Sync when a new ipBlock relabels the pods it holds.
func (l *Labels) Key() string {
	// Its exact length: the allocator keeps every identity's key, so
	// room left over would stay allocated as long as the identity.
	n := 1 + keyStrLen(l.Namespace) + keyMapLen(l.PodLabels) + keyMapLen(l.NamespaceLabels) +
		uvarintLen(len(l.CIDRs)) + uvarintLen(len(l.NamedPorts))
	for _, p := range l.CIDRs {
		n += 2 + p.Addr().BitLen()/8
	}
	for _, np := range l.NamedPorts {
		n += keyStrLen(np.Name) + 3
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteByte(byte(l.Kind))
	keyStr(&b, l.Namespace)
	keyMap(&b, l.PodLabels)
	keyMap(&b, l.NamespaceLabels)
	keyUint(&b, uint64(len(l.CIDRs)))
	for _, p := range l.CIDRs {
		if a := p.Addr(); a.Is4() {
			v := a.As4()
			b.WriteByte(4)
			b.Write(v[:])
		} else {
			v := a.As16()
			b.WriteByte(6)
			b.Write(v[:])
		}
		b.WriteByte(byte(p.Bits()))
	}
	keyUint(&b, uint64(len(l.NamedPorts)))
	for _, np := range l.NamedPorts {
		keyStr(&b, np.Name)
		b.WriteByte(byte(np.Protocol))
		b.WriteByte(byte(np.Port >> 8))
		b.WriteByte(byte(np.Port))
	}
	return b.String()
}

// uvarintLen is the length of n's uvarint encoding.
func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

func keyStrLen(s string) int { return uvarintLen(len(s)) + len(s) }

func keyMapLen(m map[string]string) int {
	n := uvarintLen(len(m))
	for k, v := range m {
		n += keyStrLen(k) + keyStrLen(v)
	}
	return n
}

func keyUint(b *strings.Builder, v uint64) {
	var buf [binary.MaxVarintLen64]byte
	b.Write(binary.AppendUvarint(buf[:0], v))
}

func keyStr(b *strings.Builder, s string) {
	keyUint(b, uint64(len(s)))
	b.WriteString(s)
}

// keyMap writes m's size, then its pairs in key order. Label sets are
// small: their keys are sorted in a buffer on the stack.
func keyMap(b *strings.Builder, m map[string]string) {
	keyUint(b, uint64(len(m)))
	var buf [16]string
	keys := buf[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		keyStr(b, k)
		keyStr(b, m[k])
	}
}

// HasCIDR reports whether the label set carries prefix p.
func (l *Labels) HasCIDR(p netip.Prefix) bool {
	_, found := slices.BinarySearchFunc(l.CIDRs, p, ComparePrefix)
	return found
}

// NamedPort returns the port a name resolves to for protocol proto.
func (l *Labels) NamedPort(name string, proto Protocol) (uint16, bool) {
	for _, np := range l.NamedPorts {
		if np.Name == name && np.Protocol == proto {
			return np.Port, true
		}
	}
	return 0, false
}

// ComparePrefix orders prefixes by address family, address, then length.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// CompareNamedPort orders named ports by name, protocol, port.
func CompareNamedPort(a, b NamedPort) int {
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	if a.Protocol != b.Protocol {
		return int(a.Protocol) - int(b.Protocol)
	}
	return int(a.Port) - int(b.Port)
}

// Identity is an allocated identity.
type Identity struct {
	ID     ID
	Labels Labels
	key    string
	refs   int
}

// Allocator hands out identities for label sets and counts their users.
// Numbers are never reused within one allocator, so a stale address entry
// can never point at a different label set. It is not safe for concurrent
// use.
type Allocator struct {
	byKey map[string]*Identity
	byID  map[ID]*Identity
	next  ID
	// hinted are the reserved numbers handed out by AcquireHinted: each
	// at most once.
	hinted map[ID]bool
}

// NewAllocator returns an allocator holding only the reserved identities.
func NewAllocator() *Allocator {
	a := &Allocator{byKey: map[string]*Identity{}, byID: map[ID]*Identity{}, next: FirstAllocated}
	for _, r := range []*Identity{
		{ID: Host, Labels: Labels{Kind: KindHost}},
		{ID: World, Labels: Labels{Kind: KindWorld}},
	} {
		r.key = r.Labels.Key()
		r.refs = 1 // reserved identities are never released
		a.byKey[r.key] = r
		a.byID[r.ID] = r
	}
	return a
}

// Reserve makes the allocator hand out numbers from first upward, never
// below. An agent that adopts pinned maps reserves every number they use,
// so no number of the old process ever names another label set.
func (a *Allocator) Reserve(first ID) {
	if first > a.next {
		a.next = first
	}
}

// Acquire returns the identity for l, allocating it if needed, and counts
// one more user. created reports whether it was new.
func (a *Allocator) Acquire(l Labels) (id *Identity, created bool) {
	key := l.Key()
	if id, ok := a.byKey[key]; ok {
		id.refs++
		return id, false
	}
	id = &Identity{ID: a.next, Labels: l, key: key, refs: 1}
	a.next++
	a.byKey[key] = id
	a.byID[id.ID] = id
	return id, true
}

// AcquireHinted is Acquire, but a new label set takes the number hint
// when hint is one of the numbers Reserve skipped (an adopted map's: a
// restarted agent keeps the numbers its maps already hold, so reconciling
// them writes nothing) that no live identity holds and that no label set
// took before. Any other hint is ignored: a number is never given to two
// label sets by one allocator, and numbers from next upward stay fresh.
func (a *Allocator) AcquireHinted(l Labels, hint ID) (id *Identity, created bool) {
	if hint < FirstAllocated || hint >= a.next || a.hinted[hint] || a.byID[hint] != nil {
		return a.Acquire(l)
	}
	key := l.Key()
	if id, ok := a.byKey[key]; ok {
		id.refs++
		return id, false
	}
	if a.hinted == nil {
		a.hinted = map[ID]bool{}
	}
	a.hinted[hint] = true
	id = &Identity{ID: hint, Labels: l, key: key, refs: 1}
	a.byKey[key] = id
	a.byID[id.ID] = id
	return id, true
}

// Release drops one user of id and reports whether the identity is gone.
func (a *Allocator) Release(id ID) (gone bool) {
	ident, ok := a.byID[id]
	if !ok || id < FirstAllocated {
		return false
	}
	ident.refs--
	if ident.refs > 0 {
		return false
	}
	delete(a.byID, id)
	delete(a.byKey, ident.key)
	return true
}

// Get returns the identity with number id.
func (a *Allocator) Get(id ID) (*Identity, bool) {
	i, ok := a.byID[id]
	return i, ok
}

// Len returns the number of live identities, reserved ones included.
func (a *Allocator) Len() int { return len(a.byID) }

// All returns the live identities sorted by number.
func (a *Allocator) All() []*Identity {
	out := slices.Collect(maps.Values(a.byID))
	slices.SortFunc(out, func(x, y *Identity) int { return int(x.ID) - int(y.ID) })
	return out
}
