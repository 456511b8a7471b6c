package datapath

import (
	"encoding/binary"
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

// DecodeEvent decodes one ring buffer record.
func DecodeEvent(raw []byte) (FlowEvent, error) {
	var e FlowEvent
	if len(raw) < FlowEventSize {
		return e, fmt.Errorf("flow event: %d bytes, want %d", len(raw), FlowEventSize)
	}
	if _, err := binary.Decode(raw[:FlowEventSize], binary.NativeEndian, &e); err != nil {
		return e, fmt.Errorf("flow event: %w", err)
	}
	return e, nil
}
