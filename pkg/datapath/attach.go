package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const linksDir = "links"

// AttachMode says how the tc programs of an endpoint are attached.
type AttachMode int

const (
	// AttachTCX: tcx links (Linux 6.6+), pinned under <root>/links.
	AttachTCX AttachMode = iota + 1
	// AttachLegacyTC: clsact qdisc with direct-action bpf filters, for
	// kernels without tcx. The filters live with the interface.
	AttachLegacyTC
)

// String returns "tcx" or "legacy-tc".
func (m AttachMode) String() string {
	switch m {
	case AttachTCX:
		return "tcx"
	case AttachLegacyTC:
		return "legacy-tc"
	}
	return fmt.Sprintf("AttachMode(%d)", int(m))
}

func (d *Datapath) linkPath(name string) string {
	return filepath.Join(d.root, linksDir, name)
}

func tcxPinNames(ifindex int) (in, eg string) {
	return fmt.Sprintf("%d_in", ifindex), fmt.Sprintf("%d_eg", ifindex)
}

func legacyPinName(ifindex int) string { return fmt.Sprintf("%d_legacy", ifindex) }

// AttachEndpoint attaches zt_from_pod at the ingress and zt_to_pod at the
// egress of the host-side interface ifindex: with tcx when the kernel has
// it, else with clsact + bpf filters. Attaching again is idempotent: pinned
// links are adopted and switched to the currently loaded programs in place
// (no moment without a program).
func (d *Datapath) AttachEndpoint(ifindex int) (AttachMode, error) {
	if ifindex <= 0 {
		return 0, fmt.Errorf("attach endpoint: invalid ifindex %d", ifindex)
	}
	if !d.opts.forceLegacyTC {
		err := d.attachTCX(ifindex)
		if err == nil {
			return AttachTCX, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return 0, err
		}
	}
	if err := d.attachLegacy(ifindex); err != nil {
		return 0, err
	}
	return AttachLegacyTC, nil
}

func (d *Datapath) attachTCX(ifindex int) error {
	in, eg := tcxPinNames(ifindex)
	for _, a := range []struct {
		pin  string
		at   ebpf.AttachType
		prog *ebpf.Program
	}{
		{in, ebpf.AttachTCXIngress, d.tc.ZtFromPod},
		{eg, ebpf.AttachTCXEgress, d.tc.ZtToPod},
	} {
		path := d.linkPath(a.pin)
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			ok := false
			if info, ierr := l.Info(); ierr == nil && info.TCX() != nil &&
				int(info.TCX().Ifindex) == ifindex {
				ok = true
			}
			if ok {
				err = l.Update(a.prog)
				l.Close()
				if err != nil {
					return fmt.Errorf("update tcx link %s: %w", path, err)
				}
				continue
			}
			// Stale pin: the interface went away (and its index may be reused).
			l.Close()
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("remove stale link %s: %w", path, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("load pinned link %s: %w", path, err)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: a.prog, Attach: a.at})
		if err != nil {
			return fmt.Errorf("attach tcx to ifindex %d: %w", ifindex, err)
		}
		err = l.Pin(path)
		if err != nil {
			l.Close()
			return fmt.Errorf("pin tcx link %s: %w", path, err)
		}
		l.Close()
	}
	return nil
}

func (d *Datapath) attachLegacy(ifindex int) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact to ifindex %d: %w", ifindex, err)
	}
	for _, f := range legacyFilters(ifindex, d.tc.ZtFromPod, d.tc.ZtToPod) {
		if err := netlink.FilterReplace(f); err != nil {
			return fmt.Errorf("attach tc filter %s to ifindex %d: %w", f.Name, ifindex, err)
		}
	}
	// Pin the ingress program as a marker so AttachedEndpoints lists it.
	path := d.linkPath(legacyPinName(ifindex))
	_ = os.Remove(path)
	// Pin a clone: Program.Pin on an already pinned handle would move the pin.
	marker, err := d.tc.ZtFromPod.Clone()
	if err != nil {
		return fmt.Errorf("clone program: %w", err)
	}
	defer marker.Close()
	if err := marker.Pin(path); err != nil {
		return fmt.Errorf("pin legacy marker %s: %w", path, err)
	}
	return nil
}

func legacyFilters(ifindex int, from, to *ebpf.Program) []*netlink.BpfFilter {
	mk := func(parent uint32, p *ebpf.Program, name string) *netlink.BpfFilter {
		fd := -1
		if p != nil {
			fd = p.FD()
		}
		return &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex,
				Parent:    parent,
				Handle:    1,
				Protocol:  unix.ETH_P_ALL,
				Priority:  1,
			},
			Fd:           fd,
			Name:         name,
			DirectAction: true,
		}
	}
	return []*netlink.BpfFilter{
		mk(netlink.HANDLE_MIN_INGRESS, from, "zt_from_pod"),
		mk(netlink.HANDLE_MIN_EGRESS, to, "zt_to_pod"),
	}
}

// DetachEndpoint removes the programs from ifindex and their pins. An
// interface that is already gone is not an error.
func (d *Datapath) DetachEndpoint(ifindex int) error {
	var errs []error
	in, eg := tcxPinNames(ifindex)
	for _, name := range []string{in, eg} {
		// ENOLINK: the interface is gone, and the link with it.
		errs = append(errs, d.removePinnedLink(name, unix.ENOLINK))
	}
	lp := d.linkPath(legacyPinName(ifindex))
	if _, err := os.Stat(lp); err == nil {
		for _, f := range legacyFilters(ifindex, nil, nil) {
			if err := netlink.FilterDel(f); err != nil &&
				!errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete tc filter %s from ifindex %d: %w", f.Name, ifindex, err))
			}
		}
		if err := os.Remove(lp); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", lp, err))
		}
	}
	return errors.Join(errs...)
}

// AttachedEndpoints lists the ifindexes with pinned attachments.
func (d *Datapath) AttachedEndpoints() ([]int, error) {
	ents, err := os.ReadDir(filepath.Join(d.root, linksDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	seen := map[int]bool{}
	for _, e := range ents {
		num, _, ok := strings.Cut(e.Name(), "_")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil {
			continue
		}
		seen[n] = true
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Ints(out)
	return out, nil
}

// ErrCgroupUnavailable is wrapped when socket-level enforcement cannot be
// set up (no cgroup v2, no bpf_link support for cgroups).
var ErrCgroupUnavailable = errors.New("socket hooks unavailable")

func (d *Datapath) cgroupProgs() []struct {
	name string
	at   ebpf.AttachType
	prog *ebpf.Program
} {
	return []struct {
		name string
		at   ebpf.AttachType
		prog *ebpf.Program
	}{
		{"cgroup_connect4", ebpf.AttachCGroupInet4Connect, d.sock.ZtConnect4},
		{"cgroup_connect6", ebpf.AttachCGroupInet6Connect, d.sock.ZtConnect6},
		{"cgroup_sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, d.sock.ZtSendmsg4},
		{"cgroup_sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, d.sock.ZtSendmsg6},
	}
}

// AttachCgroup attaches the socket programs (connect4/6, sendmsg4/6) at
// cgroupPath, the cgroup v2 root when empty, and pins the links. Attaching
// again updates the pinned links in place. Errors wrap ErrCgroupUnavailable
// when the kernel or host cannot do it: socket-level enforcement is then
// off and tc still enforces.
func (d *Datapath) AttachCgroup(cgroupPath string) error {
	if cgroupPath == "" {
		p, err := CgroupV2Root()
		if err != nil {
			return fmt.Errorf("attach cgroup: %w: %w", ErrCgroupUnavailable, err)
		}
		cgroupPath = p
	}
	for _, c := range d.cgroupProgs() {
		path := d.linkPath(c.name)
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			err = l.Update(c.prog)
			l.Close()
			if err != nil {
				return fmt.Errorf("update cgroup link %s: %w", path, err)
			}
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: c.at, Program: c.prog})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w: %w", c.name, cgroupPath, ErrCgroupUnavailable, err)
		}
		if err := l.Pin(path); err != nil {
			l.Close()
			return fmt.Errorf("pin %s: %w: %w", path, ErrCgroupUnavailable, err)
		}
		l.Close()
	}
	return nil
}

// DetachCgroup detaches and unpins the socket programs.
func (d *Datapath) DetachCgroup() error {
	var errs []error
	for _, c := range d.cgroupProgs() {
		errs = append(errs, d.removePinnedLink(c.name, nil))
	}
	return errors.Join(errs...)
}

// removePinnedLink unpins and detaches the link pinned as name under the
// links folder. A missing pin is not an error, nor is a detach error that
// matches ignore.
func (d *Datapath) removePinnedLink(name string, ignore error) error {
	path := d.linkPath(name)
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned link %s: %w", path, err)
	}
	defer l.Close()
	var errs []error
	if err := l.Unpin(); err != nil {
		errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
	}
	if rl, ok := l.(interface{ Detach() error }); ok {
		if err := rl.Detach(); err != nil && (ignore == nil || !errors.Is(err, ignore)) {
			errs = append(errs, fmt.Errorf("detach %s: %w", path, err))
		}
	}
	return errors.Join(errs...)
}

// CgroupV2Root returns the mount point of the cgroup v2 hierarchy from
// /proc/self/mountinfo (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
// hybrid hosts).
func CgroupV2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts... - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" {
			return unescapeMountinfo(pf[4]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", errors.New("no cgroup2 mount found")
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
