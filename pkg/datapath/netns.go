package datapath

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsCookie returns the cookie of the network namespace at nsPath (e.g.
// /proc/<pid>/ns/net or /var/run/netns/<name>): the key of the netns map,
// what bpf_get_netns_cookie() returns to the socket programs.
func NetnsCookie(nsPath string) (uint64, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return 0, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer ns.Close()

	type result struct {
		cookie uint64
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is locked and, if it cannot be returned to its
		// namespace, discarded (never unlocked).
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			ch <- result{err: fmt.Errorf("enter netns %s: %w", nsPath, err)}
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		var cookie uint64
		if err == nil {
			cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
			unix.Close(fd)
		}
		if serr := netns.Set(orig); serr != nil {
			ch <- result{err: fmt.Errorf("return from netns: %w", serr)}
			return
		}
		runtime.UnlockOSThread()
		if err != nil {
			err = fmt.Errorf("netns cookie of %s: %w", nsPath, err)
		}
		ch <- result{cookie, err}
	}()
	r := <-ch
	return r.cookie, r.err
}
