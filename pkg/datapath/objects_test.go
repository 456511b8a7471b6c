package datapath

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// TestAtomicsOnlyOnTheStack: no program makes an atomic operation on map
// memory, polgen's above all (zt_abi.h, "Verdict cache"): an atomic takes
// its cache line for writing, from every CPU that reads it. The fully
// ordered read of the generation is a plain read and a fetching atomic on
// a word of the program's stack, which both tc programs must still have.
func TestAtomicsOnlyOnTheStack(t *testing.T) {
	fenced := map[string]bool{"zt_to_pod": false, "zt_from_pod": false}
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){
		"tc": loadZtTc, "sock": loadZtSock, "nf": loadZtNf,
	} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		for pn, p := range spec.Programs {
			for i, ins := range p.Instructions {
				op := ins.OpCode.AtomicOp()
				if op == asm.InvalidAtomic {
					continue
				}
				if ins.Dst != asm.R10 {
					t.Errorf("%s/%s: instruction %d is an atomic on memory at %s, not on the stack: %v",
						name, pn, i, ins.Dst, ins)
					continue
				}
				if _, ok := fenced[pn]; ok && (op == asm.FetchAdd || op == asm.FetchOr) {
					fenced[pn] = true
				}
			}
		}
	}
	for pn, ok := range fenced {
		if !ok {
			t.Errorf("%s: no fetching atomic on the stack: the read of polgen is not ordered", pn)
		}
	}
}
