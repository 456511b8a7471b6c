package netnsutil_test

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/netnsutil"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestNewAndDo: code run with Do sees the new namespace (a port taken
// outside is free there), and the caller's thread never leaves its
// namespace.
func TestNewAndDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("netnsutil: must run as root (CAP_SYS_ADMIN for unshare); it never skips")
	}
	outside := inode(t, "/proc/thread-self/ns/net")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	fd, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var inside uint64
	err = netnsutil.Do(fd, func() error {
		inside = inode(t, "/proc/thread-self/ns/net")
		// The port taken outside is free in here.
		l, err := net.Listen("tcp4", ln.Addr().String())
		if err != nil {
			return err
		}
		return l.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	if inside == outside {
		t.Error("Do ran fn in the caller's namespace")
	}
	if got := inode(t, "/proc/thread-self/ns/net"); got != outside {
		t.Error("the caller's thread changed namespace")
	}

	// A bind-mounted one outlives the descriptor and is removed cleanly.
	path := filepath.Join(t.TempDir(), "ns")
	if err := netnsutil.NewAt(path); err != nil {
		t.Fatal(err)
	}
	var atInside uint64
	if err := netnsutil.DoPath(path, func() error { atInside = inode(t, "/proc/thread-self/ns/net"); return nil }); err != nil {
		t.Fatal(err)
	}
	if atInside == outside || atInside == inside {
		t.Error("NewAt did not make a namespace of its own")
	}
	if err := netnsutil.RemoveAt(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("RemoveAt left %s: %v", path, err)
	}
	if err := netnsutil.RemoveAt(path); err != nil {
		t.Errorf("RemoveAt of a missing namespace: %v", err)
	}
}
