//go:build race

package policy

// raceEnabled scales the randomized tests down under the race detector.
const raceEnabled = true
