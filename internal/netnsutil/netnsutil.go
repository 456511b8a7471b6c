// Package netnsutil runs Go code in network namespaces and creates them.
//
// A network namespace belongs to an OS thread, not to a goroutine, so code
// that must run inside one gets a fresh goroutine locked to its thread for
// the duration. A thread that cannot return to its original namespace is
// never unlocked: the runtime then discards it with its goroutine instead
// of handing a thread in the wrong namespace to unrelated code. Sockets
// opened inside stay in that namespace after fn returns.
//
// The lab (pkg/lab) and the kernel, flows and end-to-end tests share it.
package netnsutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

const self = "/proc/thread-self/ns/net"

// Do runs fn inside the network namespace open as fd.
func Do(fd int, fn func() error) error {
	return onThread(func() error {
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns: %w", err)
		}
		return fn()
	})
}

// DoPath runs fn inside the network namespace at path (a bind mount or
// /proc/PID/ns/net).
func DoPath(path string, fn func() error) error {
	ns, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer ns.Close()
	return Do(int(ns.Fd()), fn)
}

// New creates an anonymous network namespace and returns a descriptor of
// it (close it with unix.Close). The namespace lives as long as the
// descriptor, a socket or a process in it.
func New() (int, error) {
	fd := -1
	err := onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare netns: %w", err)
		}
		var err error
		fd, err = unix.Open(self, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	return fd, err
}

// NewAt creates a network namespace bind-mounted on path (created, which
// must not exist), so it outlives this process; remove it with RemoveAt.
func NewAt(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("netns file: %w", err)
	}
	f.Close()
	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare netns: %w", err)
		}
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount netns on %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		_ = os.Remove(path)
	}
	return err
}

// RemoveAt unmounts and removes a namespace file; a missing file or one
// that is no mount point is fine.
func RemoveAt(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// onThread runs fn on a fresh goroutine locked to its OS thread and then
// returns that thread to the namespace it started in.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(self)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to the original netns: %w", err))
			return // the thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
