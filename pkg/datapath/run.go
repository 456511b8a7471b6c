package datapath

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// skbContext is the head of struct __sk_buff up to ifindex (offset 40),
// the one field RunProgram sets: BPF_PROG_RUN then runs the program on
// that interface of the calling thread's network namespace.
type skbContext [11]uint32

// tcActShot is TC_ACT_SHOT, what the programs return to drop.
const tcActShot = 2

// RunProgram runs the tc program of direction dir (zt_to_pod for
// ingress, zt_from_pod for egress) on the Ethernet frame with
// BPF_PROG_RUN, repeat times, as if the frame crossed the host interface
// ifindex of the calling thread's network namespace (1 or less: the
// loopback). The runs are real: counters, conntrack and events change as
// for live packets. It reports whether the last run passed the frame and
// the wall time of the call divided by repeat (a large repeat makes it
// the time of one run in the kernel's loop, with its caches warm).
func (d *Datapath) RunProgram(dir Dir, ifindex int, frame []byte, repeat int) (bool, time.Duration, error) {
	prog := d.tc.ZtFromPod
	if dir == DirIngress {
		prog = d.tc.ZtToPod
	}
	ret, per, err := RunTC(prog, ifindex, frame, repeat)
	if err != nil {
		return false, 0, fmt.Errorf("run program (%s, ifindex %d): %w", dir, ifindex, err)
	}
	return ret != tcActShot, per, nil
}

// RunTC runs any tc program as RunProgram runs zt's, and returns what it
// returned the last time and the wall time per run.
func RunTC(prog *ebpf.Program, ifindex int, frame []byte, repeat int) (uint32, time.Duration, error) {
	if repeat < 1 || repeat > 1<<30 {
		return 0, 0, fmt.Errorf("repeat %d out of range", repeat)
	}
	opts := &ebpf.RunOptions{Data: frame, Repeat: uint32(repeat)}
	if ifindex > 1 {
		var ctx skbContext
		ctx[10] = uint32(ifindex)
		opts.Context = ctx
	}
	start := time.Now()
	ret, err := prog.Run(opts)
	took := time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	return ret, took / time.Duration(repeat), nil
}
