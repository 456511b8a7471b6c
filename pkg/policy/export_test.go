package policy

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
