package lab

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/pkttest"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/reach"
)

// TryOptions is one connection attempt between two lab pods (`ztlab try`).
type TryOptions struct {
	// From and To are pods: "namespace/name", or a name unique in the lab.
	From, To string
	Port     uint16
	Protocol identity.Protocol
	// SpoofAs, when set, forges the source address: a pod (whose address
	// of To's family is used) or an IP. One crafted packet (a TCP SYN, a
	// UDP datagram or an SCTP INIT) is sent through a raw socket of From,
	// which no socket hook sees; only the pod's interface can stop it.
	SpoofAs string
	// Raw sends that one crafted packet with From's own address: a raw
	// socket skips the socket hooks, so the pod's interface must decide.
	Raw bool
	// Timeout is the wait for an answer (default 1 s).
	Timeout time.Duration
}

// TryResult says what became of an attempt.
type TryResult struct {
	From, To Pod
	Port     uint16
	Protocol identity.Protocol
	// Source is the address the packets carried; Spoofed when forged,
	// Raw when one crafted packet was sent through a raw socket.
	Source  netip.Addr
	Spoofed bool
	Raw     bool
	// Passed: the destination answered.
	Passed bool
	// Outcome says how it ended, in words.
	Outcome string
	// Drops are the agents' exact drop counters that moved during the
	// attempt: "node-1 egress sock-denied +1".
	Drops []string
}

// Blocked reports whether zt stopped the attempt: no answer, and a drop
// counter moved.
func (r TryResult) Blocked() bool { return !r.Passed && len(r.Drops) > 0 }

func (r TryResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s -> %s %d/%s", r.From.Key(), r.To.Key(), r.Port, r.Protocol)
	switch {
	case r.Spoofed:
		fmt.Fprintf(&b, " (forged source %s)", r.Source)
	case r.Raw:
		b.WriteString(" (raw socket)")
	}
	switch {
	case r.Passed:
		b.WriteString(": PASSED, " + r.Outcome)
	case r.Blocked():
		b.WriteString(": BLOCKED, " + r.Outcome)
	default:
		b.WriteString(": NOT ANSWERED, " + r.Outcome + " (no zt drop counter moved)")
	}
	if len(r.Drops) > 0 {
		b.WriteString("; zt counted " + strings.Join(r.Drops, ", "))
	}
	return b.String()
}

// pod finds a lab pod by "namespace/name" or by a name unique in the lab.
func (l *Lab) pod(ref string) (Pod, error) {
	var found []Pod
	for _, p := range l.st.Pods {
		if p.Key() == ref || (!strings.Contains(ref, "/") && p.Name == ref) {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return Pod{}, fmt.Errorf("no pod %q in the lab (ztlab up prints them)", ref)
	}
	return Pod{}, fmt.Errorf("pod name %q is in several namespaces: say namespace/name", ref)
}

// Try makes one attempt from a pod to another and reports what the
// destination answered and which of zt's drop counters moved meanwhile.
func (l *Lab) Try(ctx context.Context, o TryOptions) (TryResult, error) {
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	src, err := l.pod(o.From)
	if err != nil {
		return TryResult{}, err
	}
	dst, err := l.pod(o.To)
	if err != nil {
		return TryResult{}, err
	}
	r := TryResult{From: src, To: dst, Port: o.Port, Protocol: o.Protocol}
	daddrs := dst.Addrs()
	if len(daddrs) == 0 {
		return r, fmt.Errorf("pod %s has no IP", dst.Key())
	}
	dip := daddrs[0]
	sip := familyAddr(src, dip)
	r.Raw = o.Raw || o.SpoofAs != ""
	if o.SpoofAs != "" {
		r.Spoofed = true
		if a, err := netip.ParseAddr(o.SpoofAs); err == nil {
			sip = a
		} else {
			as, err := l.pod(o.SpoofAs)
			if err != nil {
				return r, fmt.Errorf("--spoof-as: %w", err)
			}
			sip = familyAddr(as, dip)
		}
	}
	if !sip.IsValid() || sip.Is4() != dip.Is4() {
		return r, fmt.Errorf("no source address of the family of %s (%s)", dst.Key(), dip)
	}
	r.Source = sip
	before := l.dropCounters()
	nsf, err := os.Open(src.Netns)
	if err != nil {
		return r, fmt.Errorf("pod %s: %w", src.Key(), err)
	}
	defer nsf.Close()
	if r.Raw {
		if err := sendForged(int(nsf.Fd()), sip, dip, o.Protocol, o.Port); err != nil {
			return r, fmt.Errorf("send a crafted packet from %s: %w", src.Key(), err)
		}
		r.Outcome = "one crafted packet sent (no answer is awaited)"
		if r.Spoofed {
			r.Outcome = "one forged packet sent, its answer would go to the address it claimed"
		}
		// The counters move as the packet crosses the pod's interface.
		deadline := time.Now().Add(o.Timeout)
		for r.Drops = diffDrops(before, l.dropCounters()); len(r.Drops) == 0 && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			r.Drops = diffDrops(before, l.dropCounters())
		}
		if len(r.Drops) > 0 {
			r.Outcome = "dropped at " + src.Key() + "'s interface"
			if r.Spoofed && strings.Contains(strings.Join(r.Drops, " "), " spoofed ") {
				r.Outcome += ": the source address is not the pod's"
			}
		}
		return r, ctx.Err()
	}
	j := probeJob{src: src, dst: dst, srcNS: int(nsf.Fd()), srcIP: sip, dstIP: dip,
		pp: reach.PortProto{Port: o.Port, Protocol: o.Protocol}}
	out, perr := probeOnce(j, o.Timeout)
	switch out {
	case passed:
		r.Passed, r.Outcome = true, "the destination answered"
	case refused:
		r.Outcome = fmt.Sprintf("refused at %s's socket (%v)", src.Key(), perr)
	case timedOut:
		r.Outcome = fmt.Sprintf("no answer within %s", o.Timeout)
	default:
		r.Outcome = fmt.Sprintf("failed: %v", perr)
	}
	r.Drops = diffDrops(before, l.dropCounters())
	return r, ctx.Err()
}

// familyAddr is p's address of a's family.
func familyAddr(p Pod, a netip.Addr) netip.Addr {
	for _, x := range p.Addrs() {
		if x.Is4() == a.Is4() {
			return x
		}
	}
	return netip.Addr{}
}

// dropCounters reads every agent's exact drop counters:
// "node direction reason" -> packets.
func (l *Lab) dropCounters() map[string]float64 {
	hc := &http.Client{Timeout: 2 * time.Second}
	out := map[string]float64{}
	for _, n := range l.st.Nodes {
		m, err := scrape(hc, n.HealthAddr)
		if err != nil {
			continue
		}
		for k, v := range m {
			name, labels, ok := strings.Cut(k, "{")
			if !ok || name != "zt_datapath_packets_total" || label(labels, "verdict") != "drop" {
				continue
			}
			out[n.Name+" "+label(labels, "direction")+" "+label(labels, "reason")] += v
		}
	}
	return out
}

// label is one label's value in a scraped `a="x",b="y"}`.
func label(labels, name string) string {
	_, rest, ok := strings.Cut(labels, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

func diffDrops(before, after map[string]float64) []string {
	var out []string
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out = append(out, fmt.Sprintf("%s +%d", k, int64(d)))
		}
	}
	sort.Strings(out)
	return out
}

// sendForged sends the first packet of a flow from src to dst (port) from
// inside the namespace nsFd through a raw socket that writes its own IP
// header, so the source can be any address.
func sendForged(nsFd int, src, dst netip.Addr, proto identity.Protocol, port uint16) error {
	var p uint8
	switch proto {
	case identity.ProtoTCP:
		p = pkttest.ProtoTCP
	case identity.ProtoUDP:
		p = pkttest.ProtoUDP
	case identity.ProtoSCTP:
		p = pkttest.ProtoSCTP
	default:
		return fmt.Errorf("protocol %s cannot be forged", proto)
	}
	pkt := pkttest.First(src, dst, p, uint16(32768+rand.IntN(28000)), port).Frame()[14:] // without Ethernet
	return inNetnsFd(nsFd, func() error {
		fam := unix.AF_INET
		var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: dst.As4()}
		if dst.Is6() {
			fam, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: dst.As16()}
		}
		// IPPROTO_RAW implies IP_HDRINCL (and its IPv6 counterpart).
		fd, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, sa)
	})
}

// Env writes shell lines that point kubectl and ztctl at the lab:
// eval "$(ztlab env)", then kubectl get pods -A, ztctl flows -A.
func (l *Lab) Env(w io.Writer) {
	var socks []string
	for _, n := range l.st.Nodes {
		if n.FlowsSocket != "" {
			socks = append(socks, n.FlowsSocket)
		}
	}
	fmt.Fprintf(w, "export KUBECONFIG=%s\n", shellQuote(l.st.AdminKubeconfig))
	fmt.Fprintf(w, "export ZT_FLOWS_SOCKET=%s\n", shellQuote(strings.Join(socks, ",")))
	if dir, err := filepath.Abs(filepath.Dir(l.st.Kubectl)); l.st.Kubectl != "" && err == nil {
		fmt.Fprintf(w, "export PATH=%s:\"$PATH\"\n", shellQuote(dir))
	}
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
