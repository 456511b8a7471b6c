package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServeSpec is what one pod's server answers on: every declared port, on
// each of the pod's addresses.
type ServeSpec struct {
	IPs  []netip.Addr
	TCP  []uint16
	UDP  []uint16
	SCTP []uint16
}

// Args renders the spec as `ztlab serve` flags.
func (s ServeSpec) Args() []string {
	join := func(ps []uint16) string {
		var out []string
		for _, p := range ps {
			out = append(out, strconv.Itoa(int(p)))
		}
		return strings.Join(out, ",")
	}
	var ips []string
	for _, ip := range s.IPs {
		ips = append(ips, ip.String())
	}
	return []string{"--ips", strings.Join(ips, ","), "--tcp", join(s.TCP), "--udp", join(s.UDP), "--sctp", join(s.SCTP)}
}

// ParseServeArgs is the inverse of Args.
func ParseServeArgs(args []string) (ServeSpec, error) {
	var s ServeSpec
	if len(args)%2 != 0 {
		return s, fmt.Errorf("serve: want flag/value pairs, got %q", args)
	}
	ports := func(v string) ([]uint16, error) {
		var out []uint16
		for _, f := range strings.Split(v, ",") {
			if f == "" {
				continue
			}
			n, err := strconv.ParseUint(f, 10, 16)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("bad port %q", f)
			}
			out = append(out, uint16(n))
		}
		return out, nil
	}
	for i := 0; i < len(args); i += 2 {
		v := args[i+1]
		var err error
		switch args[i] {
		case "--ips":
			for _, f := range strings.Split(v, ",") {
				if f == "" {
					continue
				}
				a, perr := netip.ParseAddr(f)
				if perr != nil {
					return s, perr
				}
				s.IPs = append(s.IPs, a)
			}
		case "--tcp":
			s.TCP, err = ports(v)
		case "--udp":
			s.UDP, err = ports(v)
		case "--sctp":
			s.SCTP, err = ports(v)
		default:
			return s, fmt.Errorf("serve: unknown flag %s", args[i])
		}
		if err != nil {
			return s, err
		}
	}
	if len(s.IPs) == 0 {
		return s, errors.New("serve: --ips is required")
	}
	return s, nil
}

// Serve answers on every port of spec until ctx ends: TCP and UDP echo the
// request, SCTP answers an INIT with an INIT-ACK. ready is called once
// every socket is bound. It runs inside the pod's network namespace.
func Serve(ctx context.Context, spec ServeSpec, ready func(), logw io.Writer) error {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	var wg sync.WaitGroup
	for _, ip := range spec.IPs {
		for _, port := range spec.TCP {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, port).String())
			if err != nil {
				return err
			}
			closers = append(closers, ln)
			wg.Go(func() { serveTCP(ln) })
		}
		for _, port := range spec.UDP {
			pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, port)))
			if err != nil {
				return err
			}
			closers = append(closers, pc)
			wg.Go(func() { serveUDP(pc) })
		}
		if len(spec.SCTP) > 0 {
			network := "ip4:132"
			if ip.Is6() {
				network = "ip6:132"
			}
			rc, err := net.ListenIP(network, &net.IPAddr{IP: ip.AsSlice()})
			if err != nil {
				return fmt.Errorf("raw SCTP socket on %s: %w", ip, err)
			}
			closers = append(closers, rc)
			wg.Go(func() { serveSCTP(rc, spec.SCTP, logw) })
		}
	}
	ready()
	<-ctx.Done()
	for _, c := range closers {
		c.Close()
	}
	closers = nil
	wg.Wait()
	return nil
}

func serveTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReaderSize(c, 512).ReadBytes('\n')
			if err != nil {
				return
			}
			_, _ = c.Write(line)
		}()
	}
}

func serveUDP(pc *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. EPERM on a reply the socket hook refused
		}
		_, _ = pc.WriteToUDPAddrPort(buf[:n], from)
	}
}

func serveSCTP(rc *net.IPConn, ports []uint16, logw io.Writer) {
	buf := make([]byte, 2048)
	for {
		n, from, err := rc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p, err := parseSCTP(buf[:n])
		if err != nil || p.Chunk != sctpChunkInit || !slices.Contains(ports, p.DstPort) {
			continue
		}
		ack := buildInitAck(p, rand.Uint32()|1)
		if _, err := rc.WriteTo(ack, from); err != nil && logw != nil {
			fmt.Fprintf(logw, "sctp: INIT-ACK to %s: %v\n", from, err)
		}
	}
}

// ServeMain is `ztlab serve`: it serves spec, writes "ready" on stdout and
// closes it once bound, and stops on SIGTERM (ctx).
func ServeMain(ctx context.Context, args []string) error {
	spec, err := ParseServeArgs(args)
	if err != nil {
		return err
	}
	return Serve(ctx, spec, func() {
		fmt.Fprintln(os.Stdout, "ready")
		os.Stdout.Close()
	}, os.Stderr)
}
