package controlplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netns"
)

const (
	// probeTimeout is below TCP's initial retransmission timeout (1 s):
	// a probe whose SYN was dropped never retransmits it, so a probe that
	// passed was allowed when it started.
	probeTimeout  = 300 * time.Millisecond
	probeInterval = 10 * time.Millisecond
	// confirmBlocked consecutive failed probes (by start) make a block: a
	// single failure may be a slow answer on a busy machine.
	confirmBlocked = 3
)

// dial makes one TCP connection attempt from the network namespace at
// nsPath to dst. passed says the handshake completed: the SYN was let
// through, so policy allowed the flow when sent. Only the handshake
// counts: zt checks a live flow's later packets against the current
// policy, so a probe whose data went out after the change (a goroutine
// descheduled between connect and write) would otherwise count as
// blocked although it started while the flow was allowed. sent is when
// the attempt began, taken after the goroutine was scheduled and had
// entered the namespace, which on a busy machine can be many milliseconds
// after dial was called.
func dial(nsPath string, src netip.Addr, dst netip.AddrPort) (passed bool, sent time.Time, err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return false, time.Time{}, fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		runtime.UnlockOSThread()
		return false, time.Time{}, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return false, time.Time{}, fmt.Errorf("enter netns %s: %w", nsPath, err)
	}
	sent = time.Now()
	d := net.Dialer{Deadline: sent.Add(probeTimeout), LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	c, derr := d.Dial("tcp", dst.String())
	// A thread that cannot go back stays locked and dies with the goroutine.
	if err := netns.Set(orig); err != nil {
		if c != nil {
			c.Close()
		}
		return false, sent, fmt.Errorf("return to the original netns: %w", err)
	}
	runtime.UnlockOSThread()
	if derr != nil {
		return false, sent, nil
	}
	c.Close()
	return true, sent, nil
}

// probeTrain starts a probe from one lab pod to another every
// probeInterval (they overlap) until the verdict is want, and returns the
// time from since to the start of the first probe that saw it: for an
// allow, the first probe that passed; for a block, the first of at least
// confirmBlocked failed probes after which none passed.
func probeTrain(ctx context.Context, nsPath string, src netip.Addr, dst netip.AddrPort, want bool, since time.Time, timeout time.Duration) (time.Duration, error) {
	type result struct {
		start  time.Time
		done   bool
		passed bool
	}
	var (
		mu       sync.Mutex
		results  []result
		firstErr error
		wg       sync.WaitGroup
	)
	defer wg.Wait()
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		mu.Lock()
		if firstErr != nil {
			mu.Unlock()
			return 0, firstErr
		}
		// Look for the answer among the finished probes.
		if want {
			for _, r := range results {
				if !r.done {
					break
				}
				if r.passed {
					mu.Unlock()
					return r.start.Sub(since), nil
				}
			}
		} else {
			first, n := -1, 0
			for i, r := range results {
				if !r.done {
					break
				}
				if r.passed {
					first, n = -1, 0
					continue
				}
				if first < 0 {
					first = i
				}
				n++
			}
			if n >= confirmBlocked {
				d := results[first].start.Sub(since)
				mu.Unlock()
				return d, nil
			}
		}
		i := len(results)
		results = append(results, result{})
		mu.Unlock()
		if time.Since(since) > timeout {
			return 0, fmt.Errorf("probes to %s: not %s after %s", dst, map[bool]string{true: "passing", false: "blocked"}[want], timeout)
		}
		wg.Go(func() {
			// A probe's time is when its connection attempt began, not
			// when it was launched: a goroutine scheduled late on a busy
			// machine would otherwise date a block from before the change
			// could have been enforced.
			passed, sent, err := dial(nsPath, src, dst)
			mu.Lock()
			defer mu.Unlock()
			results[i] = result{start: sent, done: true, passed: passed}
			if err != nil && firstErr == nil {
				firstErr = err
			}
		})
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
		}
	}
}
