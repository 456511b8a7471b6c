package datapath

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Prefix lengths of policy keys (bits after the prefixlen field).
const (
	policyPrefixAny   = 72 // ep_id, peer_id, dir
	policyPrefixProto = 80 // + protocol
	policyPrefixFull  = 96 // + 16 port bits
)

// PortRule is one allowed (or denied) peer/protocol/port range of an
// endpoint, the unit pkg/mapsync writes. Proto 0 means any protocol (then
// ports must be 0); Port 0 means any port; EndPort 0 means just Port.
type PortRule struct {
	EndpointID uint32
	Dir        Dir
	Peer       Identity // IdentityAny for "any peer"
	Proto      uint8
	Port       uint16
	EndPort    uint16
}

// PolicyKeys returns the minimal set of policy keys covering r: one key for
// any-protocol and any-port rules, and for a port range the aligned
// power-of-two blocks that tile [Port, EndPort] exactly (at most 30 keys).
func PolicyKeys(r PortRule) ([]PolicyKey, error) {
	base := PolicyKey{EpId: r.EndpointID, PeerId: r.Peer, Dir: r.Dir, Proto: r.Proto}
	if r.Dir >= dirMax {
		return nil, fmt.Errorf("policy rule: invalid direction %d", r.Dir)
	}
	if r.Proto == 0 {
		if r.Port != 0 || r.EndPort != 0 {
			return nil, fmt.Errorf("policy rule: ports %d-%d without a protocol", r.Port, r.EndPort)
		}
		base.Prefixlen = policyPrefixAny
		return []PolicyKey{base}, nil
	}
	if r.Port == 0 {
		if r.EndPort != 0 {
			return nil, fmt.Errorf("policy rule: endPort %d without port", r.EndPort)
		}
		base.Prefixlen = policyPrefixProto
		return []PolicyKey{base}, nil
	}
	end := r.EndPort
	if end == 0 {
		end = r.Port
	}
	if end < r.Port {
		return nil, fmt.Errorf("policy rule: endPort %d below port %d", end, r.Port)
	}
	var keys []PolicyKey
	lo, hi := uint32(r.Port), uint32(end)
	for lo <= hi {
		// Largest block aligned at lo that does not pass hi.
		size := uint32(1) << bits.TrailingZeros32(lo|1<<16)
		for lo+size-1 > hi {
			size >>= 1
		}
		k := base
		k.Prefixlen = uint32(policyPrefixFull - bits.TrailingZeros32(size))
		k.Port = htons(uint16(lo))
		keys = append(keys, k)
		lo += size
	}
	return keys, nil
}

// PortRange returns the inclusive host-order port range a policy key
// covers, and ok=false for keys that match any port.
func (k *ztTcZtPolicyKey) PortRange() (lo, hi uint16, ok bool) {
	if k.Prefixlen <= policyPrefixProto {
		return 0, 0, false
	}
	n := policyPrefixFull - k.Prefixlen
	p := ntohs(k.Port)
	mask := uint16(1<<n - 1)
	return p &^ mask, p | mask, true
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(v uint16) uint16 { return htons(v) }
