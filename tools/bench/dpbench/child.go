package dpbench

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// The bench re-executes its own binary inside a pod's network namespace
// (started from a thread that joined it) under `taskset`, so the client
// and the server each own one core. childEnv selects the role.
const childEnv = "ZT_BENCH_CHILD"

// Ports the server pod listens on; every configuration allows exactly
// this range from the allowed peers.
const (
	rrPort    = 7000 // request/response echo (TCP_RR and TCP_CRR)
	iperfPort = 7001 // iperf3
)

// MaybeChild runs the child role named by $ZT_BENCH_CHILD and exits; it
// returns at once in the parent. Call it first in main and TestMain.
func MaybeChild() {
	role := os.Getenv(childEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case "serve":
		err = serveEcho(rrPort)
	case "rr", "crr":
		err = runClient(role, os.Args[1:])
	case "mix":
		err = runMix(os.Args[1:])
	default:
		err = fmt.Errorf("unknown child role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "zt-bench %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveEcho answers one connection at a time with blocking syscalls: it
// echoes what it reads until the peer closes. The clients are sequential,
// so one thread and no poller keep the server's own jitter out of the
// figures.
func serveEcho(port int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		return fmt.Errorf("bind :%d: %w", port, err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		return err
	}
	fmt.Println("ready") // the parent waits for this line
	buf := make([]byte, 64)
	idle := unix.Timeval{Sec: 30}
	for {
		c, _, err := unix.Accept(fd)
		if err != nil {
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		_ = unix.SetsockoptInt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		_ = unix.SetsockoptTimeval(c, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &idle)
		for {
			n, err := unix.Read(c, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n <= 0 {
				break
			}
			if _, err := unix.Write(c, buf[:n]); err != nil {
				break
			}
		}
		unix.Close(c)
	}
}

// clientResult is what a client child prints (JSON) on stdout.
type clientResult struct {
	Transactions int     `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	P50ns        float64 `json:"p50_ns"`
	P99ns        float64 `json:"p99_ns"`
	Slots        int     `json:"slots"` // turns taken (runMix); 1 for a whole run
	Netns        uint64  `json:"netns"` // runMix: inode of the namespace measured
}

// rrClient makes TCP_RR (one connection, one byte each way per
// transaction) or TCP_CRR (a new connection per transaction)
// transactions to one server, with blocking syscalls.
type rrClient struct {
	mode     string // "rr" or "crr"
	sa       *unix.SockaddrInet4
	ap       netip.AddrPort
	conn     int // rr: the connection, once dialled
	msg, buf []byte
}

func newRRClient(mode string, ap netip.AddrPort) *rrClient {
	return &rrClient{mode: mode, ap: ap, conn: -1, msg: []byte{'x'}, buf: make([]byte, 1),
		sa: &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}}
}

// dial connects a new socket, in the calling thread's network namespace.
func (c *rrClient) dial() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	tv := unix.Timeval{Sec: 2}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, c.sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", c.ap, err)
	}
	return fd, nil
}

func (c *rrClient) rr(fd int) error {
	if _, err := unix.Write(fd, c.msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	for {
		n, err := unix.Read(fd, c.buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if n != 1 {
			return fmt.Errorf("read: connection closed")
		}
		return nil
	}
}

// one makes one transaction; TCP_RR dials its connection the first time.
func (c *rrClient) one() error {
	if c.mode == "rr" {
		if c.conn < 0 {
			fd, err := c.dial()
			if err != nil {
				return err
			}
			c.conn = fd
		}
		return c.rr(c.conn)
	}
	fd, err := c.dial()
	if err != nil {
		return err
	}
	err = c.rr(fd)
	unix.Close(fd)
	return err
}

func (c *rrClient) close() {
	if c.conn >= 0 {
		unix.Close(c.conn)
		c.conn = -1
	}
}

// run makes transactions until until, appending each one's latency in ns,
// and returns how long they took. It makes one at least, even when until
// has passed by the time it starts (a turn's last few microseconds, on a
// busy machine): a turn that made none would take no time, and the
// turns would go round for ever.
func (c *rrClient) run(until time.Time, lat []uint32) ([]uint32, time.Duration, error) {
	start := time.Now()
	now := start
	for first := true; first || now.Before(until); first = false {
		t0 := now
		if err := c.one(); err != nil {
			return lat, now.Sub(start), err
		}
		now = time.Now()
		lat = append(lat, uint32(min(now.Sub(t0), time.Duration(^uint32(0)))))
	}
	return lat, now.Sub(start), nil
}

func (c *rrClient) warm(d time.Duration) error {
	for end := time.Now().Add(d); time.Now().Before(end); {
		if err := c.one(); err != nil {
			return err
		}
	}
	return nil
}

func result(lat []uint32, took time.Duration, slots int) clientResult {
	res := clientResult{Transactions: len(lat), Seconds: took.Seconds(), Slots: slots}
	slices.Sort(lat)
	if len(lat) > 0 {
		res.P50ns = float64(lat[len(lat)/2])
		res.P99ns = float64(lat[min(len(lat)-1, len(lat)*99/100)])
	}
	return res
}

// runClient runs TCP_RR or TCP_CRR against args[0] (ip:port) for args[1]
// after a warm-up of args[2].
func runClient(mode string, args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: ADDR:PORT DURATION WARMUP")
	}
	ap, err := netip.ParseAddrPort(args[0])
	if err != nil {
		return err
	}
	dur, err := time.ParseDuration(args[1])
	if err != nil {
		return err
	}
	warm, err := time.ParseDuration(args[2])
	if err != nil {
		return err
	}
	c := newRRClient(mode, ap)
	defer c.close()
	if err := c.warm(warm); err != nil {
		return err
	}
	lat, took, err := c.run(time.Now().Add(dur), make([]uint32, 0, 1<<20))
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(result(lat, took, 1))
}

// mixFirstFD is the first of the network namespace descriptors the
// parent hands a "mix" child (exec.Cmd.ExtraFiles start at 3).
const mixFirstFD = 3

// runMix runs TCP_RR or TCP_CRR (args[0]) against args[1] (ip:port) in
// each of args[5] network namespaces (descriptors mixFirstFD...), one
// per configuration, taking turns: slots of args[4] go round the
// namespaces, each round starting one further on, until each has had
// args[2] after a warm-up of args[3]. Drift of the machine over seconds
// then falls on every configuration alike instead of on whichever ran
// during it, so ratios between them are far less noisy than with whole
// runs one after another. Prints one clientResult per namespace, in
// order, as a JSON array.
func runMix(args []string) error {
	if len(args) != 6 {
		return fmt.Errorf("usage: rr|crr ADDR:PORT DURATION WARMUP SLOT COUNT")
	}
	mode := args[0]
	if mode != "rr" && mode != "crr" {
		return fmt.Errorf("mode %q: want rr or crr", mode)
	}
	ap, err := netip.ParseAddrPort(args[1])
	if err != nil {
		return err
	}
	var dur, warm, slot time.Duration
	for i, d := range []*time.Duration{&dur, &warm, &slot} {
		if *d, err = time.ParseDuration(args[2+i]); err != nil {
			return err
		}
	}
	k, err := strconv.Atoi(args[5])
	if err != nil || k < 1 || slot <= 0 {
		return fmt.Errorf("count %q, slot %s: want at least one namespace and a slot", args[5], slot)
	}
	// A socket lives in the namespace of the thread that made it: this
	// goroutine keeps its thread, which enters each namespace in turn.
	runtime.LockOSThread()
	enter := func(i int) error {
		if err := unix.Setns(mixFirstFD+i, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter namespace %d: %w", i, err)
		}
		return nil
	}
	cs := make([]*rrClient, k)
	lat := make([][]uint32, k)
	for i := range cs {
		cs[i] = newRRClient(mode, ap)
		defer cs[i].close()
		lat[i] = make([]uint32, 0, 1<<18)
		if err := enter(i); err != nil {
			return err
		}
		if err := cs[i].warm(warm); err != nil {
			return fmt.Errorf("namespace %d: %w", i, err)
		}
	}
	spent := make([]time.Duration, k)
	slots := make([]int, k)
	for round := 0; ; round++ {
		busy := false
		for j := range k {
			i := (round + j) % k
			left := dur - spent[i]
			if left <= 0 {
				continue
			}
			busy = true
			if err := enter(i); err != nil {
				return err
			}
			var took time.Duration
			if lat[i], took, err = cs[i].run(time.Now().Add(min(slot, left)), lat[i]); err != nil {
				return fmt.Errorf("namespace %d: %w", i, err)
			}
			spent[i] += took
			slots[i]++
		}
		if !busy {
			break
		}
	}
	out := make([]clientResult, k)
	for i := range out {
		out[i] = result(lat[i], spent[i], slots[i])
		if out[i].Netns, err = inode(mixFirstFD + i); err != nil {
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// inode names the namespace (or any file) behind a descriptor.
func inode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat %d: %w", fd, err)
	}
	return st.Ino, nil
}

func itoa(i int) string { return strconv.Itoa(i) }
