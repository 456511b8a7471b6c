package dpbench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/netnsutil"
	"github.com/ztnet/zt/internal/pkttest"
	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/mapsync"
)

// Config names, in the order of the report.
const (
	CfgNone     = "none"
	CfgEmpty    = "tc-empty"
	CfgZT       = "zt"
	CfgIptables = "iptables"
	CfgIpset    = "ipset"
	CfgNft      = "nftables"
)

// Configs lists every configuration; CfgNone is the baseline. CfgEmpty
// enforces nothing either: an empty program on the tcx hooks zt's
// programs use, it shows what any tc-based datapath pays for the hooks
// alone.
var Configs = []string{CfgNone, CfgEmpty, CfgZT, CfgIptables, CfgIpset, CfgNft}

// enforcing says whether a configuration blocks the pod outside the
// allowed set.
func enforcing(cfg string) bool { return cfg != CfgNone && cfg != CfgEmpty }

// enforcer installs one kind of enforcement into a topology's node
// namespace: the server pod accepts TCP 7000-7001 from the N peers only.
type enforcer interface {
	// install writes all rules; it returns the time the rule writes took.
	install(ctx context.Context, t *topo, peers []netip.Addr) (time.Duration, error)
	// change allows (add) or revokes one more peer and returns its cost.
	change(ctx context.Context, t *topo, peer netip.Addr, add bool) (time.Duration, error)
	close() error
}

func newEnforcer(cfg, iptablesCmd string) (enforcer, error) {
	switch cfg {
	case CfgNone:
		return noEnforcer{}, nil
	case CfgEmpty:
		return &emptyEnforcer{}, nil
	case CfgZT:
		return &ztEnforcer{}, nil
	case CfgIptables:
		return &iptEnforcer{cmd: iptablesCmd}, nil
	case CfgIpset:
		return &iptEnforcer{cmd: iptablesCmd, ipset: "ztb-" + randHex(4)}, nil
	case CfgNft:
		return &nftEnforcer{}, nil
	}
	return nil, fmt.Errorf("unknown configuration %q", cfg)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// peerAddrs returns n IPv4 peers, the probing client last: the worst case
// for a linear chain.
func peerAddrs(n int) []netip.Addr {
	out := make([]netip.Addr, 0, n)
	base := netip.MustParseAddr("10.128.0.0").As4()
	for i := 1; i < n; i++ {
		a := base
		a[1] += byte(i >> 16)
		a[2] = byte(i >> 8)
		a[3] = byte(i)
		out = append(out, netip.AddrFrom4(a))
	}
	return append(out, clientIP4)
}

// extraPeer is the address rule changes add and remove.
var extraPeer = netip.MustParseAddr("10.127.255.254")

type noEnforcer struct{}

func (noEnforcer) install(context.Context, *topo, []netip.Addr) (time.Duration, error) {
	return 0, nil
}
func (noEnforcer) change(context.Context, *topo, netip.Addr, bool) (time.Duration, error) {
	return 0, nil
}
func (noEnforcer) close() error { return nil }

// ---- tc-empty ----

// emptyEnforcer attaches emptyProg with tcx to both directions of every
// host veth, where zt attaches its programs, and allows everything.
type emptyEnforcer struct {
	prog  *ebpf.Program
	links []link.Link
}

// emptyProg loads a tc program of two instructions that lets every
// packet carry on as without a program (TC_ACT_UNSPEC).
func emptyProg() (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "ztb_empty",
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, -1), // TC_ACT_UNSPEC
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load the empty program: %w", err)
	}
	return prog, nil
}

// attachEverywhere attaches prog with tcx to ingress and egress of t's
// host veths.
func attachEverywhere(t *topo, prog *ebpf.Program) (links []link.Link, err error) {
	// tcx attaches by ifindex of the calling thread's namespace.
	err = netnsutil.Do(t.node, func() error {
		for _, p := range []*pod{t.server, t.client, t.denied} {
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				l, err := link.AttachTCX(link.TCXOptions{Interface: p.hostIfindex, Program: prog, Attach: at})
				if err != nil {
					return fmt.Errorf("attach the empty program to %s (%s): %w", p.hostIf, at, err)
				}
				links = append(links, l)
			}
		}
		return nil
	})
	if err != nil {
		err = errors.Join(err, closeLinks(links))
		return nil, err
	}
	return links, nil
}

func closeLinks(links []link.Link) error {
	var err error
	for _, l := range links {
		err = errors.Join(err, l.Close())
	}
	return err
}

func (e *emptyEnforcer) install(_ context.Context, t *topo, _ []netip.Addr) (time.Duration, error) {
	start := time.Now()
	prog, err := emptyProg()
	if err != nil {
		return 0, err
	}
	if e.links, err = attachEverywhere(t, prog); err != nil {
		prog.Close()
		return 0, err
	}
	e.prog = prog
	return time.Since(start), nil
}

func (e *emptyEnforcer) change(context.Context, *topo, netip.Addr, bool) (time.Duration, error) {
	return 0, nil
}

func (e *emptyEnforcer) close() error {
	err := closeLinks(e.links) // detach before the program is closed
	e.links = nil
	if e.prog != nil {
		err = errors.Join(err, e.prog.Close())
		e.prog = nil
	}
	return err
}

// ---- iptables, and iptables + ipset ----

// iptEnforcer is a FORWARD rule set as iptables-based policy engines
// write it: established and related traffic first, then a chain per
// protected pod, with one rule per peer (the probing client's last), or
// with ipset one rule matching a hash:ip set (as kube-router does).
type iptEnforcer struct {
	cmd   string // iptables or iptables-legacy
	ipset string // set name; empty: one rule per peer
}

const iptChain = "ZTB-SRV"

func (e *iptEnforcer) peerRule(op string, a netip.Addr) string {
	return fmt.Sprintf("%s %s -s %s/32 -p tcp -m tcp --dport %d:%d -j ACCEPT", op, iptChain, a, rrPort, iperfPort)
}

func (e *iptEnforcer) install(ctx context.Context, t *topo, peers []netip.Addr) (time.Duration, error) {
	var b strings.Builder
	start := time.Now()
	if e.ipset != "" {
		fmt.Fprintf(&b, "create %s hash:ip family inet hashsize 1024 maxelem %d\n", e.ipset, max(65536, 2*len(peers)))
		for _, a := range peers {
			fmt.Fprintf(&b, "add %s %s\n", e.ipset, a)
		}
		if _, err := runIn(ctx, t.node, []byte(b.String()), "ipset", "restore"); err != nil {
			return 0, err
		}
		b.Reset()
	}
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", iptChain)
	fmt.Fprintf(&b, "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	fmt.Fprintf(&b, "-A FORWARD -d %s/32 -j %s\n", serverIP4, iptChain)
	if e.ipset != "" {
		fmt.Fprintf(&b, "-A %s -m set --match-set %s src -p tcp -m tcp --dport %d:%d -j ACCEPT\n", iptChain, e.ipset, rrPort, iperfPort)
	} else {
		for _, a := range peers {
			b.WriteString(e.peerRule("-A", a) + "\n")
		}
	}
	fmt.Fprintf(&b, "-A %s -j DROP\nCOMMIT\n", iptChain)
	if _, err := runIn(ctx, t.node, []byte(b.String()), e.cmd+"-restore", "-w"); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (e *iptEnforcer) change(ctx context.Context, t *topo, a netip.Addr, add bool) (time.Duration, error) {
	start := time.Now()
	if e.ipset != "" {
		op := "add"
		if !add {
			op = "del"
		}
		_, err := runIn(ctx, t.node, nil, "ipset", op, e.ipset, a.String())
		return time.Since(start), err
	}
	op := "-I"
	if !add {
		op = "-D"
	}
	in := fmt.Sprintf("*filter\n%s\nCOMMIT\n", e.peerRule(op, a))
	_, err := runIn(ctx, t.node, []byte(in), e.cmd+"-restore", "-w", "--noflush")
	return time.Since(start), err
}

func (e *iptEnforcer) close() error { return nil } // the namespace takes it all

// ---- nftables ----

// nftEnforcer matches the peers with one rule and a set, after an
// established/related accept.
type nftEnforcer struct{}

const nftTable = "ztb"

func (e *nftEnforcer) install(ctx context.Context, t *topo, peers []netip.Addr) (time.Duration, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n set peers4 {\n  type ipv4_addr\n", nftTable)
	if len(peers) > 0 {
		b.WriteString("  elements = { ")
		for i, a := range peers {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(a.String())
		}
		b.WriteString(" }\n")
	}
	b.WriteString(" }\n")
	fmt.Fprintf(&b, " chain forward {\n  type filter hook forward priority filter; policy accept;\n"+
		"  ct state established,related accept\n  ip daddr %s jump srv\n }\n", serverIP4)
	fmt.Fprintf(&b, " chain srv {\n  ip saddr @peers4 tcp dport %d-%d accept\n  drop\n }\n}\n", rrPort, iperfPort)
	start := time.Now()
	if _, err := runIn(ctx, t.node, []byte(b.String()), "nft", "-f", "-"); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (e *nftEnforcer) change(ctx context.Context, t *topo, a netip.Addr, add bool) (time.Duration, error) {
	op := "add"
	if !add {
		op = "delete"
	}
	start := time.Now()
	_, err := runIn(ctx, t.node, nil, "nft", op, "element", "inet", nftTable, "peers4", "{", a.String(), "}")
	return time.Since(start), err
}

func (e *nftEnforcer) close() error { return nil }

// ---- zt ----

// ztEnforcer loads the real programs and maps (pkg/datapath), writes them
// through pkg/mapsync and attaches tcx programs to the three host veths.
// Each peer is its own identity: one ipcache entry and one policy entry.
// The cgroup socket hooks are not attached: they apply to every process
// on the machine, and they only act on pods whose egress is isolated.
type ztEnforcer struct {
	dp         *datapath.Datapath
	root       string
	syncer     *mapsync.Syncer
	state      mapsync.State
	serverEP   uint32
	extraID    datapath.Identity // of extraPeer: in the ipcache, allowed only during changes
	rawChanges []time.Duration
	memFull    memlock
	entries    int
}

type memlock struct{ Policy, IPCache uint64 }

// memlock reads the kernel memory of the policy map and of the two
// ipcache maps (host addresses and shorter prefixes) together.
func (e *ztEnforcer) memlock() (memlock, error) {
	mem, err := e.dp.MapMemory()
	if err != nil {
		return memlock{}, err
	}
	return memlock{Policy: mem["policy"], IPCache: mem["ipcache"] + mem["ipcidr"]}, nil
}

func (e *ztEnforcer) peerRule(id datapath.Identity) (datapath.PolicyKey, error) {
	keys, err := datapath.PolicyKeys(datapath.PortRule{EndpointID: e.serverEP, Dir: datapath.DirIngress,
		Peer: id, Proto: unix.IPPROTO_TCP, Port: rrPort, EndPort: iperfPort})
	if err != nil {
		return datapath.PolicyKey{}, err
	}
	if len(keys) != 1 {
		return datapath.PolicyKey{}, fmt.Errorf("port range %d-%d took %d policy keys, want 1", rrPort, iperfPort, len(keys))
	}
	return keys[0], nil
}

func (e *ztEnforcer) install(ctx context.Context, t *topo, peers []netip.Addr) (time.Duration, error) {
	e.root = filepath.Join("/sys/fs/bpf", "ztb-"+randHex(6))
	size := uint32(max(65536, len(peers)+64))
	dp, err := datapath.Open(datapath.Options{BPFFSRoot: e.root,
		MapSizes: datapath.MapSizes{IPCache: size, Policy: size}})
	if err != nil {
		return 0, fmt.Errorf("open datapath: %w", err)
	}
	e.dp = dp
	e.serverEP = uint32(t.server.hostIfindex)
	st := mapsync.State{IPCache: map[netip.Prefix]datapath.IPCacheVal{},
		Endpoints: map[uint32]datapath.Endpoint{}, Policy: map[datapath.PolicyKey]datapath.PolicyVal{}}
	id := datapath.IdentityUserMin
	allow := datapath.PolicyVal{RuleId: 1, Action: datapath.ActionAllow}
	for _, a := range peers {
		st.IPCache[netip.PrefixFrom(a, 32)] = datapath.IPCacheVal{Identity: id}
		if a == clientIP4 {
			st.IPCache[netip.PrefixFrom(clientIP6, 128)] = datapath.IPCacheVal{Identity: id}
		}
		k, err := e.peerRule(id)
		if err != nil {
			return 0, err
		}
		st.Policy[k] = allow
		id++
	}
	for _, p := range []*pod{t.server, t.denied} {
		st.IPCache[netip.PrefixFrom(p.ip4, 32)] = datapath.IPCacheVal{Identity: id}
		st.IPCache[netip.PrefixFrom(p.ip6, 128)] = datapath.IPCacheVal{Identity: id}
		id++
	}
	st.IPCache[netip.PrefixFrom(extraPeer, 32)] = datapath.IPCacheVal{Identity: id}
	e.extraID = id
	for _, p := range []*pod{t.server, t.client, t.denied} {
		flags := datapath.EndpointAllowHost
		if p == t.server {
			flags |= datapath.EndpointIngressIsolated
		}
		ep, err := datapath.NewEndpoint(uint32(p.hostIfindex), flags, p.ip4, p.ip6)
		if err != nil {
			return 0, err
		}
		st.Endpoints[uint32(p.hostIfindex)] = ep
	}
	e.state = st
	e.entries = len(st.Policy)
	e.syncer = mapsync.New(dp)
	start := time.Now()
	if _, err := e.syncer.Reconcile(st); err != nil {
		return 0, fmt.Errorf("reconcile: %w", err)
	}
	took := time.Since(start)
	if e.memFull, err = e.memlock(); err != nil {
		return 0, err
	}
	// Maps first, then programs: no moment without the policy.
	err = netnsutil.Do(t.node, func() error {
		for _, p := range []*pod{t.server, t.client, t.denied} {
			mode, err := dp.AttachEndpoint(p.hostIfindex)
			if err != nil {
				return fmt.Errorf("attach %s: %w", p.hostIf, err)
			}
			if mode != datapath.AttachTCX {
				return fmt.Errorf("attach %s: mode %s, want tcx", p.hostIf, mode)
			}
		}
		return nil
	})
	return took, err
}

// change allows or revokes one peer identity (a pod known to the
// ipcache, like any pod of the cluster) through mapsync as the agent
// does it: the time returned is its ApplyDelta, planned from the one key
// a mapsync.Builder names for that change, and one policy write.
func (e *ztEnforcer) change(ctx context.Context, t *topo, a netip.Addr, add bool) (time.Duration, error) {
	if got := e.state.IPCache[netip.PrefixFrom(a, 32)].Identity; got != e.extraID {
		return 0, fmt.Errorf("%s has identity %d, want %d", a, got, e.extraID)
	}
	k, err := e.peerRule(e.extraID)
	if err != nil {
		return 0, err
	}
	if add {
		e.state.Policy[k] = datapath.PolicyVal{RuleId: 2, Action: datapath.ActionAllow}
	} else {
		delete(e.state.Policy, k)
	}
	start := time.Now()
	st, err := e.syncer.ApplyDelta(e.state, mapsync.Delta{Policy: []datapath.PolicyKey{k}})
	took := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("apply: %w", err)
	}
	if st.Writes() != 1 {
		return 0, fmt.Errorf("one rule change took %d map writes (%+v), want 1", st.Writes(), st)
	}
	return took, nil
}

// rawWrites times n bare policy map writes of the same change (put and
// delete in turn), in microseconds; the map is left as it was.
func (e *ztEnforcer) rawWrites(n int) ([]float64, error) {
	k, err := e.peerRule(e.extraID)
	if err != nil {
		return nil, err
	}
	_, had := e.state.Policy[k]
	val := datapath.PolicyVal{RuleId: 2, Action: datapath.ActionAllow}
	out := make([]float64, 0, n)
	for i := 0; i < n || i%2 == 1; i++ { // an even count restores the map
		start := time.Now()
		if (i%2 == 0) == had {
			err = e.dp.PolicyDelete(k)
		} else {
			err = e.dp.PolicyPut(k, val)
		}
		took := time.Since(start)
		if err != nil {
			return nil, err
		}
		out = append(out, float64(took.Nanoseconds())/1000)
	}
	return out, nil
}

// progStats sums run count and run time of the tc programs attached to
// the topology's host veths (bpf_stats must be enabled).
func (e *ztEnforcer) progStats(t *topo) (cnt, ns uint64, err error) {
	seen := map[ebpf.ProgramID]bool{}
	for _, p := range []*pod{t.server, t.client, t.denied} {
		for _, suffix := range []string{"_in", "_eg"} {
			l, err := link.LoadPinnedLink(filepath.Join(e.root, "links", itoa(p.hostIfindex)+suffix), nil)
			if err != nil {
				return 0, 0, fmt.Errorf("load pinned link: %w", err)
			}
			info, err := l.Info()
			l.Close()
			if err != nil {
				return 0, 0, fmt.Errorf("link info: %w", err)
			}
			if seen[info.Program] {
				continue
			}
			seen[info.Program] = true
			prog, err := ebpf.NewProgramFromID(info.Program)
			if err != nil {
				return 0, 0, fmt.Errorf("program %d: %w", info.Program, err)
			}
			st, err := prog.Stats()
			prog.Close()
			if err != nil {
				return 0, 0, fmt.Errorf("program stats: %w", err)
			}
			cnt += st.RunCount
			ns += uint64(st.Runtime.Nanoseconds())
		}
	}
	return cnt, ns, nil
}

// warmRepeat is how many times warmCost runs each program on its frame.
const warmRepeat = 200_000

// warmCost returns the cost per packet of zt's programs with warm caches:
// a TCP data packet of an established flow from the probing client to the
// server (request) and its answer (reply), each run warmRepeat times
// through both programs it crosses live (the sender's host veth:
// zt_from_pod; the receiver's: zt_to_pod) with BPF_PROG_RUN on those
// interfaces, after one run of each that sets the flow up (the request's
// verdict taken from the maps and cached). Packet after packet hits the
// same cache lines, which live traffic does not: the difference between
// this figure and the live one is the machine's, not the programs'.
func (e *ztEnforcer) warmCost(t *topo) (req, reply float64, err error) {
	r := pkttestPacket(t.client.ip4, t.server.ip4, 45678, rrPort)
	a := pkttestPacket(t.server.ip4, t.client.ip4, rrPort, 45678)
	hops := []struct {
		frame   []byte
		dir     datapath.Dir
		ifindex int
		sum     *float64
	}{
		{r, datapath.DirEgress, t.client.hostIfindex, &req},
		{r, datapath.DirIngress, t.server.hostIfindex, &req},
		{a, datapath.DirEgress, t.server.hostIfindex, &reply},
		{a, datapath.DirIngress, t.client.hostIfindex, &reply},
	}
	err = netnsutil.Do(t.node, func() error {
		for _, repeat := range []int{1, warmRepeat} {
			for _, h := range hops {
				pass, per, err := e.dp.RunProgram(h.dir, h.ifindex, h.frame, repeat)
				if err != nil {
					return err
				}
				if !pass {
					return fmt.Errorf("warm cost: the %s program dropped the established flow's packet (ifindex %d)", h.dir, h.ifindex)
				}
				if repeat > 1 {
					*h.sum += float64(per.Nanoseconds())
				}
			}
		}
		return nil
	})
	return req, reply, err
}

func (e *ztEnforcer) close() error {
	if e.dp == nil {
		return nil
	}
	err := errors.Join(e.dp.Remove(), e.dp.Close())
	e.dp = nil
	return err
}

// pkttestPacket is one TCP data segment (ACK, one byte) of an
// established flow, as an Ethernet frame.
func pkttestPacket(src, dst netip.Addr, sport, dport uint16) []byte {
	return pkttest.Packet{Src: src, Dst: dst, Proto: pkttest.ProtoTCP, SrcPort: sport, DstPort: dport,
		TCPFlags: pkttest.TCPAck, Payload: []byte{'x'}}.Frame()
}
