package mapsync

// sortByRank returns the order of n ranks of w words each (rank i is
// ranks[i*w : i*w+w], most significant word first), ascending and stable.
// It is an LSD radix sort by bytes that skips the bytes every rank shares:
// the keys of one update differ in a few bytes (identities, addresses),
// so a full load of 100k entries takes a few passes instead of a
// comparison sort's millions of compares.
func sortByRank(ranks []uint64, w int) []int32 {
	n := len(ranks) / w
	perm := make([]int32, n)
	for i := range perm {
		perm[i] = int32(i)
	}
	if n < 2 {
		return perm
	}
	tmp := make([]int32, n)
	for word := w - 1; word >= 0; word-- {
		and, or := ^uint64(0), uint64(0)
		for i := word; i < len(ranks); i += w {
			and &= ranks[i]
			or |= ranks[i]
		}
		varies := and ^ or
		for shift := uint(0); shift < 64; shift += 8 {
			if (varies>>shift)&0xff == 0 {
				continue
			}
			var count [257]int
			for _, p := range perm {
				count[(ranks[int(p)*w+word]>>shift)&0xff+1]++
			}
			for b := 1; b < len(count); b++ {
				count[b] += count[b-1]
			}
			for _, p := range perm {
				b := (ranks[int(p)*w+word] >> shift) & 0xff
				tmp[count[b]] = p
				count[b]++
			}
			perm, tmp = tmp, perm
		}
	}
	return perm
}
