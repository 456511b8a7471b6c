package datapath

import (
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
)

// FlowEventSize is the size of one ring buffer record.
const FlowEventSize = int(unsafe.Sizeof(FlowEvent{}))

// NewEventReader opens a reader on the events ring buffer. The caller
// closes it; it stays valid after Datapath.Close.
func (d *Datapath) NewEventReader() (*ringbuf.Reader, error) {
	r, err := ringbuf.NewReader(d.tc.Events)
	if err != nil {
		return nil, fmt.Errorf("open events reader: %w", err)
	}
	return r, nil
}

// DecodeEvent decodes one ring buffer record. The record is the C struct
// in the kernel's (native) byte order, and bpf2go lays FlowEvent out
// exactly as C does (explicit padding fields), so decoding is one copy of
// its bytes: no reflection on the path of every event (a flood of them
// must stay cheap). TestDecodeEvent checks it against encoding/binary.
func DecodeEvent(raw []byte) (FlowEvent, error) {
	var e FlowEvent
	if len(raw) < FlowEventSize {
		return e, fmt.Errorf("flow event: %d bytes, want %d", len(raw), FlowEventSize)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&e)), FlowEventSize), raw)
	return e, nil
}
