package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/pkg/datapath"
)

// udpSink receives sequence-numbered datagrams (4 bytes flow id, 4 bytes
// sequence number) on a pod's port and records which arrived.
type udpSink struct {
	pc  net.PacketConn
	mu  sync.Mutex
	got map[uint32]map[uint32]int // flow -> seq -> copies
	src map[uint32]netip.Addr     // flow -> last source address
}

func newUDPSink(t testing.TB, p *pod, port int) *udpSink {
	t.Helper()
	s := &udpSink{got: map[uint32]map[uint32]int{}, src: map[uint32]netip.Addr{}}
	mustNS(t, p.ns, func() (err error) {
		s.pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if uc, ok := s.pc.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(4 << 20)
	}
	t.Cleanup(func() { s.pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := s.pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			if n < 8 {
				continue
			}
			flow, seq := binary.BigEndian.Uint32(buf), binary.BigEndian.Uint32(buf[4:])
			s.mu.Lock()
			if s.got[flow] == nil {
				s.got[flow] = map[uint32]int{}
			}
			s.got[flow][seq]++
			if ua, ok := from.(*net.UDPAddr); ok {
				s.src[flow] = ua.AddrPort().Addr().Unmap()
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// received returns how many distinct sequence numbers of flow arrived and
// the missing ones below sent (as ranges).
func (s *udpSink) received(flow uint32, sent int) (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seqs := s.got[flow]
	var missing []string
	for i := 0; i < sent; i++ {
		if seqs[uint32(i)] > 0 {
			continue
		}
		j := i
		for j+1 < sent && seqs[uint32(j+1)] == 0 {
			j++
		}
		if i == j {
			missing = append(missing, fmt.Sprint(i))
		} else {
			missing = append(missing, fmt.Sprintf("%d-%d", i, j))
		}
		i = j
	}
	return len(seqs), strings.Join(missing, ",")
}

// udpStream sends sequence-numbered datagrams of one flow every interval,
// at most max of them, until stopped.
type udpStream struct {
	name string
	flow uint32
	sent atomic.Int64
	errs atomic.Int64
	last atomic.Value // error
	done chan struct{}
	stop chan struct{}
}

func startStream(t testing.TB, name string, from *pod, dst netip.AddrPort, flow uint32, interval time.Duration, maxCount int) *udpStream {
	t.Helper()
	c, err := from.dial("udp", dst, time.Second)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	s := &udpStream{name: name, flow: flow, done: make(chan struct{}), stop: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer c.Close()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		buf := make([]byte, 64)
		binary.BigEndian.PutUint32(buf, flow)
		for seq := 0; seq < maxCount; seq++ {
			binary.BigEndian.PutUint32(buf[4:], uint32(s.sent.Load()))
			if _, err := c.Write(buf); err != nil {
				s.errs.Add(1)
				s.last.Store(err)
			} else {
				s.sent.Add(1)
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(s.halt)
	return s
}

func (s *udpStream) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// tcpSink accepts TCP connections on a pod's port and records, for all of
// them, the bytes read, when data last arrived and the send time stamped
// in the last complete record (tcpStream writes records of chunk bytes
// starting with their CLOCK_MONOTONIC send time), which does not depend on
// when the reader got to run.
type tcpSink struct {
	bytes    atomic.Int64
	lastRead atomic.Int64  // unix nanoseconds
	lastSent atomic.Uint64 // monotonic ns, latest record stamp delivered
}

func newTCPSink(t testing.TB, p *pod, port, chunk int) *tcpSink {
	t.Helper()
	s := &tcpSink{}
	var ln net.Listener
	mustNS(t, p.ns, func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				buf := make([]byte, 64<<10)
				off := 0 // bytes of the current record seen
				var stamp [8]byte
				for {
					_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
					n, err := c.Read(buf)
					if n > 0 {
						s.lastRead.Store(time.Now().UnixNano())
						s.bytes.Add(int64(n))
						for _, b := range buf[:n] {
							if off < 8 {
								stamp[off] = b
							}
							off++
							if off == chunk {
								off = 0
								if v := binary.NativeEndian.Uint64(stamp[:]); v > s.lastSent.Load() {
									s.lastSent.Store(v)
								}
							}
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

// tcpStream writes chunk bytes every interval on one connection.
type tcpStream struct {
	conn *net.TCPConn
	done chan struct{}
	stop chan struct{}
}

func startTCPStream(t testing.TB, from *pod, dst netip.AddrPort, chunk int, interval time.Duration, maxCount int) *tcpStream {
	t.Helper()
	c, err := from.dial("tcp", dst, 2*time.Second)
	if err != nil {
		t.Fatalf("tcp stream to %s: %v", dst, err)
	}
	s := &tcpStream{conn: c.(*net.TCPConn), done: make(chan struct{}), stop: make(chan struct{})}
	_ = s.conn.SetNoDelay(true)
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		buf := make([]byte, chunk)
		for range maxCount {
			binary.NativeEndian.PutUint64(buf, monotonic())
			_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = s.conn.Write(buf)
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { s.halt(); s.conn.Close() })
	return s
}

func (s *tcpStream) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// retransmits returns the connection's total retransmitted segments.
func (s *tcpStream) retransmits() (uint32, error) {
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, err
	}
	if ierr != nil {
		return 0, ierr
	}
	return info.Total_retrans, nil
}

// eventCollector drains the events ring buffer in the background.
type eventCollector struct {
	rd   *ringbuf.Reader
	mu   sync.Mutex
	evs  []datapath.FlowEvent
	done chan struct{}
}

func collectEvents(t testing.TB, dp *datapath.Datapath) *eventCollector {
	t.Helper()
	rd, err := dp.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	ec := &eventCollector{rd: rd, done: make(chan struct{})}
	go func() {
		defer close(ec.done)
		for {
			rec, err := rd.Read()
			if err != nil {
				if errors.Is(err, ringbuf.ErrClosed) {
					return
				}
				continue
			}
			ev, err := datapath.DecodeEvent(rec.RawSample)
			if err != nil {
				continue
			}
			ec.mu.Lock()
			ec.evs = append(ec.evs, ev)
			ec.mu.Unlock()
		}
	}()
	t.Cleanup(ec.close)
	return ec
}

func (ec *eventCollector) close() {
	ec.rd.Close()
	<-ec.done
}

// wait returns the first event matching fn within timeout.
func (ec *eventCollector) wait(timeout time.Duration, fn func(*datapath.FlowEvent) bool) (datapath.FlowEvent, bool) {
	deadline := time.Now().Add(timeout)
	for {
		ec.mu.Lock()
		i := slices.IndexFunc(ec.evs, func(e datapath.FlowEvent) bool { return fn(&e) })
		var ev datapath.FlowEvent
		if i >= 0 {
			ev = ec.evs[i]
		}
		ec.mu.Unlock()
		if i >= 0 {
			return ev, true
		}
		if time.Now().After(deadline) {
			return ev, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (ec *eventCollector) all() []datapath.FlowEvent {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	return slices.Clone(ec.evs)
}
