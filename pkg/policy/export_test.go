package policy

import "github.com/ztnet/zt/pkg/identity"

// Hooks for the tests of package policy_test: those that use
// internal/benchworld, which imports this package, so they cannot be in it.

var (
	TestingSeed           = testSeed
	CheckIncrementalState = checkIncrementalState
	CanonicalEndpoints    = canonicalEndpoints
	LineDiff              = lineDiff
)

// RaceEnabled is whether the race detector is on (the randomized tests
// scale down under it).
const RaceEnabled = raceEnabled

// PatchMaxChanged returns patchMaxChanged.
func PatchMaxChanged() int { return patchMaxChanged }

// SetPatchMaxChanged sets patchMaxChanged.
func SetPatchMaxChanged(n int) { patchMaxChanged = n }

// Selections returns how many peer selections the compiler keeps.
func (c *Compiler) Selections() int { return len(c.selections) }

// SelectionUsers returns how many rules use the selection of rule i of
// direction d of policy pk, and that selection's identities (0, nil when
// there is no such rule).
func (c *Compiler) SelectionUsers(pk PolicyKey, d Direction, i int) (int, []identity.ID) {
	ps := c.policies[pk]
	if ps == nil || i >= len(ps.peers[d]) {
		return 0, nil
	}
	s := ps.peers[d][i]
	return s.refs, s.list()
}

// RelabelEveryPod makes the next Sync recompute the identity of every pod,
// as any change of what policies reference once did (the baseline of
// BenchmarkReferenceChange).
func (c *Compiler) RelabelEveryPod() { c.pending.all, c.needRelabel = true, true }

// SetRuleChunk sets the size Rules cuts lists into and returns the old
// one. A size of at least every list's length holds each list in one
// chunk, which a patch copies whole.
func SetRuleChunk(n int) (old int) {
	old, ruleChunk = ruleChunk, n
	return old
}
