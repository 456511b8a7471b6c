package datapath

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestDecodeEvent: the one-copy decode gives what encoding/binary's
// field-by-field decode of the same bytes gives, for random records, and
// refuses a short one.
func TestDecodeEvent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		raw := make([]byte, FlowEventSize+r.IntN(8))
		for i := range raw {
			raw[i] = byte(r.Uint32())
		}
		var want FlowEvent
		if _, err := binary.Decode(raw[:FlowEventSize], binary.NativeEndian, &want); err != nil {
			t.Fatal(err)
		}
		got, err := DecodeEvent(raw)
		if err != nil {
			t.Fatal(err)
		}
		// Padding fields are skipped by encoding/binary: compare what
		// both re-encode to.
		a, _ := binary.Append(nil, binary.NativeEndian, want)
		b, _ := binary.Append(nil, binary.NativeEndian, got)
		if string(a) != string(b) {
			t.Fatalf("decode of % x:\n got %+v\nwant %+v", raw, got, want)
		}
		if got.TsNs != want.TsNs || got.Ifindex != want.Ifindex || got.SrcAddr() != want.SrcAddr() || got.DstPort() != want.DstPort() {
			t.Fatalf("fields differ: %+v vs %+v", got, want)
		}
	}
	if _, err := DecodeEvent(make([]byte, FlowEventSize-1)); err == nil {
		t.Error("a short record decoded")
	}
}
