package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Service egress (see "Service egress" in bpf/zt_abi.h): egress of an
// isolated endpoint to a Service address is decided after kube-proxy's NAT,
// by zt_nf_service at the netfilter forward and local-in hooks of the
// node's namespace, on the pod the address was translated to.
//
// The order that never passes an undecided packet: AttachNetfilter, then
// SetServiceMark(mark). Until the mark is set, Service addresses are
// decided before the NAT (as any other destination), which can only deny
// more. SetServiceMark(0) before DetachNetfilter.

// DefaultServiceMark is the skb mark bit zt uses to flag deferred Service
// egress. kube-proxy uses 0x4000 (masquerade) and 0x8000 (drop).
const DefaultServiceMark uint32 = 0x00200000

// NetfilterPriority is where zt_nf_service sits in the forward and
// local-in hooks (or one above, see AttachNetfilter): after the
// destination NAT (-100) and the filter tables (0), so a packet kube-proxy
// rejects never reaches it.
const NetfilterPriority = 10

type nfHook struct {
	name string
	pf   link.NetfilterProtocolFamily
	hook link.NetfilterInetHook
}

var nfHooks = []nfHook{
	{"nf_ip4_forward", link.NetfilterProtoIPv4, link.NetfilterInetForward},
	{"nf_ip4_input", link.NetfilterProtoIPv4, link.NetfilterInetLocalIn},
	{"nf_ip6_forward", link.NetfilterProtoIPv6, link.NetfilterInetForward},
	{"nf_ip6_input", link.NetfilterProtoIPv6, link.NetfilterInetLocalIn},
}

// ErrNetfilterUnavailable is wrapped when the kernel cannot attach BPF
// netfilter programs (before Linux 6.4): Service egress is then decided
// before the NAT.
var ErrNetfilterUnavailable = errors.New("netfilter BPF links unavailable")

// AttachNetfilter attaches zt_nf_service at the IPv4 and IPv6 forward and
// local-in hooks of the calling thread's network namespace and pins the
// links. Attaching again replaces the pinned links with ones running the
// currently loaded program: the new link is attached before the old one
// is detached, so no packet passes undecided. The kernel refuses two BPF
// links at one priority of a hook (EBUSY), so a replacement takes the
// other of NetfilterPriority and NetfilterPriority+1.
func (d *Datapath) AttachNetfilter() error {
	for _, h := range nfHooks {
		path := d.linkPath(h.name)
		old, err := link.LoadPinnedLink(path, nil)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("load pinned link %s: %w", path, err)
		}
		prio := int32(NetfilterPriority)
		if old != nil {
			if info, ierr := old.Info(); ierr == nil && info.Netfilter() != nil && info.Netfilter().Priority == prio {
				prio++
			}
		}
		l, err := link.AttachNetfilter(link.NetfilterOptions{
			Program:        d.nf.ZtNfService,
			ProtocolFamily: h.pf,
			Hook:           h.hook,
			Priority:       prio,
		})
		if err != nil {
			if old != nil {
				old.Close()
			}
			if errors.Is(err, ebpf.ErrNotSupported) {
				err = fmt.Errorf("%w: %w", ErrNetfilterUnavailable, err)
			}
			return fmt.Errorf("attach %s at priority %d: %w", h.name, prio, err)
		}
		if old != nil {
			if err := old.Unpin(); err != nil {
				old.Close()
				l.Close()
				return fmt.Errorf("unpin %s: %w", path, err)
			}
		}
		if err := l.Pin(path); err != nil {
			l.Close()
			if old != nil {
				old.Close()
			}
			return fmt.Errorf("pin %s: %w", path, err)
		}
		l.Close()
		if old != nil {
			// Unpinned and closed: the old link (and its hook) is gone.
			if err := old.Close(); err != nil {
				return fmt.Errorf("release %s: %w", path, err)
			}
		}
	}
	return nil
}

// NetfilterAttached reports whether all netfilter links are pinned.
func (d *Datapath) NetfilterAttached() bool {
	for _, h := range nfHooks {
		if _, err := os.Stat(d.linkPath(h.name)); err != nil {
			return false
		}
	}
	return true
}

// DetachNetfilter detaches and unpins the netfilter links.
func (d *Datapath) DetachNetfilter() error {
	var errs []error
	for _, h := range nfHooks {
		errs = append(errs, d.removePinnedLink(h.name, nil))
	}
	return errors.Join(errs...)
}

// SetServiceMark sets config.svc_mark: the mark bit(s) flagging deferred
// Service egress, 0 to decide Service addresses before the NAT.
func (d *Datapath) SetServiceMark(mark uint32) error {
	c, err := d.Config()
	if err != nil {
		return err
	}
	if c.SvcMark == mark {
		return nil
	}
	c.SvcMark = mark
	return d.SetConfig(c)
}

// SetServiceCIDRs makes the svcnets map hold exactly prefixes (the
// cluster's Service IP ranges): new ones are added before old ones are
// removed.
func (d *Datapath) SetServiceCIDRs(prefixes []netip.Prefix) error {
	want := map[IPCacheKey]netip.Prefix{}
	for _, p := range prefixes {
		k, err := IPCacheKeyFor(p)
		if err != nil {
			return fmt.Errorf("service range %s: %w", p, err)
		}
		want[k] = p.Masked()
	}
	if n := d.tc.Svcnets.MaxEntries(); uint32(len(want)) > n {
		return fmt.Errorf("map svcnets: %w: %d service ranges, room for %d", ErrMapFull, len(want), n)
	}
	have, err := d.serviceKeys()
	if err != nil {
		return err
	}
	one := uint32(1)
	for k, p := range want {
		if slices.Contains(have, k) {
			continue
		}
		if err := d.tc.Svcnets.Put(&k, &one); err != nil {
			return fmt.Errorf("service range %s: %w", p, mapErr("svcnets", err))
		}
	}
	for _, k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := deleteIgnoreMissing(d.tc.Svcnets, "svcnets", &k); err != nil {
			return err
		}
	}
	return nil
}

// ServiceCIDRs lists the svcnets map.
func (d *Datapath) ServiceCIDRs() ([]netip.Prefix, error) {
	keys, err := d.serviceKeys()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(keys))
	for _, k := range keys {
		out = append(out, k.Prefix())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out, nil
}

func (d *Datapath) serviceKeys() ([]IPCacheKey, error) {
	var out []IPCacheKey
	var k IPCacheKey
	var v uint32
	it := d.tc.Svcnets.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate svcnets: %w", err)
	}
	return out, nil
}
