package mapsync

import (
	"fmt"
	"net/netip"

	"github.com/ztnet/zt/pkg/datapath"
)

func dumpFor(s State, ifindex uint32, dir uint8, peer netip.Addr) string {
	out := ""
	for p, v := range s.IPCache {
		if p.Contains(peer) {
			out += fmt.Sprintf(" ipc %s=%d", p, v.Identity)
		}
	}
	ep := s.Endpoints[ifindex]
	out += fmt.Sprintf(" ep flags=%d", ep.Flags)
	for k, v := range s.Policy {
		if k.EpId == ifindex && uint8(k.Dir) == dir {
			lo, hi, _ := k.PortRange()
			out += fmt.Sprintf(" pol[peer=%d len=%d proto=%d %d-%d rule=%d]", k.PeerId, k.Prefixlen, k.Proto, lo, hi, v.RuleId)
		}
	}
	_ = datapath.IdentityAny
	return out
}
