// Command zt-agent enforces Kubernetes NetworkPolicies on its node with
// eBPF. It runs as a DaemonSet (see deploy/).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"

	"github.com/ztnet/zt/pkg/agent"
	"github.com/ztnet/zt/pkg/datapath"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	os.Exit(code)
}

// run parses flags (each overridable by ZT_<FLAG> in the environment,
// e.g. ZT_NODE_NAME; NODE_NAME also works for --node-name), then runs.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	cfg := agent.DefaultConfig()
	fs := flag.NewFlagSet("zt-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	logFormat := fs.String("log-format", "json", "log format: json or console")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&cfg.NodeName, "node-name", "", "this node's name (pods with this spec.nodeName are enforced here)")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	fs.StringVar(&cfg.BPFFSRoot, "bpffs-root", cfg.BPFFSRoot, "bpffs directory for pinned maps and links")
	fs.BoolVar(&cfg.NoMountBPFFS, "no-mount-bpffs", false, "refuse to start unless the host mounted bpffs under --bpffs-root (set in containers)")
	fs.StringVar(&cfg.HealthAddr, "health-addr", cfg.HealthAddr, "address for /healthz, /readyz and /metrics (empty disables)")
	fs.DurationVar(&cfg.MinSyncInterval, "min-sync-interval", cfg.MinSyncInterval, "minimum time between two kernel syncs (events in between are coalesced)")
	fs.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", cfg.ReconcileInterval, "how often the kernel maps are dumped and repaired")
	fs.DurationVar(&cfg.RetryInterval, "retry-interval", cfg.RetryInterval, "first retry delay after a failed sync (doubles)")
	fs.BoolVar(&cfg.DenyFromHost, "deny-from-host", false, "do not allow traffic from the node (kubelet probes) into isolated pods")
	fs.BoolVar(&cfg.ClusterDefaultDeny, "cluster-default-deny", false, "isolate every pod both ways unless a policy allows (zt's zero-trust option)")
	fs.StringVar(&cfg.DefaultDenyExemptions, "default-deny-exemptions", "", "YAML file with the cluster-default-deny exemptions")
	fs.BoolVar(&cfg.Audit, "audit", false, "report would-be drops as audit events but let the traffic pass")
	fs.BoolVar(&cfg.SocketHooks, "socket-hooks", cfg.SocketHooks, "attach cgroup connect/sendmsg hooks so denied connects fail at once with EPERM")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", "", "cgroup v2 mount for the socket hooks (default: found in /proc/self/mountinfo)")
	fs.BoolVar(&cfg.Flows.Disabled, "flows-disabled", false, "record no flows and serve no flows API")
	fs.StringVar(&cfg.Flows.Socket, "flows-socket", cfg.Flows.Socket, "unix socket of the flows API read by ztctl flows (empty disables)")
	fs.StringVar(&cfg.Flows.Addr, "flows-addr", cfg.Flows.Addr, "loopback address of the flows API, for kubectl port-forward (empty disables)")
	fs.StringVar(&cfg.Flows.Dir, "flows-dir", cfg.Flows.Dir, "directory of the on-disk flow journal (empty: memory only)")
	fs.Int64Var(&cfg.Flows.JournalMaxBytes, "flows-journal-max-bytes", cfg.Flows.JournalMaxBytes, "size cap of the flow journal; the oldest files are deleted first")
	fs.IntVar(&cfg.Flows.AllowedSample, "flows-allowed-sample", 0, "also record allowed new connections, 1 in N (0: drops and audits only)")
	fs.Func("service-cidrs", "comma-separated Service IP ranges, added to the cluster's ServiceCIDR objects", func(v string) error {
		cfg.ServiceCIDRs = nil
		for _, c := range strings.Split(v, ",") {
			if c = strings.TrimSpace(c); c == "" {
				continue
			}
			p, err := netip.ParsePrefix(c)
			if err != nil {
				return err
			}
			cfg.ServiceCIDRs = append(cfg.ServiceCIDRs, p.Masked())
		}
		return nil
	})
	fs.Func("service-mark", fmt.Sprintf("skb mark bit flagging egress to Service addresses, decided after kube-proxy's NAT (0: decide before it; default %#x)", cfg.ServiceMark), func(v string) error {
		m, err := strconv.ParseUint(v, 0, 32)
		if err != nil {
			return err
		}
		cfg.ServiceMark = uint32(m)
		return nil
	})
	fs.Func("map-sizes", "kernel map capacities, comma-separated NAME=N of ipcache, endpoints, policy, conntrack, netns, events (ring buffer bytes); a change of an existing map migrates it", func(v string) error {
		return parseMapSizes(v, &cfg.MapSizes)
	})
	netnsDirs := fs.String("netns-dirs", strings.Join(cfg.NetnsDirs, ","), "comma-separated folders holding pod network namespaces")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := envOverrides(fs, getenv); err != nil {
		fmt.Fprintln(stderr, "zt-agent:", err)
		return 2
	}
	cfg.NetnsDirs = strings.Split(*netnsDirs, ",")

	log, err := newLogger(*logFormat, *logLevel, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "zt-agent:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	// client-go logs through klog: route it into the same logger.
	klog.SetLogger(zapr.NewLogger(log.Named("client-go")))

	a, err := agent.New(cfg, log)
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	if err := a.Run(ctx); err != nil {
		log.Error("stopped", zap.Error(err))
		return 1
	}
	return 0
}

// parseMapSizes parses NAME=N[,NAME=N...] into s.
func parseMapSizes(v string, s *datapath.MapSizes) error {
	fields := map[string]*uint32{
		"ipcache": &s.IPCache, "endpoints": &s.Endpoints, "policy": &s.Policy,
		"conntrack": &s.Conntrack, "netns": &s.Netns, "events": &s.EventsBytes,
	}
	for _, kv := range strings.Split(v, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		name, num, ok := strings.Cut(kv, "=")
		f, known := fields[name]
		if !ok || !known {
			return fmt.Errorf("%q: want NAME=N with NAME one of ipcache, endpoints, policy, conntrack, netns, events", kv)
		}
		n, err := strconv.ParseUint(num, 0, 32)
		if err != nil || n == 0 {
			return fmt.Errorf("%q: want a positive number", kv)
		}
		*f = uint32(n)
	}
	return nil
}

// envOverrides applies ZT_<FLAG> variables to flags not set on the command
// line (flags win, so a manifest's args stay authoritative).
func envOverrides(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		name := "ZT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v := getenv(name)
		if v == "" && f.Name == "node-name" {
			name, v = "NODE_NAME", getenv("NODE_NAME")
		}
		if v == "" {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %v", name, v, err))
		}
	})
	return errors.Join(errs...)
}

func newLogger(format, level string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var enc zapcore.Encoder
	switch format {
	case "json":
		c := zap.NewProductionEncoderConfig()
		c.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(c)
	case "console":
		c := zap.NewDevelopmentEncoderConfig()
		c.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(c)
	default:
		return nil, fmt.Errorf("--log-format %q: want json or console", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), lvl)), nil
}
