package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf/link"
)

// created tracks what this test process made in the kernel, so TestMain
// can prove it is all gone afterwards.
var created struct {
	sync.Mutex
	netns       int // anonymous namespaces created
	netnsClosed int // ... and their handles closed
	roots       []string
	links       []link.ID
}

func track(f func()) {
	created.Lock()
	defer created.Unlock()
	f()
}

// recordLinks remembers the ids of the links pinned under root.
func recordLinks(root string) {
	ents, _ := os.ReadDir(filepath.Join(root, "links"))
	for _, e := range ents {
		l, err := link.LoadPinnedLink(filepath.Join(root, "links", e.Name()), nil)
		if err != nil {
			continue
		}
		if info, err := l.Info(); err == nil {
			track(func() { created.links = append(created.links, info.ID) })
		}
		l.Close()
	}
}

// checkLeftovers reports any namespace, bpffs root or BPF link (tcx or
// cgroup) this process created that still exists.
func checkLeftovers() error {
	created.Lock()
	defer created.Unlock()
	var errs []error
	if created.netns != created.netnsClosed {
		errs = append(errs, fmt.Errorf("%d network namespaces created, %d closed", created.netns, created.netnsClosed))
	}
	for _, r := range created.roots {
		if _, err := os.Stat(r); err == nil {
			errs = append(errs, fmt.Errorf("bpffs root %s left behind", r))
		}
	}
	// Links are freed when their last reference goes; allow a moment.
	deadline := time.Now().Add(2 * time.Second)
	for {
		var alive []link.ID
		it := new(link.Iterator)
		for it.Next() {
			if slices.Contains(created.links, it.ID) {
				alive = append(alive, it.ID)
			}
		}
		if err := it.Err(); err != nil {
			errs = append(errs, fmt.Errorf("iterate links: %w", err))
		}
		it.Close()
		if len(alive) == 0 {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("BPF links %v left attached", alive))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.Join(errs...)
}
