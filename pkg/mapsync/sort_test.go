package mapsync

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSortByRank: the radix sort orders as a stable comparison sort does,
// for ranks that share some bytes and differ in others, with duplicates.
func TestSortByRank(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, w := range []int{1, 2, 3} {
		for _, n := range []int{0, 1, 2, 7, 300, 5000} {
			ranks := make([]uint64, n*w)
			for i := range ranks {
				switch rng.IntN(3) {
				case 0:
					ranks[i] = 0x0102030405060708 // shared
				case 1:
					ranks[i] = rng.Uint64()
				default:
					ranks[i] = 0x0102030400000000 | uint64(rng.IntN(4))<<16 | uint64(rng.IntN(4))
				}
			}
			want := make([]int32, n)
			for i := range want {
				want[i] = int32(i)
			}
			slices.SortStableFunc(want, func(a, b int32) int {
				return slices.Compare(ranks[int(a)*w:int(a)*w+w], ranks[int(b)*w:int(b)*w+w])
			})
			if got := sortByRank(ranks, w); !slices.Equal(got, want) {
				t.Fatalf("w=%d n=%d: order differs from a stable sort", w, n)
			}
		}
	}
}
