package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/ztnet/zt/pkg/datapath"
)

// Config is the agent's configuration. cmd/zt-agent fills it from flags
// with environment overrides and calls Validate.
type Config struct {
	// NodeName is this node (from the downward API): pods with this
	// spec.nodeName are enforced here.
	NodeName string
	// Kubeconfig is a kubeconfig file; empty means in-cluster.
	Kubeconfig string
	// BPFFSRoot is where maps and links are pinned.
	BPFFSRoot string
	// HealthAddr serves /healthz, /readyz and /metrics ("" disables).
	HealthAddr string
	// MinSyncInterval bounds how often the kernel is synced: a burst of
	// events within it becomes one sync.
	MinSyncInterval time.Duration
	// ReconcileInterval is how often the kernel maps are dumped and
	// repaired against the desired state.
	ReconcileInterval time.Duration
	// RetryInterval is the first wait after a failed sync or a pod whose
	// interface was not found; it doubles up to ReconcileInterval.
	RetryInterval time.Duration
	// DenyFromHost: do not allow traffic from the node into isolated pods.
	DenyFromHost bool
	// ClusterDefaultDeny isolates every pod both ways unless allowed;
	// DefaultDenyExemptions is its exemption file ("" = built-in defaults).
	ClusterDefaultDeny    bool
	DefaultDenyExemptions string
	// Audit passes would-be drops, reporting them as audit.
	Audit bool
	// SocketHooks attaches the cgroup connect/sendmsg programs (early
	// EPERM); CgroupRoot is the cgroup v2 mount ("" = find it).
	SocketHooks bool
	CgroupRoot  string
	// NetnsDirs are searched for pod network namespaces (bind mounts made
	// by the container runtime) to key the socket hooks.
	NetnsDirs []string
	// NoMountBPFFS refuses to start when BPFFSRoot is not on a bpffs the
	// host mounted (the DaemonSet sets it: a bpffs the agent mounted inside
	// its container would vanish, with every pin, when it restarts).
	NoMountBPFFS bool
	// ServiceCIDRs are Service IP ranges added to those of the cluster's
	// ServiceCIDR objects (for clusters whose agent may not read them).
	ServiceCIDRs []netip.Prefix
	// ServiceMark is the skb mark bit flagging egress to a Service address
	// whose verdict waits for kube-proxy's NAT (decided on the pod it
	// reaches). 0 decides Service addresses before the NAT, as sent.
	ServiceMark uint32
	// MapSizes overrides the kernel map capacities.
	MapSizes datapath.MapSizes
	// Flows configures flow records and their API (see flows.go).
	Flows FlowsConfig
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		BPFFSRoot:         datapath.DefaultBPFFSRoot,
		HealthAddr:        ":9876",
		MinSyncInterval:   100 * time.Millisecond,
		ReconcileInterval: 5 * time.Minute,
		RetryInterval:     time.Second,
		SocketHooks:       true,
		ServiceMark:       datapath.DefaultServiceMark,
		NetnsDirs:         []string{"/run/netns", "/var/run/netns"},
		Flows:             DefaultFlowsConfig(),
	}
}

// Validate checks the configuration and says what to fix.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required (set NODE_NAME from the downward API: fieldRef spec.nodeName)"))
	}
	if c.BPFFSRoot == "" {
		errs = append(errs, errors.New("--bpffs-root must not be empty"))
	}
	if c.HealthAddr != "" {
		if _, _, err := net.SplitHostPort(c.HealthAddr); err != nil {
			errs = append(errs, fmt.Errorf("--health-addr %q: %v", c.HealthAddr, err))
		}
	}
	if c.MinSyncInterval <= 0 || c.MinSyncInterval > time.Minute {
		errs = append(errs, fmt.Errorf("--min-sync-interval %s: want more than 0 and at most 1m", c.MinSyncInterval))
	}
	if c.ReconcileInterval < time.Second {
		errs = append(errs, fmt.Errorf("--reconcile-interval %s: want at least 1s", c.ReconcileInterval))
	}
	if c.RetryInterval <= 0 {
		errs = append(errs, fmt.Errorf("--retry-interval %s: want more than 0", c.RetryInterval))
	}
	if c.Kubeconfig != "" {
		if _, err := os.Stat(c.Kubeconfig); err != nil {
			errs = append(errs, fmt.Errorf("--kubeconfig: %v", err))
		}
	}
	if c.DefaultDenyExemptions != "" {
		if !c.ClusterDefaultDeny {
			errs = append(errs, errors.New("--default-deny-exemptions needs --cluster-default-deny"))
		}
		if _, err := os.Stat(c.DefaultDenyExemptions); err != nil {
			errs = append(errs, fmt.Errorf("--default-deny-exemptions: %v", err))
		}
	}
	errs = append(errs, c.Flows.validate()...)
	return errors.Join(errs...)
}
