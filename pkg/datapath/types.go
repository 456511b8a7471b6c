package datapath

import (
	"fmt"
	"net/netip"
)

// ABI types. Every one is generated from bpf/zt_abi.h by bpf2go; the
// exported names are aliases so callers never see the generated stems.
type (
	// IPCacheKey is the key of the ipcache (host addresses) and ipcidr
	// (shorter prefixes) maps (see IPCacheKeyFor).
	IPCacheKey = ztTcZtIpcacheKey
	// IPCacheVal is the identity an ipcache prefix resolves to; a host
	// entry may also name the prefix identity of its address
	// (CidrIdentity, 0 for none: see bpf/zt_abi.h).
	IPCacheVal = ztTcZtIpcacheVal
	// Endpoint is the value of the endpoints map (see NewEndpoint).
	Endpoint = ztTcZtEndpoint
	// EndpointIP is one address of an Endpoint.
	EndpointIP = ztTcZtEpIp
	// PolicyKey is the key of the policy map (see PolicyKeys).
	PolicyKey = ztTcZtPolicyKey
	// PolicyMask names the prefix lengths of policy keys in use per
	// direction: bit i of Plens[dir] is prefix length 72+i.
	PolicyMask = ztTcZtPolmask
	// PolicyVal is the action and rule reference of a policy entry.
	PolicyVal = ztTcZtPolicyVal
	// CTKey is a conntrack key in the forward orientation.
	CTKey = ztTcZtCtKey
	// CTVal is a conntrack entry.
	CTVal = ztTcZtCtVal
	// Counter is one per-CPU (or summed) counter slot.
	Counter = ztTcZtCounter
	// FlowEvent is one record of the events ring buffer.
	FlowEvent = ztTcZtFlowEvent
	// Config is the single value of the config map.
	Config = ztTcZtConfig
	// NetnsVal maps a network namespace cookie to its endpoint.
	NetnsVal = ztTcZtNetnsVal

	// Identity is a security identity; reserved values are named below.
	Identity = ztTcZtIdentity
	// Dir is the direction of traffic relative to the pod.
	Dir = ztTcZtDir
	// Verdict is what the datapath did with a packet.
	Verdict = ztTcZtVerdict
	// Reason says why a verdict was reached.
	Reason = ztTcZtReason
	// Action is the action of a policy entry.
	Action = ztTcZtAction
	// Hook says which program produced an event.
	Hook = ztTcZtHook
	// EndpointFlags are the isolation and behaviour flags of an endpoint.
	EndpointFlags = ztTcZtEpFlags
	// ConfigFlags are the flags of Config.
	ConfigFlags = ztTcZtCfgFlags
	// Family is the address family (AF_INET, AF_INET6) in ABI structs.
	Family = ztTcZtFamily
)

// Reserved identities.
const (
	IdentityAny     = ztTcZtIdentityZT_ID_ANY
	IdentityHost    = ztTcZtIdentityZT_ID_HOST
	IdentityWorld   = ztTcZtIdentityZT_ID_WORLD
	IdentityUserMin = ztTcZtIdentityZT_ID_USER_MIN
)

// Directions.
const (
	DirIngress = ztTcZtDirZT_DIR_INGRESS
	DirEgress  = ztTcZtDirZT_DIR_EGRESS
	dirMax     = ztTcZtDirZT_DIR_MAX
)

// Verdicts.
const (
	VerdictAllow = ztTcZtVerdictZT_VERDICT_ALLOW
	VerdictDrop  = ztTcZtVerdictZT_VERDICT_DROP
	VerdictAudit = ztTcZtVerdictZT_VERDICT_AUDIT
	verdictMax   = ztTcZtVerdictZT_VERDICT_MAX
)

// Reasons.
const (
	ReasonAllowed       = ztTcZtReasonZT_REASON_ALLOWED
	ReasonNotIsolated   = ztTcZtReasonZT_REASON_NOT_ISOLATED
	ReasonReply         = ztTcZtReasonZT_REASON_REPLY
	ReasonHost          = ztTcZtReasonZT_REASON_HOST
	ReasonLinkLocal     = ztTcZtReasonZT_REASON_LINK_LOCAL
	ReasonNoEndpoint    = ztTcZtReasonZT_REASON_NO_ENDPOINT
	ReasonPolicyDenied  = ztTcZtReasonZT_REASON_POLICY_DENIED
	ReasonDenyRule      = ztTcZtReasonZT_REASON_DENY_RULE
	ReasonSpoofed       = ztTcZtReasonZT_REASON_SPOOFED
	ReasonMalformed     = ztTcZtReasonZT_REASON_MALFORMED
	ReasonUnsupported   = ztTcZtReasonZT_REASON_UNSUPPORTED
	ReasonSockDenied    = ztTcZtReasonZT_REASON_SOCK_DENIED
	ReasonEvRateLimited = ztTcZtReasonZT_REASON_EV_RATELIMITED
	ReasonEvLost        = ztTcZtReasonZT_REASON_EV_LOST
	reasonMax           = ztTcZtReasonZT_REASON_MAX
)

// Policy actions.
const (
	ActionNone  = ztTcZtActionZT_ACTION_NONE
	ActionAllow = ztTcZtActionZT_ACTION_ALLOW
	ActionDeny  = ztTcZtActionZT_ACTION_DENY
)

// Hooks.
const (
	HookTC   = ztTcZtHookZT_HOOK_TC
	HookSock = ztTcZtHookZT_HOOK_SOCK
	HookNF   = ztTcZtHookZT_HOOK_NF
)

// Endpoint flags.
const (
	EndpointIngressIsolated = ztTcZtEpFlagsZT_EP_INGRESS_ISOLATED
	EndpointEgressIsolated  = ztTcZtEpFlagsZT_EP_EGRESS_ISOLATED
	EndpointAudit           = ztTcZtEpFlagsZT_EP_AUDIT
	EndpointAllowHost       = ztTcZtEpFlagsZT_EP_ALLOW_HOST
)

// Config flags.
const (
	ConfigEventsAllowed = ztTcZtCfgFlagsZT_CFG_EVENTS_ALLOWED
)

// Address families.
const (
	FamilyIPv4 = ztTcZtFamilyZT_AF_INET
	FamilyIPv6 = ztTcZtFamilyZT_AF_INET6
)

// MaxEndpointIPs is how many addresses an Endpoint holds.
const MaxEndpointIPs = len(Endpoint{}.Ips)

var (
	dirNames = map[Dir]string{DirIngress: "ingress", DirEgress: "egress"}

	verdictNames = map[Verdict]string{
		VerdictAllow: "allow", VerdictDrop: "drop", VerdictAudit: "audit",
	}

	reasonNames = map[Reason]string{
		ReasonAllowed:       "allowed",
		ReasonNotIsolated:   "not-isolated",
		ReasonReply:         "reply",
		ReasonHost:          "host",
		ReasonLinkLocal:     "link-local",
		ReasonNoEndpoint:    "no-endpoint",
		ReasonPolicyDenied:  "policy-denied",
		ReasonDenyRule:      "deny-rule",
		ReasonSpoofed:       "spoofed",
		ReasonMalformed:     "malformed",
		ReasonUnsupported:   "unsupported",
		ReasonSockDenied:    "sock-denied",
		ReasonEvRateLimited: "event-ratelimited",
		ReasonEvLost:        "event-lost",
	}

	actionNames = map[Action]string{ActionNone: "none", ActionAllow: "allow", ActionDeny: "deny"}
	hookNames   = map[Hook]string{HookTC: "tc", HookSock: "sock", HookNF: "nf"}
)

func enumString[T ~uint8 | ~uint32](names map[T]string, v T, kind string) string {
	if s, ok := names[v]; ok {
		return s
	}
	return fmt.Sprintf("%s(%d)", kind, v)
}

// String returns the direction name ("ingress", "egress").
func (d ztTcZtDir) String() string { return enumString(dirNames, d, "dir") }

// String returns the verdict name ("allow", "drop", "audit").
func (v ztTcZtVerdict) String() string { return enumString(verdictNames, v, "verdict") }

// String returns the reason name, e.g. "policy-denied".
func (r ztTcZtReason) String() string { return enumString(reasonNames, r, "reason") }

// String returns the action name.
func (a ztTcZtAction) String() string { return enumString(actionNames, a, "action") }

// String returns the hook name.
func (h ztTcZtHook) String() string { return enumString(hookNames, h, "hook") }

// String returns "host", "world", "any" for reserved identities, else the number.
func (i ztTcZtIdentity) String() string {
	switch i {
	case IdentityAny:
		return "any"
	case IdentityHost:
		return "host"
	case IdentityWorld:
		return "world"
	}
	return fmt.Sprintf("%d", uint32(i))
}

// Reasons lists every verdict reason, in ABI order.
func Reasons() []Reason {
	out := make([]Reason, 0, reasonMax)
	for r := Reason(0); r < reasonMax; r++ {
		out = append(out, r)
	}
	return out
}

// IsDrop reports whether the reason is one a packet is dropped for.
func (r ztTcZtReason) IsDrop() bool {
	switch r {
	case ReasonPolicyDenied, ReasonDenyRule, ReasonSpoofed, ReasonMalformed,
		ReasonUnsupported, ReasonSockDenied:
		return true
	}
	return false
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return FamilyIPv4
	}
	return FamilyIPv6
}

// addrBytes returns a 16-byte ABI address: IPv4 in the first 4 bytes.
func addrBytes(a netip.Addr) [16]byte {
	var out [16]byte
	if a.Is4() || a.Is4In6() {
		b := a.Unmap().As4()
		copy(out[:], b[:])
		return out
	}
	return a.As16()
}

func addrFrom(f Family, b [16]byte) netip.Addr {
	if f == FamilyIPv4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// SrcAddr returns the event's source address.
func (e *ztTcZtFlowEvent) SrcAddr() netip.Addr { return addrFrom(e.Family, e.Saddr) }

// DstAddr returns the event's destination address.
func (e *ztTcZtFlowEvent) DstAddr() netip.Addr { return addrFrom(e.Family, e.Daddr) }

// SrcPort returns the event's source port in host order (ICMP echo: id or 0).
func (e *ztTcZtFlowEvent) SrcPort() uint16 { return ntohs(e.Sport) }

// DstPort returns the event's destination port in host order.
func (e *ztTcZtFlowEvent) DstPort() uint16 { return ntohs(e.Dport) }

// NewEndpoint builds an endpoints value. ips may hold up to MaxEndpointIPs
// addresses; IPv4-mapped IPv6 addresses are stored as IPv4.
func NewEndpoint(epID uint32, flags EndpointFlags, ips ...netip.Addr) (Endpoint, error) {
	var ep Endpoint
	if len(ips) > MaxEndpointIPs {
		return ep, fmt.Errorf("endpoint %d: %d addresses, at most %d", epID, len(ips), MaxEndpointIPs)
	}
	ep.EpId = epID
	ep.Flags = flags
	ep.NrIps = uint8(len(ips))
	for i, a := range ips {
		if !a.IsValid() {
			return ep, fmt.Errorf("endpoint %d: invalid address", epID)
		}
		a = a.Unmap()
		ep.Ips[i].Family = familyOf(a)
		ep.Ips[i].Addr = addrBytes(a)
	}
	return ep, nil
}

// Addrs returns the endpoint's addresses.
func (e *ztTcZtEndpoint) Addrs() []netip.Addr {
	n := min(int(e.NrIps), len(e.Ips))
	out := make([]netip.Addr, 0, n)
	for _, ip := range e.Ips[:n] {
		out = append(out, addrFrom(ip.Family, ip.Addr))
	}
	return out
}

// IPCacheKeyFor converts a prefix into an ipcache key.
func IPCacheKeyFor(p netip.Prefix) (IPCacheKey, error) {
	var k IPCacheKey
	if !p.IsValid() {
		return k, fmt.Errorf("invalid prefix %v", p)
	}
	a := p.Addr()
	bits := p.Bits()
	if a.Is4In6() {
		if bits < 96 {
			return k, fmt.Errorf("prefix %v: IPv4-mapped prefix shorter than /96", p)
		}
		a, bits = a.Unmap(), bits-96
	}
	p = netip.PrefixFrom(a, bits).Masked()
	k.Prefixlen = uint32(32 + p.Bits())
	k.Family = familyOf(a)
	k.Addr = addrBytes(p.Addr())
	return k, nil
}

// IsHost reports whether the key is one address (/32, /128): such keys
// live in the ipcache hash, every other prefix in the ipcidr trie.
func (k *ztTcZtIpcacheKey) IsHost() bool {
	if k.Family == FamilyIPv4 {
		return k.Prefixlen == 32+32
	}
	return k.Prefixlen == 32+128
}

// Prefix converts an ipcache key back into a prefix.
func (k *ztTcZtIpcacheKey) Prefix() netip.Prefix {
	return netip.PrefixFrom(addrFrom(k.Family, k.Addr), int(k.Prefixlen)-32)
}
