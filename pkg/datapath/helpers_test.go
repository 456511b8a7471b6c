package datapath

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// newTestDatapath opens a Datapath pinned under a unique root and removes
// everything at cleanup. Failing to load is a failure, never a skip.
func newTestDatapath(t testing.TB, opts Options) *Datapath {
	t.Helper()
	if opts.BPFFSRoot == "" {
		opts.BPFFSRoot = testRoot(t)
	}
	d, err := Open(opts)
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return d
}

func testRoot(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	root := filepath.Join("/sys/fs/bpf", "zt-test-"+hex.EncodeToString(b[:]))
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	return root
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// ---- packet crafting ----

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoSCTP   = 132

	tcpSYN = 0x02
	tcpACK = 0x10
)

type pkt struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	tcpFlags     uint8
	icmpType     uint8 // 0 = echo request of the family
	icmpID       uint16
	hopLimit     uint8
	fragOffset   uint16 // IPv4 fragment offset in 8-byte units
	truncL4      int    // bytes of the L4 header to keep (0 = all)
	v6ext        []uint8
}

func (p pkt) l4() []byte {
	var b []byte
	switch p.proto {
	case protoTCP:
		b = make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		b[12] = 5 << 4
		b[13] = p.tcpFlags
	case protoUDP:
		b = make([]byte, 8+4)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	case protoSCTP:
		b = make([]byte, 12)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
	case protoICMP, protoICMPv6:
		b = make([]byte, 8)
		t := p.icmpType
		if t == 0 && p.proto == protoICMP {
			t = 8
		} else if t == 0 {
			t = 128
		}
		if t == 255 { // IPv4 echo reply
			t = 0
		}
		b[0] = t
		binary.BigEndian.PutUint16(b[4:], p.icmpID)
	default:
		b = make([]byte, 8)
	}
	if p.truncL4 > 0 {
		b = b[:p.truncL4]
	}
	return b
}

func (p pkt) bytes() []byte {
	l4 := p.l4()
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{0x02, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{0x02, 0, 0, 0, 0, 2})
	if p.src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(ip[6:], p.fragOffset&0x1fff)
		ip[8] = 64
		if p.hopLimit != 0 {
			ip[8] = p.hopLimit
		}
		ip[9] = p.proto
		s, d := p.src.As4(), p.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		if p.fragOffset != 0 {
			l4 = make([]byte, 8) // payload only
		}
		return append(append(eth, ip...), l4...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	next := p.proto
	var ext []byte
	// Chain of 8-byte extension headers (hop-by-hop, dest opts, ...).
	for i := len(p.v6ext) - 1; i >= 0; i-- {
		h := make([]byte, 8)
		h[0] = next
		next = p.v6ext[i]
		ext = append(h, ext...)
	}
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
	ip[6] = next
	ip[7] = 64
	if p.hopLimit != 0 {
		ip[7] = p.hopLimit
	}
	s, d := p.src.As16(), p.dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(append(eth, ip...), ext...), l4...)
}

func arpFrame() []byte {
	b := make([]byte, 14+28)
	for i := 0; i < 6; i++ {
		b[i] = 0xff
	}
	binary.BigEndian.PutUint16(b[12:], 0x0806)
	return b
}

func isErrNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
