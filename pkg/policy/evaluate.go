package policy

import (
	"fmt"
	"net/netip"

	"github.com/ztnet/zt/pkg/identity"
)

// Reason says why Evaluate decided as it did.
type Reason string

// Reasons.
const (
	// ReasonSelf: traffic between a pod and itself is not subject to
	// NetworkPolicy (it never leaves the pod's network namespace).
	ReasonSelf Reason = "self"
	// ReasonAllowed: every direction that applies allows it.
	ReasonAllowed Reason = "allowed"
	// ReasonEgressDenied: the source pod is isolated for egress and no
	// rule allows the destination.
	ReasonEgressDenied Reason = "egress-denied"
	// ReasonIngressDenied: the destination pod is isolated for ingress and
	// no rule allows the source.
	ReasonIngressDenied Reason = "ingress-denied"
)

// Verdict is the answer to "may src reach dst on this port?".
type Verdict struct {
	Allowed bool
	Reason  Reason
	// SrcIdentity and DstIdentity are the identities the addresses resolve
	// to, as the kernel would resolve them; SrcCIDR and DstCIDR the prefix
	// identities their ipcache entries name (0 for none), whose rules the
	// kernel also applies (bpf/zt_abi.h, "Prefix identity of an address").
	SrcIdentity, DstIdentity identity.ID
	SrcCIDR, DstCIDR         identity.ID
	// Egress is the source pod's side, nil when the source is not a pod
	// endpoint; Ingress the destination pod's side, likewise.
	Egress, Ingress *DirVerdict
}

// DirVerdict is one endpoint's side of a verdict.
type DirVerdict struct {
	Endpoint   PodKey
	Isolated   bool
	IsolatedBy []PolicyKey
	Allowed    bool
	// FromHost is set when ingress was allowed because the source is the
	// node itself.
	FromHost bool
	// AllowedBy lists every rule that allows the traffic.
	AllowedBy []RuleRef
}

// Evaluate decides whether a packet from src to dst with protocol proto and
// destination port port is allowed, from the compiled endpoints alone: the
// same lookups the kernel makes (address → identity and prefix identity,
// then the endpoint's rules for that identity, any identity or the prefix
// identity). It syncs pending changes first.
func (c *Compiler) Evaluate(src, dst netip.Addr, proto Protocol, port uint16) Verdict {
	c.Sync()
	src, dst = src.Unmap(), dst.Unmap()
	se, de := c.ipc.Lookup(src), c.ipc.Lookup(dst)
	v := Verdict{
		SrcIdentity: se.ID,
		DstIdentity: de.ID,
		SrcCIDR:     se.CIDR,
		DstCIDR:     de.CIDR,
		Allowed:     true,
		Reason:      ReasonAllowed,
	}
	srcPod, srcOK := c.PodByIP(src)
	dstPod, dstOK := c.PodByIP(dst)
	if srcOK && dstOK && srcPod == dstPod {
		v.Reason = ReasonSelf
		return v
	}
	if ep, ok := c.endpointFor(srcPod, srcOK); ok {
		v.Egress = c.decide(ep, Egress, de, proto, port)
		if !v.Egress.Allowed {
			v.Allowed, v.Reason = false, ReasonEgressDenied
		}
	}
	if ep, ok := c.endpointFor(dstPod, dstOK); ok {
		v.Ingress = c.decide(ep, Ingress, se, proto, port)
		if !v.Ingress.Allowed && v.SrcIdentity == identity.Host && !c.opts.DenyFromHost {
			v.Ingress.Allowed, v.Ingress.FromHost = true, true
		}
		if !v.Ingress.Allowed && v.Allowed {
			v.Allowed, v.Reason = false, ReasonIngressDenied
		}
	}
	return v
}

func (c *Compiler) endpointFor(pk PodKey, ok bool) (*Endpoint, bool) {
	if !ok {
		return nil, false
	}
	ep, ok := c.endpoints[pk]
	return ep, ok
}

func (c *Compiler) decide(ep *Endpoint, d Direction, peer identity.Entry, proto Protocol, port uint16) *DirVerdict {
	dp := ep.Dir(d)
	dv := &DirVerdict{Endpoint: ep.Pod, Isolated: dp.Isolated, IsolatedBy: dp.IsolatedBy, Allowed: !dp.Isolated}
	for r := range dp.Rules.All() {
		if r.Matches(peer.ID, proto, port) || (peer.CIDR != identity.Any && r.Matches(peer.CIDR, proto, port)) {
			dv.Allowed = true
			if ref, ok := c.ruleRefs[r.ID]; ok {
				dv.AllowedBy = append(dv.AllowedBy, ref)
			}
		}
	}
	return dv
}

// EvaluatePods evaluates traffic from pod src to pod dst. It uses dst's
// first address and src's first address of the same family.
func (c *Compiler) EvaluatePods(src, dst PodKey, proto Protocol, port uint16) (Verdict, error) {
	s, ok := c.pods[src]
	if !ok {
		return Verdict{}, fmt.Errorf("pod %s not found", src)
	}
	d, ok := c.pods[dst]
	if !ok {
		return Verdict{}, fmt.Errorf("pod %s not found", dst)
	}
	if len(d.pod.IPs) == 0 {
		return Verdict{}, fmt.Errorf("pod %s has no IP", dst)
	}
	dip := d.pod.IPs[0]
	for _, sip := range s.pod.IPs {
		if sip.Is4() == dip.Is4() {
			return c.Evaluate(sip, dip, proto, port), nil
		}
	}
	return Verdict{}, fmt.Errorf("pod %s has no address of the family of %s (%s)", src, dst, dip)
}
