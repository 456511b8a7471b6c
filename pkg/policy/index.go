package policy

import (
	"net/netip"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/ztnet/zt/pkg/identity"
)

// The peer index finds the policies whose rules may match an identity
// without testing every policy: each peer is filed under a key that any
// identity it matches has (a label of the pod or of its namespace that
// its selectors require, its namespace, a prefix, a named port), and an
// identity is tested against the policies filed under its own keys only.
// Keys are computed from the identity's labels alone, which never change,
// so the same policies are found when it is created and when it is
// released. Peers with no such key (an empty pod selector in every
// namespace, selectors of only NotIn/Exists/DoesNotExist) are scanned for
// every pod identity.

type ixKind uint8

const (
	ixOwn    ixKind = iota // a, the policy's namespace: any pod of it
	ixOwnPod               // a namespace, b=c a pod label in it
	ixPod                  // b=c a pod label, any namespace
	ixNS                   // a=d a namespace label
	ixPair                 // a=d a namespace label, b=c a pod label
	ixCIDR                 // p a referenced prefix
	ixNamed                // b a named port of protocol proto (rules allowing every peer)
)

type ixKey struct {
	kind       ixKind
	a, b, c, d string
	p          netip.Prefix
	proto      Protocol
}

// eqReq returns the key and values of one requirement of sel that a
// matching label set must meet with one of a few values (=, ==, in): the
// one with the fewest values.
func eqReq(sel labels.Selector) (key string, vals []string, ok bool) {
	if sel == nil {
		return "", nil, false
	}
	reqs, selectable := sel.Requirements()
	if !selectable {
		return "", nil, false
	}
	for i := range reqs {
		switch reqs[i].Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			v := reqs[i].ValuesUnsorted()
			if len(v) > 0 && (!ok || len(v) < len(vals)) {
				key, vals, ok = reqs[i].Key(), v, true
			}
		}
	}
	return key, vals, ok
}

// indexKeys returns the keys cp's peers are filed under, and whether some
// peer must be scanned instead.
func indexKeys(cp *compiledPolicy) (keys []ixKey, scan bool) {
	for d := range 2 {
		for _, r := range cp.rules[d] {
			if r.allPeers {
				// Matches no identity, but egress named ports expand per
				// identity resolving them.
				if Direction(d) == Egress {
					for _, port := range r.ports {
						if port.name != "" {
							keys = append(keys, ixKey{kind: ixNamed, b: port.name, proto: port.proto})
						}
					}
				}
				continue
			}
			for _, p := range r.peers {
				if p.ipBlock {
					keys = append(keys, ixKey{kind: ixCIDR, p: p.cidr})
					continue
				}
				pk, pv, pok := eqReq(p.podSel)
				switch {
				case p.nsSel == nil:
					if !pok {
						keys = append(keys, ixKey{kind: ixOwn, a: cp.key.Namespace})
						continue
					}
					for _, v := range pv {
						keys = append(keys, ixKey{kind: ixOwnPod, a: cp.key.Namespace, b: pk, c: v})
					}
					continue
				}
				nk, nv, nok := eqReq(p.nsSel)
				switch {
				case nok && pok:
					for _, n := range nv {
						for _, v := range pv {
							keys = append(keys, ixKey{kind: ixPair, a: nk, d: n, b: pk, c: v})
						}
					}
				case nok:
					for _, n := range nv {
						keys = append(keys, ixKey{kind: ixNS, a: nk, d: n})
					}
				case pok:
					for _, v := range pv {
						keys = append(keys, ixKey{kind: ixPod, b: pk, c: v})
					}
				default:
					scan = true
				}
			}
		}
	}
	return keys, scan
}

// indexPolicy files ps in the peer index (add) or takes it out.
func (c *Compiler) indexPolicy(ps *policyState, add bool) {
	keys, scan := indexKeys(ps.cp)
	for _, k := range keys {
		if add {
			s := c.peerIndex[k]
			if s == nil {
				s = set[*policyState]{}
				c.peerIndex[k] = s
			}
			s.add(ps)
		} else if s := c.peerIndex[k]; s != nil {
			s.del(ps)
			if len(s) == 0 {
				delete(c.peerIndex, k)
			}
		}
	}
	if scan {
		if add {
			c.peerScan.add(ps)
		} else {
			c.peerScan.del(ps)
		}
	}
}

// forCandidates calls f once for each policy some peer of which may match
// ident (a superset of those that do), in no order.
func (c *Compiler) forCandidates(ident *identity.Identity, f func(ps *policyState)) {
	c.visitGen++
	gen := c.visitGen
	visit := func(s set[*policyState]) {
		for ps := range s {
			if ps.visited != gen {
				ps.visited = gen
				f(ps)
			}
		}
	}
	lookup := func(k ixKey) {
		if s := c.peerIndex[k]; s != nil {
			visit(s)
		}
	}
	l := &ident.Labels
	for _, p := range l.CIDRs {
		lookup(ixKey{kind: ixCIDR, p: p})
	}
	if l.Kind != identity.KindPod {
		return
	}
	for _, np := range l.NamedPorts {
		lookup(ixKey{kind: ixNamed, b: np.Name, proto: np.Protocol})
	}
	lookup(ixKey{kind: ixOwn, a: l.Namespace})
	for k, v := range l.PodLabels {
		lookup(ixKey{kind: ixOwnPod, a: l.Namespace, b: k, c: v})
		lookup(ixKey{kind: ixPod, b: k, c: v})
	}
	for nk, nv := range l.NamespaceLabels {
		lookup(ixKey{kind: ixNS, a: nk, d: nv})
		for k, v := range l.PodLabels {
			lookup(ixKey{kind: ixPair, a: nk, d: nv, b: k, c: v})
		}
	}
	visit(c.peerScan)
}
