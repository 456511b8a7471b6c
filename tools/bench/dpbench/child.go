package dpbench

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
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
}

// runClient runs TCP_RR (one connection, one byte each way per
// transaction) or TCP_CRR (a new connection per transaction) against
// args[0] (ip:port) for args[1] after a warm-up of args[2].
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
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	dial := func() (int, error) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		tv := unix.Timeval{Sec: 2}
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		if err := unix.Connect(fd, sa); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("connect %s: %w", ap, err)
		}
		return fd, nil
	}
	msg, buf := []byte{'x'}, make([]byte, 1)
	rr := func(fd int) error {
		if _, err := unix.Write(fd, msg); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		for {
			n, err := unix.Read(fd, buf)
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
	conn := -1
	if mode == "rr" {
		if conn, err = dial(); err != nil {
			return err
		}
		defer unix.Close(conn)
	}
	one := func() error {
		if mode == "rr" {
			return rr(conn)
		}
		fd, err := dial()
		if err != nil {
			return err
		}
		err = rr(fd)
		unix.Close(fd)
		return err
	}
	for end := time.Now().Add(warm); time.Now().Before(end); {
		if err := one(); err != nil {
			return err
		}
	}
	lat := make([]uint32, 0, 1<<20)
	start := time.Now()
	end := start.Add(dur)
	var now time.Time
	for now = start; now.Before(end); {
		t0 := now
		if err := one(); err != nil {
			return err
		}
		now = time.Now()
		lat = append(lat, uint32(min(now.Sub(t0), time.Duration(^uint32(0)))))
	}
	res := clientResult{Transactions: len(lat), Seconds: now.Sub(start).Seconds()}
	slices.Sort(lat)
	if len(lat) > 0 {
		res.P50ns = float64(lat[len(lat)/2])
		res.P99ns = float64(lat[min(len(lat)-1, len(lat)*99/100)])
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func itoa(i int) string { return strconv.Itoa(i) }
