package datapath

import "testing"

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
