package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/reach"
)

func netLinkByName(name string) (netlink.Link, error) { return netlink.LinkByName(name) }
func netLinkDel(l netlink.Link) error                 { return netlink.LinkDel(l) }

// removePins detaches and unpins everything an agent pinned under root
// (agents leave their pins on purpose: they keep enforcing), from inside
// the node's namespace when it still exists.
func removePins(root, nodeNS string) error {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	remove := func() error {
		dp, err := datapath.Open(datapath.Options{BPFFSRoot: root, Migrate: true})
		if err != nil {
			// Unpinning is enough to detach links nobody holds open.
			return errors.Join(fmt.Errorf("open datapath %s: %w", root, err), os.RemoveAll(root))
		}
		return errors.Join(dp.Remove(), dp.Close())
	}
	if nodeNS != "" {
		if _, err := os.Stat(nodeNS); err == nil {
			if err := inNetns(nodeNS, remove); err == nil {
				return nil
			}
		}
	}
	return remove()
}

// RunOptions tune Run.
type RunOptions struct {
	Probe ProbeOptions
}

// Run is `ztlab run`: up with the bundle, probe, down. The lab is removed
// on every path, also when ctx is cancelled (Ctrl-C).
func Run(ctx context.Context, cfg Config, b *bundle.Bundle, o RunOptions) (rep reach.Report, err error) {
	start := time.Now()
	l, err := Up(ctx, cfg, b)
	if err != nil {
		return rep, err
	}
	defer func() {
		if err != nil {
			l.dumpAgentLogs()
		}
		if derr := l.Down(); derr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", derr))
		}
		l.logf("done in %s", time.Since(start).Round(time.Millisecond))
	}()
	return l.Probe(ctx, o.Probe)
}
