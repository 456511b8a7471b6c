// Package pkttest crafts Ethernet frames (IPv4 or IPv6 with TCP, UDP, SCTP
// or ICMP/ICMPv6) for tests that run the datapath's programs with
// BPF_PROG_RUN, and for ztlab's forged packets (`ztlab try --spoof-as`).
// Frames are well formed: IPv4 header checksum, TCP/UDP/ICMP
// checksums over the pseudo header and the SCTP CRC32c are filled in, so a
// frame is what a real stack would put on the wire.
package pkttest

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/netip"
)

// IANA protocol numbers.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// TCP flags.
const (
	TCPFin uint8 = 0x01
	TCPSyn uint8 = 0x02
	TCPRst uint8 = 0x04
	TCPPsh uint8 = 0x08
	TCPAck uint8 = 0x10
)

// ICMP and ICMPv6 echo types.
const (
	ICMPEchoReply     uint8 = 0
	ICMPEchoRequest   uint8 = 8
	ICMPv6EchoRequest uint8 = 128
	ICMPv6EchoReply   uint8 = 129
)

// SCTP chunk types.
const (
	SCTPInit    uint8 = 1
	SCTPInitAck uint8 = 2
	SCTPData    uint8 = 0
)

// Packet describes one frame. Src and Dst must be of the same family; the
// L4 header is chosen by Proto. For ICMP (ProtoICMP with IPv4, ProtoICMPv6
// with IPv6) ICMPType is written as is (0 is an IPv4 echo reply) and
// SrcPort/DstPort are ignored.
type Packet struct {
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16
	// TCPFlags for TCP.
	TCPFlags uint8
	// SCTPChunk is the type of the single chunk of an SCTP packet.
	SCTPChunk uint8
	// ICMPType, ICMPCode, ICMPID and ICMPSeq for ICMP/ICMPv6.
	ICMPType, ICMPCode uint8
	ICMPID, ICMPSeq    uint16
	// HopLimit is the IPv4 TTL or IPv6 hop limit; 0 means 64.
	HopLimit uint8
	// Payload follows the L4 header.
	Payload []byte
	// SrcMAC and DstMAC; zero values use fixed locally administered
	// addresses.
	SrcMAC, DstMAC [6]byte
}

// ICMPProto returns the ICMP protocol number of a's family.
func ICMPProto(a netip.Addr) uint8 {
	if a.Is4() {
		return ProtoICMP
	}
	return ProtoICMPv6
}

// First returns the first packet of a new flow from src to dst: a TCP SYN,
// a UDP datagram, an SCTP INIT or an ICMP echo request (with id sport; pass
// any of ProtoICMP/ProtoICMPv6, the family decides). Ports are ignored for
// ICMP.
func First(src, dst netip.Addr, proto uint8, sport, dport uint16) Packet {
	p := Packet{Src: src, Dst: dst, Proto: proto, SrcPort: sport, DstPort: dport}
	switch proto {
	case ProtoTCP:
		p.TCPFlags = TCPSyn
	case ProtoUDP:
		p.Payload = []byte("zt-probe")
	case ProtoSCTP:
		p.SCTPChunk = SCTPInit
	case ProtoICMP, ProtoICMPv6:
		p.Proto = ICMPProto(src)
		p.ICMPType = ICMPEchoRequest
		if p.Proto == ProtoICMPv6 {
			p.ICMPType = ICMPv6EchoRequest
		}
		p.ICMPID, p.ICMPSeq = sport, 1
		p.SrcPort, p.DstPort = 0, 0
	}
	return p
}

// Reply returns the answer to p: addresses and ports swapped, a SYN-ACK for
// a SYN (an ACK otherwise), an INIT-ACK for an INIT, an echo reply for an
// echo request.
func (p Packet) Reply() Packet {
	r := p
	r.Src, r.Dst = p.Dst, p.Src
	r.SrcPort, r.DstPort = p.DstPort, p.SrcPort
	r.SrcMAC, r.DstMAC = p.DstMAC, p.SrcMAC
	switch p.Proto {
	case ProtoTCP:
		r.TCPFlags = TCPAck
		if p.TCPFlags&(TCPSyn|TCPAck) == TCPSyn {
			r.TCPFlags = TCPSyn | TCPAck
		}
	case ProtoSCTP:
		if p.SCTPChunk == SCTPInit {
			r.SCTPChunk = SCTPInitAck
		}
	case ProtoICMP:
		if p.ICMPType == ICMPEchoRequest {
			r.ICMPType = ICMPEchoReply
		}
	case ProtoICMPv6:
		if p.ICMPType == ICMPv6EchoRequest {
			r.ICMPType = ICMPv6EchoReply
		}
	}
	return r
}

func (p Packet) String() string {
	switch p.Proto {
	case ProtoICMP, ProtoICMPv6:
		return fmt.Sprintf("icmp %s > %s type %d id %d", p.Src, p.Dst, p.ICMPType, p.ICMPID)
	case ProtoTCP:
		return fmt.Sprintf("tcp %s > %s flags %#02x",
			netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort), p.TCPFlags)
	case ProtoSCTP:
		return fmt.Sprintf("sctp %s > %s chunk %d",
			netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort), p.SCTPChunk)
	}
	return fmt.Sprintf("proto %d %s > %s", p.Proto,
		netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
}

var (
	defaultDstMAC = [6]byte{0x02, 0, 0, 0, 0, 1}
	defaultSrcMAC = [6]byte{0x02, 0, 0, 0, 0, 2}
)

// Frame returns the Ethernet frame of p. It panics when Src and Dst are
// not both valid addresses of one family (a bug in the test).
func (p Packet) Frame() []byte {
	src, dst := p.Src.Unmap(), p.Dst.Unmap()
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		panic(fmt.Sprintf("pkttest: addresses %s and %s are not of one family", p.Src, p.Dst))
	}
	l4 := p.l4(src, dst)
	eth := make([]byte, 14, 14+40+len(l4))
	dmac, smac := p.DstMAC, p.SrcMAC
	if dmac == ([6]byte{}) {
		dmac = defaultDstMAC
	}
	if smac == ([6]byte{}) {
		smac = defaultSrcMAC
	}
	copy(eth[0:6], dmac[:])
	copy(eth[6:12], smac[:])
	hop := p.HopLimit
	if hop == 0 {
		hop = 64
	}
	if src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		ip[8] = hop
		ip[9] = p.Proto
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], Checksum(ip, 0))
		return append(append(eth, ip...), l4...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	ip[6] = p.Proto
	ip[7] = hop
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(eth, ip...), l4...)
}

func (p Packet) l4(src, dst netip.Addr) []byte {
	var b []byte
	ck := -1 // offset of an Internet checksum over the pseudo header
	switch p.Proto {
	case ProtoTCP:
		b = make([]byte, 20, 20+len(p.Payload))
		binary.BigEndian.PutUint16(b[0:], p.SrcPort)
		binary.BigEndian.PutUint16(b[2:], p.DstPort)
		binary.BigEndian.PutUint32(b[4:], 1000) // seq
		if p.TCPFlags&TCPAck != 0 {
			binary.BigEndian.PutUint32(b[8:], 2000)
		}
		b[12] = 5 << 4
		b[13] = p.TCPFlags
		binary.BigEndian.PutUint16(b[14:], 64240) // window
		ck = 16
	case ProtoUDP:
		b = make([]byte, 8, 8+len(p.Payload))
		binary.BigEndian.PutUint16(b[0:], p.SrcPort)
		binary.BigEndian.PutUint16(b[2:], p.DstPort)
		binary.BigEndian.PutUint16(b[4:], uint16(8+len(p.Payload)))
		ck = 6
	case ProtoSCTP:
		// common header (12) + one chunk: INIT/INIT-ACK carry a 16-byte
		// fixed part, other chunks just their 4-byte header.
		chunkLen := 4
		if p.SCTPChunk == SCTPInit || p.SCTPChunk == SCTPInitAck {
			chunkLen = 20
		}
		b = make([]byte, 12+chunkLen, 12+chunkLen+len(p.Payload))
		binary.BigEndian.PutUint16(b[0:], p.SrcPort)
		binary.BigEndian.PutUint16(b[2:], p.DstPort)
		if p.SCTPChunk != SCTPInit { // an INIT carries verification tag 0
			binary.BigEndian.PutUint32(b[4:], 0x5a7e5a7e)
		}
		c := b[12:]
		c[0] = p.SCTPChunk
		binary.BigEndian.PutUint16(c[2:], uint16(chunkLen))
		if chunkLen == 20 {
			binary.BigEndian.PutUint32(c[4:], 0x1badcafe) // initiate tag
			binary.BigEndian.PutUint32(c[8:], 65536)      // a_rwnd
			binary.BigEndian.PutUint16(c[12:], 1)         // outbound streams
			binary.BigEndian.PutUint16(c[14:], 1)         // inbound streams
			binary.BigEndian.PutUint32(c[16:], 1)         // initial TSN
		}
	case ProtoICMP, ProtoICMPv6:
		b = make([]byte, 8, 8+len(p.Payload))
		b[0], b[1] = p.ICMPType, p.ICMPCode
		binary.BigEndian.PutUint16(b[4:], p.ICMPID)
		binary.BigEndian.PutUint16(b[6:], p.ICMPSeq)
		if p.Proto == ProtoICMPv6 {
			ck = 2
		}
	default:
		b = make([]byte, 0, len(p.Payload))
	}
	b = append(b, p.Payload...)
	switch {
	case p.Proto == ProtoSCTP:
		binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
	case p.Proto == ProtoICMP:
		binary.BigEndian.PutUint16(b[2:], Checksum(b, 0))
	case ck >= 0:
		sum := Checksum(b, pseudoSum(src, dst, p.Proto, len(b)))
		if sum == 0 && p.Proto == ProtoUDP {
			sum = 0xffff
		}
		binary.BigEndian.PutUint16(b[ck:], sum)
	}
	return b
}

// pseudoSum is the one's complement partial sum of the pseudo header.
func pseudoSum(src, dst netip.Addr, proto uint8, n int) uint32 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		add(s[:])
		add(d[:])
	} else {
		s, d := src.As16(), dst.As16()
		add(s[:])
		add(d[:])
	}
	return sum + uint32(proto) + uint32(n)
}

// Checksum returns the Internet checksum (RFC 1071) of b, starting from the
// partial sum initial. A buffer holding a correct checksum sums to 0.
func Checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// PseudoChecksum verifies an L4 segment's Internet checksum over the
// pseudo header: it returns 0 for a correct TCP, UDP or ICMPv6 segment.
func PseudoChecksum(src, dst netip.Addr, proto uint8, l4 []byte) uint16 {
	return Checksum(l4, pseudoSum(src, dst, proto, len(l4)))
}
