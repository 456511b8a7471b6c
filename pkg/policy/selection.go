package policy

import (
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ztnet/zt/pkg/identity"
)

// A peerSelection is the set of live identities that a rule's peers match,
// shared by every rule (of any policy, in either direction) whose peers
// match the same identities: those with the same selectionKey. Thousands
// of policies often repeat a few peers (a namespaceSelector of a team, a
// tier in every namespace): each such set is matched and stored once, as
// Cilium's SelectorCache does. It lives as long as some rule uses it.
type peerSelection struct {
	peerSet
	key  string
	refs int // rules of live policies using it
	// seen is the identity event (Compiler.selGen) that last looked at
	// it; hit is what that event found: whether the identity matches (an
	// identity created) or was in the set (one released). Every policy
	// using the selection that the event visits reads the answer instead
	// of matching again, and is marked as if it had.
	seen uint64
	hit  bool
}

// allPeersKey is the selection of rules allowing every peer: it stays
// empty (such rules match no identity; see matchIdentity).
const allPeersKey = "*"

// selectionKey returns the canonical form of what ruleMatches reads of
// rule r of cp: its peers, the policy's namespace for peers that are
// scoped to it (a podSelector without namespaceSelector), and for ipBlock
// peers whether the rule resolves pods. Rules with equal
// keys match the same identities. Peers are an "any of", so their order
// and repetitions do not count; the rest (the node's addresses, for ipBlock
// peers and the host) is the same for every rule.
func selectionKey(cp *compiledPolicy, r *compiledRule) string {
	if r.allPeers {
		return allPeersKey
	}
	parts := make([]string, 0, len(r.peers))
	blocks := false
	for i := range r.peers {
		parts = append(parts, peerKey(cp.key.Namespace, &r.peers[i]))
		blocks = blocks || r.peers[i].ipBlock
	}
	slices.Sort(parts)
	key := strings.Join(slices.Compact(parts), "|")
	if blocks && r.resolvesPods {
		// Its ipBlocks match pod identities too (ruleMatches).
		key = "pods " + key
	}
	return key
}

func peerKey(ns string, p *compiledPeer) string {
	var b strings.Builder
	if p.ipBlock {
		b.WriteString("ip ")
		b.WriteString(p.cidr.String())
		ex := slices.Clone(p.except)
		slices.SortFunc(ex, identity.ComparePrefix)
		for _, e := range slices.Compact(ex) {
			b.WriteString(" -")
			b.WriteString(e.String())
		}
		return b.String()
	}
	if p.nsSel == nil {
		// Scoped to the policy's namespace.
		b.WriteString("own ")
		b.WriteString(strconv.Quote(ns))
	} else {
		b.WriteString("ns ")
		writeSelectorKey(&b, p.nsSel)
	}
	if p.podSel == nil {
		b.WriteString(" pod all")
	} else {
		b.WriteString(" pod ")
		writeSelectorKey(&b, p.podSel)
	}
	return b.String()
}

// writeSelectorKey writes a canonical form of sel: its requirements (an
// "and", so sorted), each with its values sorted.
func writeSelectorKey(b *strings.Builder, sel labels.Selector) {
	reqs, selectable := sel.Requirements()
	if !selectable {
		b.WriteString("none") // labels.Nothing
		return
	}
	parts := make([]string, 0, len(reqs))
	for i := range reqs {
		vals := slices.Clone(reqs[i].ValuesUnsorted())
		slices.Sort(vals)
		var rb strings.Builder
		rb.WriteString(strconv.Quote(reqs[i].Key()))
		rb.WriteByte(' ')
		rb.WriteString(strconv.Quote(string(reqs[i].Operator())))
		for _, v := range vals {
			rb.WriteByte(' ')
			rb.WriteString(strconv.Quote(v))
		}
		parts = append(parts, rb.String())
	}
	slices.Sort(parts)
	b.WriteByte('{')
	b.WriteString(strings.Join(parts, ";"))
	b.WriteByte('}')
}

// acquireSelection returns the selection of rule r of cp, counting one more
// user, and whether it was created (empty: its identities are still to be
// matched).
func (c *Compiler) acquireSelection(cp *compiledPolicy, r *compiledRule) (*peerSelection, bool) {
	key := selectionKey(cp, r)
	if s := c.selections[key]; s != nil {
		s.refs++
		return s, false
	}
	s := &peerSelection{peerSet: newPeerSet(), key: key, refs: 1}
	c.selections[key] = s
	return s, true
}

// releaseSelection counts one user less of s, dropping it with the last.
func (c *Compiler) releaseSelection(s *peerSelection) {
	s.refs--
	if s.refs == 0 {
		delete(c.selections, s.key)
	}
}

// nextSelGen starts an identity event: each selection answers it once.
func (c *Compiler) nextSelGen() uint64 {
	c.selGen++
	return c.selGen
}
