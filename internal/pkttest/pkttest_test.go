package pkttest

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
	"testing"
)

func TestFrames(t *testing.T) {
	v4s, v4d := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	v6s, v6d := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	for _, fam := range []struct {
		name     string
		src, dst netip.Addr
		l3       int
		etype    uint16
	}{{"v4", v4s, v4d, 20, 0x0800}, {"v6", v6s, v6d, 40, 0x86dd}} {
		for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP} {
			for _, p := range []Packet{First(fam.src, fam.dst, proto, 40000, 8080), First(fam.src, fam.dst, proto, 40000, 8080).Reply()} {
				f := p.Frame()
				name := fam.name + " " + p.String()
				if got := binary.BigEndian.Uint16(f[12:]); got != fam.etype {
					t.Fatalf("%s: ethertype %#x", name, got)
				}
				ip := f[14 : 14+fam.l3]
				l4 := f[14+fam.l3:]
				var gotProto uint8
				var src, dst netip.Addr
				if fam.l3 == 20 {
					if Checksum(ip, 0) != 0 {
						t.Errorf("%s: bad IPv4 header checksum", name)
					}
					if int(binary.BigEndian.Uint16(ip[2:])) != len(f)-14 {
						t.Errorf("%s: IPv4 total length %d, frame %d", name, binary.BigEndian.Uint16(ip[2:]), len(f))
					}
					gotProto = ip[9]
					src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
				} else {
					if int(binary.BigEndian.Uint16(ip[4:])) != len(l4) {
						t.Errorf("%s: IPv6 payload length %d, l4 %d", name, binary.BigEndian.Uint16(ip[4:]), len(l4))
					}
					gotProto = ip[6]
					src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
				}
				if src != p.Src || dst != p.Dst {
					t.Errorf("%s: addresses %s > %s", name, src, dst)
				}
				if gotProto != p.Proto {
					t.Errorf("%s: protocol %d, want %d", name, gotProto, p.Proto)
				}
				switch p.Proto {
				case ProtoTCP, ProtoUDP, ProtoICMPv6:
					if PseudoChecksum(src, dst, p.Proto, l4) != 0 {
						t.Errorf("%s: bad L4 checksum", name)
					}
				case ProtoICMP:
					if Checksum(l4, 0) != 0 {
						t.Errorf("%s: bad ICMP checksum", name)
					}
				case ProtoSCTP:
					want := binary.LittleEndian.Uint32(l4[8:])
					c := append([]byte(nil), l4...)
					binary.LittleEndian.PutUint32(c[8:], 0)
					if crc32.Checksum(c, crc32.MakeTable(crc32.Castagnoli)) != want {
						t.Errorf("%s: bad SCTP CRC32c", name)
					}
				}
				if p.Proto == ProtoTCP || p.Proto == ProtoUDP || p.Proto == ProtoSCTP {
					if sp, dp := binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:]); sp != p.SrcPort || dp != p.DstPort {
						t.Errorf("%s: ports %d > %d", name, sp, dp)
					}
				}
			}
		}
	}
}

func TestFirstAndReply(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	syn := First(a, b, ProtoTCP, 1, 2)
	if syn.TCPFlags != TCPSyn || syn.Reply().TCPFlags != TCPSyn|TCPAck || syn.Reply().Reply().TCPFlags != TCPAck {
		t.Errorf("tcp flags: %#x %#x", syn.TCPFlags, syn.Reply().TCPFlags)
	}
	r := syn.Reply()
	if r.Src != b || r.Dst != a || r.SrcPort != 2 || r.DstPort != 1 {
		t.Errorf("reply %s", r)
	}
	if p := First(a, b, ProtoICMPv6, 7, 9); p.Proto != ProtoICMP || p.ICMPType != ICMPEchoRequest || p.ICMPID != 7 || p.Reply().ICMPType != ICMPEchoReply {
		t.Errorf("icmp v4: %+v", p)
	}
	a6, b6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	if p := First(a6, b6, ProtoICMP, 7, 9); p.Proto != ProtoICMPv6 || p.ICMPType != ICMPv6EchoRequest || p.Reply().ICMPType != ICMPv6EchoReply {
		t.Errorf("icmp v6: %+v", p)
	}
	if p := First(a, b, ProtoSCTP, 1, 2); p.SCTPChunk != SCTPInit || p.Reply().SCTPChunk != SCTPInitAck {
		t.Errorf("sctp: %+v", p)
	}
}
