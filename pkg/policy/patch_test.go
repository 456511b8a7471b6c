package policy

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ztnet/zt/pkg/identity"
)

// TestPeerSet checks peerSet's lazily merged sorted list against a plain
// set under random insertions and removals, across merges and spills.
func TestPeerSet(t *testing.T) {
	r := rand.New(rand.NewPCG(testSeed(t), 1))
	for run := range 200 {
		s := newPeerSet()
		want := set[identity.ID]{}
		next := identity.ID(100)
		for step := range 400 {
			switch op := r.IntN(10); {
			case op < 4: // a new identity (numbers grow)
				next += identity.ID(1 + r.IntN(3))
				if got := s.insert(next); !got {
					t.Fatalf("run %d step %d: insert of new %d said present", run, step, next)
				}
				want.add(next)
			case op < 5: // an older number (a hinted one), maybe present
				id := identity.ID(100 + r.IntN(int(next-99)))
				if got := s.insert(id); got == want.has(id) {
					t.Fatalf("run %d step %d: insert(%d)=%v, present=%v", run, step, id, got, want.has(id))
				}
				want.add(id)
			case op < 8:
				id := identity.ID(100 + r.IntN(int(next-99)))
				if got := s.remove(id); got != want.has(id) {
					t.Fatalf("run %d step %d: remove(%d)=%v, present=%v", run, step, id, got, want.has(id))
				}
				want.del(id)
			default:
				if got, w := s.list(), sortedKeys(want, compareID); !slices.Equal(got, w) {
					t.Fatalf("run %d step %d: list %v, want %v", run, step, got, w)
				}
			}
			if s.len() != len(want) || !maps.Equal(s.ids, want) {
				t.Fatalf("run %d step %d: set differs", run, step)
			}
		}
	}
}
