package agent

import (
	"math"
	"testing"
)

func TestGoMemoryLimit(t *testing.T) {
	const mi = 1 << 20
	for _, c := range []struct {
		limit int64
		maps  uint64
		want  int64
	}{
		{math.MaxInt64, 114 * mi, math.MaxInt64}, // no limit set: none
		{512 * mi, 114 * mi, 398 * mi},           // the maps come off
		{512 * mi, 400 * mi, 256 * mi},           // never below half
		{512 * mi, 1024 * mi, 256 * mi},
		{512 * mi, 0, 512 * mi},
	} {
		if got := goMemoryLimit(c.limit, c.maps); got != c.want {
			t.Errorf("goMemoryLimit(%d, %d) = %d, want %d", c.limit, c.maps, got, c.want)
		}
	}
}
