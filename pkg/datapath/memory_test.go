package datapath

import (
	"slices"
	"testing"
)

// TestMapMemory: a preallocated hash holds its capacity from the start,
// a trie only what its entries take.
func TestMapMemory(t *testing.T) {
	d := newTestDatapath(t, Options{MapSizes: MapSizes{IPCache: 4096, Policy: 8192}})
	mem := must[map[string]uint64](t)(d.MapMemory())
	for name, min := range map[string]uint64{"ipcache": 4096 * 72, "policy": 8192 * 64} {
		if mem[name] < min {
			t.Errorf("%s holds %d B, want at least %d for a preallocated hash", name, mem[name], min)
		}
	}
	if mem["ipcidr"] != 0 {
		t.Errorf("empty ipcidr trie holds %d B", mem["ipcidr"])
	}
	if len(mem) != len(d.tcMapsByName()) {
		t.Errorf("%d maps reported, want %d", len(mem), len(d.tcMapsByName()))
	}
}

// TestMapMemoryDefaults logs what the maps take at the default sizes (the
// figure deploy/README.md quotes): go test -v -run TestMapMemoryDefaults.
func TestMapMemoryDefaults(t *testing.T) {
	d := newTestDatapath(t, Options{})
	mem := must[map[string]uint64](t)(d.MapMemory())
	var total uint64
	names := make([]string, 0, len(mem))
	for name, v := range mem {
		total += v
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t.Logf("%-10s %6.1f MiB (max_entries %d)", name, float64(mem[name])/(1<<20), d.tcMapsByName()[name].MaxEntries())
	}
	t.Logf("total      %6.1f MiB", float64(total)/(1<<20))
	if total == 0 {
		t.Fatal("no map memory reported")
	}
}
