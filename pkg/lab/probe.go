package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/reach"
)

// ProbeOptions tune the probes.
type ProbeOptions struct {
	// Workers bounds the probes in flight (default 128: a denied probe
	// waits its whole timeout, an allowed one takes a millisecond).
	Workers int
	// Timeout is the first attempt's wait; a probe that got no answer is
	// tried once more with twice this (default 1 s), so a lost first
	// packet is never taken for a deny. EPERM from the socket hooks is a
	// deny at once.
	Timeout time.Duration
	// Warn receives unexpected outcomes (connection refused, ...).
	Warn func(format string, args ...any)
}

// outcome of one attempt.
type outcome int

const (
	passed   outcome = iota // request and reply went through
	refused                 // EPERM: the socket hook denied it
	timedOut                // no reply
	failed                  // anything else: reported, counted as deny
)

type probeJob struct {
	src, dst Pod
	srcNS    int
	srcIP    netip.Addr
	dstIP    netip.Addr
	pp       reach.PortProto
}

// Probe sends real packets from every pod to every other pod on every
// (port, protocol) the destination declares and reports what passed,
// in the reachability JSON form of pkg/reach. The source address is the
// source pod's address of the family of the destination's first address,
// as reach.Compute evaluates it.
func Probe(ctx context.Context, pods []Pod, o ProbeOptions) (reach.Report, error) {
	if o.Workers <= 0 {
		o.Workers = 128
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Warn == nil {
		o.Warn = func(string, ...any) {}
	}
	rep := reach.Report{Results: []reach.Result{}}
	fds := map[string]*os.File{}
	defer func() {
		for _, f := range fds {
			f.Close()
		}
	}()
	var jobs []probeJob
	for _, src := range pods {
		f, err := os.Open(src.Netns)
		if err != nil {
			return rep, fmt.Errorf("pod %s: %w", src.Key(), err)
		}
		fds[src.Key()] = f
	}
	for _, src := range pods {
		for _, dst := range pods {
			if src.Key() == dst.Key() {
				continue
			}
			daddrs := dst.Addrs()
			if len(daddrs) == 0 {
				return rep, fmt.Errorf("pod %s has no IP", dst.Key())
			}
			dip := daddrs[0]
			var sip netip.Addr
			for _, a := range src.Addrs() {
				if a.Is4() == dip.Is4() {
					sip = a
					break
				}
			}
			if !sip.IsValid() {
				return rep, fmt.Errorf("pod %s has no address of the family of %s (%s)", src.Key(), dst.Key(), dip)
			}
			for _, pp := range dst.Target().Ports {
				jobs = append(jobs, probeJob{src: src, dst: dst, srcNS: int(fds[src.Key()].Fd()), srcIP: sip, dstIP: dip, pp: pp})
			}
		}
	}
	results := make([]reach.Result, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(o.Workers, max(len(jobs), 1)) {
		wg.Go(func() {
			for i := range next {
				j := jobs[i]
				verdict := reach.Deny
				if probeJobRun(ctx, j, o) {
					verdict = reach.Allow
				}
				results[i] = reach.Result{From: j.src.Key(), To: j.dst.Key(), Port: j.pp.Port,
					Protocol: j.pp.Protocol.String(), Verdict: verdict}
			}
		})
	}
	for i := range jobs {
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	rep.Results = results
	rep.Sort()
	return rep, nil
}

// probeJobRun reports whether the probe passed: a second, longer attempt
// follows an attempt that got no answer.
func probeJobRun(ctx context.Context, j probeJob, o ProbeOptions) bool {
	var last error
	for attempt, timeout := range []time.Duration{o.Timeout, 2 * o.Timeout} {
		if ctx.Err() != nil {
			return false
		}
		out, err := probeOnce(j, timeout)
		switch out {
		case passed:
			if attempt > 0 {
				o.Warn("%s -> %s %d/%s passed only on the second attempt (first: %v)", j.src.Key(), j.dst.Key(), j.pp.Port, j.pp.Protocol, last)
			}
			return true
		case refused:
			return false
		case failed:
			o.Warn("%s -> %s %d/%s: %v (counted as deny)", j.src.Key(), j.dst.Key(), j.pp.Port, j.pp.Protocol, err)
			return false
		}
		last = err
	}
	return false
}

func classify(err error) outcome {
	switch {
	case err == nil:
		return passed
	case errors.Is(err, syscall.EPERM):
		return refused
	case errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return timedOut
	default:
		return failed
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func probeOnce(j probeJob, timeout time.Duration) (outcome, error) {
	var err error
	switch j.pp.Protocol {
	case identity.ProtoTCP:
		err = probeTCP(j, timeout)
	case identity.ProtoUDP:
		err = probeUDP(j, timeout)
	case identity.ProtoSCTP:
		err = probeSCTP(j, timeout)
	default:
		return failed, fmt.Errorf("protocol %s cannot be probed", j.pp.Protocol)
	}
	return classify(err), err
}

func nonce(j probeJob) string {
	return fmt.Sprintf("ztlab %s>%s %d/%s %016x", j.src.Key(), j.dst.Key(), j.pp.Port, j.pp.Protocol, rand.Uint64())
}

func probeTCP(j probeJob, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var c net.Conn
	err := inNetnsFd(j.srcNS, func() (err error) {
		d := net.Dialer{Deadline: deadline, LocalAddr: &net.TCPAddr{IP: j.srcIP.AsSlice()}}
		c, err = d.Dial("tcp", netip.AddrPortFrom(j.dstIP, j.pp.Port).String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	msg := nonce(j) + "\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg {
		return fmt.Errorf("echo mismatch: %q", got)
	}
	return nil
}

func probeUDP(j probeJob, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var c *net.UDPConn
	err := inNetnsFd(j.srcNS, func() (err error) {
		c, err = net.DialUDP("udp", &net.UDPAddr{IP: j.srcIP.AsSlice()},
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(j.dstIP, j.pp.Port)))
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	msg := nonce(j)
	buf := make([]byte, 512)
	for {
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		wait := min(250*time.Millisecond, time.Until(deadline))
		if wait <= 0 {
			return os.ErrDeadlineExceeded
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				return err
			}
			if string(buf[:n]) == msg {
				return nil
			}
		}
	}
}

func probeSCTP(j probeJob, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	network := "ip4:132"
	if j.srcIP.Is6() {
		network = "ip6:132"
	}
	var c *net.IPConn
	err := inNetnsFd(j.srcNS, func() (err error) {
		c, err = net.ListenIP(network, &net.IPAddr{IP: j.srcIP.AsSlice()})
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	sport := uint16(32768 + rand.IntN(28000))
	tag := rand.Uint32() | 1
	init := buildInit(sport, j.pp.Port, tag)
	dst := &net.IPAddr{IP: j.dstIP.AsSlice()}
	buf := make([]byte, 2048)
	for {
		if _, err := c.WriteTo(init, dst); err != nil {
			return err
		}
		wait := min(250*time.Millisecond, time.Until(deadline))
		if wait <= 0 {
			return os.ErrDeadlineExceeded
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				return err
			}
			fa, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			if !ok || fa.Unmap() != j.dstIP {
				continue
			}
			p, err := parseSCTP(buf[:n])
			if err == nil && p.Chunk == sctpChunkInitAck && p.VTag == tag && p.SrcPort == j.pp.Port && p.DstPort == sport {
				return nil
			}
		}
	}
}

// countAllowed is a one-line summary of a report.
func countAllowed(r reach.Report) string {
	a := 0
	for _, res := range r.Results {
		if res.Verdict == reach.Allow {
			a++
		}
	}
	return fmt.Sprintf("%d probes, %d allowed, %d denied", len(r.Results), a, len(r.Results)-a)
}

// Diff lists the rows where two reports disagree (both sorted).
func Diff(want, got reach.Report) []string {
	key := func(r reach.Result) string {
		return fmt.Sprintf("%s -> %s %d/%s", r.From, r.To, r.Port, r.Protocol)
	}
	w := map[string]string{}
	for _, r := range want.Results {
		w[key(r)] = r.Verdict
	}
	var out []string
	seen := map[string]bool{}
	for _, r := range got.Results {
		k := key(r)
		seen[k] = true
		if v, ok := w[k]; !ok {
			out = append(out, fmt.Sprintf("%s: probed %s, not expected", k, r.Verdict))
		} else if v != r.Verdict {
			out = append(out, fmt.Sprintf("%s: expected %s, probed %s", k, v, r.Verdict))
		}
	}
	for _, r := range want.Results {
		if !seen[key(r)] {
			out = append(out, fmt.Sprintf("%s: expected %s, not probed", key(r), r.Verdict))
		}
	}
	return out
}

var _ = strings.TrimSpace
