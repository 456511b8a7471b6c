package datapath

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// MapMemory returns the kernel memory each pinned map holds, by name:
// the "memlock" its fdinfo reports (for a preallocated hash its capacity,
// for an LPM trie its entries). BPF memory is charged to the memory
// cgroup of the process that created the map.
func (d *Datapath) MapMemory() (map[string]uint64, error) {
	out := map[string]uint64{}
	for name, m := range d.tcMapsByName() {
		v, err := Memlock(m)
		if err != nil {
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		out[name] = v
	}
	return out, nil
}

// Memlock reads the kernel's memory accounting of a map from the
// "memlock:" line of its fdinfo.
func Memlock(m *ebpf.Map) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "memlock:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("no memlock in fdinfo")
}
