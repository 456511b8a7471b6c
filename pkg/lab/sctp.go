package lab

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// This kernel has no SCTP sockets, so the lab speaks just enough SCTP over
// raw IP sockets (protocol 132) to prove a packet passed both ways: the
// prober sends an INIT, the pod's server answers with an INIT-ACK carrying
// the INIT's initiate tag as its verification tag (RFC 9260 section 5.1).

const (
	ipprotoSCTP      = 132
	sctpChunkInit    = 1
	sctpChunkInitAck = 2
	sctpCommonLen    = 12
	sctpInitLen      = 20 // chunk header + fixed INIT fields
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sctpPacket is the part of a packet the lab reads.
type sctpPacket struct {
	SrcPort, DstPort uint16
	VTag             uint32
	Chunk            uint8  // type of the first chunk
	InitTag          uint32 // initiate tag of an INIT or INIT-ACK
}

// sctpChecksum fills the CRC32c of an SCTP packet (little-endian on the
// wire, as Linux writes it).
func sctpChecksum(b []byte) {
	binary.LittleEndian.PutUint32(b[8:12], 0)
	binary.LittleEndian.PutUint32(b[8:12], crc32.Checksum(b, castagnoli))
}

func sctpVerify(b []byte) bool {
	want := binary.LittleEndian.Uint32(b[8:12])
	c := append([]byte(nil), b...)
	sctpChecksum(c)
	return binary.LittleEndian.Uint32(c[8:12]) == want
}

// buildInit builds an INIT from sport to dport with initiate tag tag.
func buildInit(sport, dport uint16, tag uint32) []byte {
	return buildInitChunk(sctpChunkInit, sport, dport, 0, tag, nil)
}

// buildInitAck answers an INIT: verification tag = the INIT's initiate tag.
func buildInitAck(in sctpPacket, tag uint32) []byte {
	cookie := []byte("ztlab-cookie")
	param := make([]byte, 4+len(cookie))
	binary.BigEndian.PutUint16(param[0:], 7) // State Cookie
	binary.BigEndian.PutUint16(param[2:], uint16(len(param)))
	copy(param[4:], cookie)
	return buildInitChunk(sctpChunkInitAck, in.DstPort, in.SrcPort, in.InitTag, tag, param)
}

func buildInitChunk(typ uint8, sport, dport uint16, vtag, initTag uint32, params []byte) []byte {
	pad := (4 - len(params)%4) % 4
	b := make([]byte, sctpCommonLen+sctpInitLen+len(params)+pad)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], vtag)
	c := b[sctpCommonLen:]
	c[0] = typ
	binary.BigEndian.PutUint16(c[2:], uint16(sctpInitLen+len(params)))
	binary.BigEndian.PutUint32(c[4:], initTag)
	binary.BigEndian.PutUint32(c[8:], 65536) // a_rwnd
	binary.BigEndian.PutUint16(c[12:], 1)    // outbound streams
	binary.BigEndian.PutUint16(c[14:], 1)    // inbound streams
	binary.BigEndian.PutUint32(c[16:], initTag)
	copy(c[sctpInitLen:], params)
	sctpChecksum(b)
	return b
}

var errNotSCTP = errors.New("not an SCTP INIT or INIT-ACK")

// parseSCTP reads the common header and, for INIT and INIT-ACK, the
// initiate tag. b starts at the SCTP header.
func parseSCTP(b []byte) (sctpPacket, error) {
	var p sctpPacket
	if len(b) < sctpCommonLen+sctpInitLen || !sctpVerify(b) {
		return p, errNotSCTP
	}
	p.SrcPort = binary.BigEndian.Uint16(b[0:])
	p.DstPort = binary.BigEndian.Uint16(b[2:])
	p.VTag = binary.BigEndian.Uint32(b[4:])
	p.Chunk = b[sctpCommonLen]
	if p.Chunk != sctpChunkInit && p.Chunk != sctpChunkInitAck {
		return p, errNotSCTP
	}
	p.InitTag = binary.BigEndian.Uint32(b[sctpCommonLen+4:])
	return p, nil
}
