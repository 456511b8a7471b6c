package policy

import (
	"iter"
	"slices"

	"github.com/ztnet/zt/pkg/identity"
)

// Rules is one direction's allow list of an endpoint, sorted by (Peer,
// Protocol, Port, EndPort, ID) without duplicates of the same (Peer,
// Protocol, Port, EndPort). It is immutable, and the zero value is empty.
//
// It is held in chunks of about ruleChunk rules, which the versions of an
// endpoint share: recomputing a few peers' rules (a relabel patches every
// endpoint naming the identities it changed) copies the chunks holding
// those peers and the list of chunks, not the whole list. At 10,000
// policies an endpoint has tens of thousands of rules, and copying them
// whole on every relabel was most of its cost, and of the garbage. A
// peer's rules are never split between two chunks.
type Rules struct {
	chunks [][]Rule
	n      int
}

// ruleChunk is the size a list is cut into when built: 4 KiB of rules.
// A patched chunk is cut again once it holds more than twice as many.
var ruleChunk = 256 // a variable for tests

// MakeRules returns sorted (in Rules' order, without duplicates) as Rules.
// It keeps sorted's storage: the caller must not change it after.
func MakeRules(sorted []Rule) Rules {
	return Rules{chunks: appendChunks(nil, sorted), n: len(sorted)}
}

// appendChunks appends sorted to chunks, cut at peer boundaries into
// chunks of at least ruleChunk rules (but the last), each with its capacity
// capped so that no append reaches the next.
func appendChunks(chunks [][]Rule, sorted []Rule) [][]Rule {
	for len(sorted) > 0 {
		end := min(ruleChunk, len(sorted))
		for end < len(sorted) && sorted[end].Peer == sorted[end-1].Peer {
			end++
		}
		chunks = append(chunks, sorted[:end:end])
		sorted = sorted[end:]
	}
	return chunks
}

// Len returns the number of rules.
func (rs Rules) Len() int { return rs.n }

// All yields the rules in order.
func (rs Rules) All() iter.Seq[Rule] {
	return func(yield func(Rule) bool) {
		for _, c := range rs.chunks {
			for _, r := range c {
				if !yield(r) {
					return
				}
			}
		}
	}
}

// ByPeer yields each peer's rules in order, one run per peer. The runs are
// shared; do not change them.
func (rs Rules) ByPeer() iter.Seq2[identity.ID, []Rule] {
	return func(yield func(identity.ID, []Rule) bool) {
		c := runCursor{chunks: rs.chunks}
		for run := c.next(); run != nil; run = c.next() {
			if !yield(run[0].Peer, run) {
				return
			}
		}
	}
}

// ChangedPeers yields, in peer order, each peer whose rules differ between
// old and new: its run in old and its run in new (nil where it has none).
// The runs are shared; do not change them. Runs the two lists share are
// passed over without comparing their rules.
func ChangedPeers(old, new Rules) iter.Seq2[[]Rule, []Rule] {
	return func(yield func(o, n []Rule) bool) {
		if old.same(new) {
			return
		}
		oc, nc := runCursor{chunks: old.chunks}, runCursor{chunks: new.chunks}
		o, n := oc.next(), nc.next()
		for o != nil || n != nil {
			switch {
			case n == nil || (o != nil && o[0].Peer < n[0].Peer):
				if !yield(o, nil) {
					return
				}
				o = oc.next()
			case o == nil || n[0].Peer < o[0].Peer:
				if !yield(nil, n) {
					return
				}
				n = nc.next()
			default:
				if (len(o) != len(n) || &o[0] != &n[0]) && !slices.Equal(o, n) && !yield(o, n) {
					return
				}
				o, n = oc.next(), nc.next()
			}
		}
	}
}

// runCursor walks the chunks of a Rules one peer's run at a time.
type runCursor struct {
	chunks [][]Rule
	ci, i  int
}

// next returns the next peer's run, nil after the last.
func (c *runCursor) next() []Rule {
	for c.ci < len(c.chunks) && c.i == len(c.chunks[c.ci]) {
		c.ci, c.i = c.ci+1, 0
	}
	if c.ci == len(c.chunks) {
		return nil
	}
	ch := c.chunks[c.ci]
	j := c.i + 1
	for j < len(ch) && ch[j].Peer == ch[c.i].Peer {
		j++
	}
	run := ch[c.i:j]
	c.i = j
	return run
}

// Slice returns the rules in one new slice (nil when there are none).
func (rs Rules) Slice() []Rule {
	if rs.n == 0 {
		return nil
	}
	out := make([]Rule, 0, rs.n)
	for _, c := range rs.chunks {
		out = append(out, c...)
	}
	return out
}

// Peer returns the rules of peer p, in order: two binary searches. The
// slice is shared; do not change it.
func (rs Rules) Peer(p identity.ID) []Rule {
	if len(rs.chunks) == 0 {
		return nil
	}
	c := rs.chunks[rs.owner(p)]
	lo, hi := peerRange(c, p)
	return c[lo:hi]
}

// owner returns the index of the chunk that holds peer p's rules, or
// would: the last chunk whose first peer is at most p (the first chunk
// when there is none). rs has chunks.
func (rs Rules) owner(p identity.ID) int {
	i, found := slices.BinarySearchFunc(rs.chunks, p, func(c []Rule, p identity.ID) int {
		return cmpU(uint64(c[0].Peer), uint64(p))
	})
	if found {
		return i
	}
	return max(i-1, 0)
}

// Equal reports whether rs and o hold the same rules. It skips the chunks
// they share, which after a patch is all but a few.
func (rs Rules) Equal(o Rules) bool {
	if rs.n != o.n {
		return false
	}
	if rs.same(o) {
		return true
	}
	var a, b []Rule
	i, j := 0, 0
	for {
		for len(a) == 0 && i < len(rs.chunks) {
			a, i = rs.chunks[i], i+1
		}
		for len(b) == 0 && j < len(o.chunks) {
			b, j = o.chunks[j], j+1
		}
		if len(a) == 0 || len(b) == 0 {
			return len(a) == len(b)
		}
		n := min(len(a), len(b))
		if &a[0] != &b[0] && !slices.Equal(a[:n], b[:n]) {
			return false
		}
		a, b = a[n:], b[n:]
	}
}

// same reports whether rs and o are the same list (not only equal): one
// was made from the other without change.
func (rs Rules) same(o Rules) bool {
	return rs.n == o.n && len(rs.chunks) == len(o.chunks) && (len(rs.chunks) == 0 || &rs.chunks[0] == &o.chunks[0])
}

// patch returns rs with the rules of the peers in changed (sorted)
// replaced by fresh (sorted as Rules are, naming only peers in changed).
// Only the chunks holding those peers are rebuilt; the others are shared
// with rs. It returns rs itself when nothing differs. fresh's storage is
// kept.
func (rs Rules) patch(fresh []Rule, changed []identity.ID) Rules {
	if len(rs.chunks) == 0 {
		return MakeRules(fresh)
	}
	var chunks [][]Rule // nil until a chunk differs
	n := rs.n
	nc, nf := 0, 0 // the changed peers and fresh rules not yet placed
	for ci, c := range rs.chunks {
		// Chunk ci holds the peers below the next chunk's first one.
		cj, fj := len(changed), len(fresh)
		if ci+1 < len(rs.chunks) {
			next := rs.chunks[ci+1][0].Peer
			for cj = nc; cj < len(changed) && changed[cj] < next; cj++ {
			}
			for fj = nf; fj < len(fresh) && fresh[fj].Peer < next; fj++ {
			}
		}
		p := c
		if cj > nc || fj > nf {
			p = patchRules(c, fresh[nf:fj], changed[nc:cj])
			nc, nf = cj, fj
		}
		if len(p) == len(c) && &p[0] == &c[0] { // c itself: unchanged
			if chunks != nil {
				chunks = append(chunks, c)
			}
			continue
		}
		if chunks == nil {
			chunks = make([][]Rule, ci, len(rs.chunks)+1)
			copy(chunks, rs.chunks[:ci])
		}
		n += len(p) - len(c)
		if len(p) > 2*ruleChunk {
			chunks = appendChunks(chunks, p)
		} else if len(p) > 0 {
			chunks = append(chunks, p[:len(p):len(p)])
		}
	}
	switch {
	case chunks == nil:
		return rs
	case n == 0:
		return Rules{}
	}
	return Rules{chunks: chunks, n: n}
}
