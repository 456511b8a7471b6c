package policy

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/ztnet/zt/pkg/identity"
)

// setRuleChunk makes Rules cut lists into chunks of n rules until the test
// ends, so that small worlds have lists of many chunks. pkg/policy's
// tests do not run in parallel.
func setRuleChunk(t testing.TB, n int) {
	old := ruleChunk
	ruleChunk = n
	t.Cleanup(func() { ruleChunk = old })
}

// randomRules returns a sorted, compacted list of rules of peers drawn
// from [1, peers], some peers with many rules.
func randomRules(r *rand.Rand, n, peers int) []Rule {
	out := make([]Rule, 0, n)
	for range n {
		rule := Rule{Peer: identity.ID(1 + r.IntN(peers)), ID: RuleID(1 + r.IntN(5))}
		if r.IntN(4) > 0 {
			rule.Protocol, rule.Port = ProtoTCP, uint16(1+r.IntN(40))
			rule.EndPort = rule.Port + uint16(r.IntN(2))
		}
		out = append(out, rule)
	}
	return compactRules(out)
}

func compactRules(rs []Rule) []Rule {
	slices.SortFunc(rs, compareRule)
	return slices.CompactFunc(rs, func(a, b Rule) bool {
		return a.Peer == b.Peer && a.Protocol == b.Protocol && a.Port == b.Port && a.EndPort == b.EndPort
	})
}

// checkRules checks rs's invariants and that it holds want.
func checkRules(t *testing.T, rs Rules, want []Rule, what string) {
	t.Helper()
	if got := rs.Slice(); !slices.Equal(got, want) {
		t.Fatalf("%s: holds\n%v\nwant\n%v", what, got, want)
	}
	if rs.Len() != len(want) {
		t.Fatalf("%s: Len %d, want %d", what, rs.Len(), len(want))
	}
	var all []Rule
	for r := range rs.All() {
		all = append(all, r)
	}
	if !slices.Equal(all, want) {
		t.Fatalf("%s: All yields %v, want %v", what, all, want)
	}
	for i, c := range rs.chunks {
		if len(c) == 0 || cap(c) != len(c) {
			t.Fatalf("%s: chunk %d of len %d cap %d", what, i, len(c), cap(c))
		}
		// Cut when longer than twice the chunk size, but not within a peer.
		if len(c) > 2*ruleChunk && c[ruleChunk-1].Peer != c[len(c)-1].Peer {
			t.Fatalf("%s: chunk %d holds %d rules", what, i, len(c))
		}
		if i > 0 && rs.chunks[i-1][len(rs.chunks[i-1])-1].Peer == c[0].Peer {
			t.Fatalf("%s: peer %d split between chunks %d and %d", what, c[0].Peer, i-1, i)
		}
	}
	var runs []Rule
	prev := identity.ID(0)
	for p, run := range rs.ByPeer() {
		if len(run) == 0 || (len(runs) > 0 && p <= prev) {
			t.Fatalf("%s: ByPeer yields peer %d (%d rules) after %d", what, p, len(run), prev)
		}
		for _, r := range run {
			if r.Peer != p {
				t.Fatalf("%s: ByPeer's run of %d holds %v", what, p, r)
			}
		}
		runs, prev = append(runs, run...), p
	}
	if !slices.Equal(runs, want) {
		t.Fatalf("%s: ByPeer yields %v, want %v", what, runs, want)
	}
	peers := map[identity.ID]bool{0: true, 1 << 30: true}
	for _, r := range want {
		peers[r.Peer], peers[r.Peer+1] = true, true
	}
	for p := range peers {
		lo, hi := peerRange(want, p)
		if got := rs.Peer(p); !slices.Equal(got, want[lo:hi]) {
			t.Fatalf("%s: Peer(%d) = %v, want %v", what, p, got, want[lo:hi])
		}
	}
}

// TestRulesPatch checks Rules against a plain sorted slice: building,
// Peer, Equal, and patching random peers' rules, over chains of patches
// and chunk sizes from 1 rule up. A patch must share every chunk holding
// no changed peer.
func TestRulesPatch(t *testing.T) {
	r := rand.New(rand.NewPCG(testSeed(t), 7))
	if got := (Rules{}).patch(nil, []identity.ID{3}); got.Len() != 0 || len(got.chunks) != 0 {
		t.Fatalf("patching an empty list with nothing: %+v", got)
	}
	shared, rebuilt := 0, 0
	for run := range 300 {
		setRuleChunk(t, 1+r.IntN(6))
		if run%10 == 0 {
			setRuleChunk(t, 256)
		}
		peers := 1 + r.IntN(60)
		want := randomRules(r, r.IntN(400), peers)
		rs := MakeRules(slices.Clone(want))
		checkRules(t, rs, want, "built")
		for step := range 20 {
			var changed []identity.ID
			for range r.IntN(6) {
				changed = append(changed, identity.ID(1+r.IntN(peers+3)))
			}
			slices.Sort(changed)
			changed = slices.Compact(changed)
			var fresh []Rule
			for _, f := range randomRules(r, r.IntN(30), peers+3) {
				if _, ok := slices.BinarySearch(changed, f.Peer); ok {
					fresh = append(fresh, f)
				}
			}
			next := patchRules(want, fresh, changed)
			got := rs.patch(slices.Clone(fresh), changed)
			what := func(s string) string {
				return s + " (run " + strconv.Itoa(run) + " step " + strconv.Itoa(step) + ")"
			}
			checkRules(t, got, next, what("patched"))
			if eq := slices.Equal(want, next); got.Equal(rs) != eq || rs.Equal(got) != eq {
				t.Fatalf("%s: Equal says %v, want %v", what("patched"), got.Equal(rs), eq)
			}
			if slices.Equal(want, next) && len(fresh) == 0 && !got.same(rs) {
				t.Fatalf("%s: a patch changing nothing made a new list", what("patched"))
			}
			// Every chunk of rs holding no changed peer is in got, shared.
			in := map[*Rule]bool{}
			for _, c := range got.chunks {
				in[&c[0]] = true
			}
			for _, c := range rs.chunks {
				touched := false
				for _, p := range changed {
					if len(rs.chunks) > 0 && &rs.chunks[rs.owner(p)][0] == &c[0] {
						touched = true
					}
				}
				switch {
				case !touched && !in[&c[0]]:
					t.Fatalf("%s: chunk %v holds no changed peer of %v but was copied", what("patched"), c, changed)
				case !touched:
					shared++
				default:
					rebuilt++
				}
			}
			// A list equal to another built anew.
			if other := MakeRules(slices.Clone(next)); !other.Equal(got) || !got.Equal(other) {
				t.Fatalf("%s: not Equal to the same rules built anew", what("patched"))
			}
			if len(next) > 0 {
				// Differing in the last rule's port alone.
				diff := slices.Clone(next)
				diff[len(diff)-1].Port++
				if MakeRules(diff).Equal(got) {
					t.Fatalf("%s: Equal to a list differing in its last rule", what("patched"))
				}
			}
			want, rs = next, got
		}
	}
	if shared == 0 || rebuilt == 0 {
		t.Fatalf("%d chunks shared, %d rebuilt: want some of each", shared, rebuilt)
	}
}
