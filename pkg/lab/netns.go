package lab

import (
	"fmt"
	"os"
	"os/exec"

	"github.com/ztnet/zt/internal/netnsutil"
)

// Network namespaces of the lab are bind mounts on files under the lab's
// own folder (never /run/netns: those can become undeletable when another
// process runs `ip netns add` meanwhile), so they outlive `ztlab up` and
// the agent finds the pods' namespaces with --netns-dirs.
var (
	// createNetns makes a new network namespace bind-mounted on path.
	createNetns = netnsutil.NewAt
	// removeNetns unmounts and removes a namespace file (missing is fine).
	removeNetns = netnsutil.RemoveAt
	// inNetns runs fn on a locked OS thread inside the namespace at path;
	// sockets fn creates stay in that namespace after it returns.
	inNetns = netnsutil.DoPath
	// inNetnsFd is inNetns with an open namespace descriptor.
	inNetnsFd = netnsutil.Do
)

// startInNetns starts cmd inside the namespace at path: the child is
// forked from a thread that joined it.
func startInNetns(path string, cmd *exec.Cmd) error {
	return inNetns(path, cmd.Start)
}

// setSysctls writes /proc/sys values inside the namespace at path.
func setSysctls(path string, kv map[string]string) error {
	return inNetns(path, func() error {
		// /proc/sys/net is resolved in the opening thread's namespace.
		for k, v := range kv {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
			}
		}
		return nil
	})
}
