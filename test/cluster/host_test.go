//go:build cluster

package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// hostState is what the cluster may change on the host, one sorted list of
// lines per aspect. Aspects the whole machine shares with other programs
// (links, mounts, processes, cgroups) are narrowed to the names the cluster
// uses, so another program's work does not fail the comparison (netfilter:
// every table, but only the chains and rules naming kube, cni, masquerading or
// the cluster's ranges); the sysctls and the host directories are taken whole.
type hostState map[string][]string

var (
	ourLink    = regexp.MustCompile(`^(veth|ztk8s|cni|kube|flannel|nodelocal)`)
	ourProcess = regexp.MustCompile(`^(containerd|containerd-shim.*|runc|kubelet|kube-proxy|kube-scheduler|kube-controller-manager|pause|ztnettest)$`)
	ourMount   = regexp.MustCompile(`^(/sys/fs/bpf|/sys/fs/cgroup|/run/netns$|/run/netns/cni-|/var/lib/kubelet|/var/lib/cni|/run/containerd|/run/zt)`)
	counters   = regexp.MustCompile(`\[\d+:\d+\]`)
	ourRule    = regexp.MustCompile(`(?i)kube|10\.21[78]\.|ztk8s|cni|masq`)
)

var hostSysctls = []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.route_localnet",
	"net.ipv4.conf.default.forwarding", "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.netfilter.nf_conntrack_max",
	"net.netfilter.nf_conntrack_tcp_timeout_established", "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
	"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.ipv4.conf.all.rp_filter"}

var hostDirs = []string{"/var/lib/kubelet", "/var/lib/cni", "/run/containerd", "/var/lib/containerd", "/opt/containerd",
	"/var/log/pods", "/var/log/containers", "/etc/kubernetes", "/var/run/kubernetes", "/sys/fs/bpf/zt", "/run/zt",
	"/etc/cni", "/opt/cni", "/run/ztk8s-cluster"}

func snapshotHost(c *Cluster) (hostState, error) {
	s := hostState{}
	run := func(name string, args ...string) (string, error) {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
		}
		return string(out), nil
	}
	// Links.
	out, err := run("ip", "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
		if ourLink.MatchString(name) {
			s.add("link", name)
		}
	}
	// Routes to the pod and service ranges.
	out, err = run("ip", "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "10.217.") || strings.Contains(l, "10.218.") {
			s.add("route", l)
		}
	}
	// Mounts: mount point, type and propagation.
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		mp := f[4]
		if !ourMount.MatchString(mp) && !strings.HasPrefix(mp, c.Dir) {
			continue
		}
		prop := "private"
		for _, o := range f[6:] {
			if strings.HasPrefix(o, "shared:") || strings.HasPrefix(o, "master:") {
				prop = strings.Split(o, ":")[0]
			}
		}
		s.add("mount", mp+" "+strings.Fields(post)[0]+" "+prop)
	}
	// Netfilter: every table, and every rule or chain of the cluster's.
	if out, err = run("nft", "list", "tables"); err != nil {
		return nil, err
	}
	s.lines("nft-table", out)
	if out, err = run("nft", "list", "ruleset"); err != nil {
		return nil, err
	}
	for _, l := range strings.Split(out, "\n") {
		if ourRule.MatchString(l) {
			s.add("nft", strings.TrimSpace(l))
		}
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		if out, err = run(save); err != nil {
			return nil, err
		}
		for _, l := range strings.Split(out, "\n") {
			if ourRule.MatchString(l) {
				s.add(save, counters.ReplaceAllString(l, ""))
			}
		}
	}
	// Sysctls.
	for _, k := range hostSysctls {
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(k, ".", "/"))
		v := strings.TrimSpace(string(b))
		if err != nil {
			v = "(absent)"
		}
		s.add("sysctl", k+"="+v)
	}
	// Host directories, with everything in them.
	for _, d := range hostDirs {
		if _, err := os.Lstat(d); err != nil {
			continue
		}
		s.add("path", d)
		_ = filepath.Walk(d, func(p string, _ os.FileInfo, err error) error {
			if err == nil && p != d {
				s.add("path", p)
			}
			return nil
		})
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "cni-") {
				s.add("path", "/run/netns/"+e.Name())
			}
		}
	}
	// Cgroups: kubelet's and runc's, in every hierarchy.
	hier, err := filepath.Glob("/sys/fs/cgroup/*")
	if err != nil {
		return nil, err
	}
	for _, h := range hier {
		_ = filepath.Walk(h, func(p string, fi os.FileInfo, err error) error {
			if err != nil || !fi.IsDir() {
				return nil
			}
			n := filepath.Base(p)
			if strings.HasPrefix(n, "ztk8s") || strings.HasPrefix(n, "kubepods") {
				s.add("cgroup", p)
			}
			if strings.Count(strings.TrimPrefix(p, h), "/") >= 4 {
				return filepath.SkipDir
			}
			return nil
		})
	}
	// Processes of the cluster.
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return nil, err
	}
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if ourProcess.MatchString(filepath.Base(argv[0])) || strings.Contains(string(b), c.Dir) {
			s.add("process", strings.Join(argv, " "))
		}
	}
	for k := range s {
		sort.Strings(s[k])
	}
	return s, nil
}

func (s hostState) add(k, v string) { s[k] = append(s[k], v) }

func (s hostState) lines(k, text string) {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) != "" {
			s.add(k, l)
		}
	}
}

// diff lists what after has that s had not (+) and the reverse (-).
func (s hostState) diff(after hostState) string {
	keys := map[string]bool{}
	for k := range s {
		keys[k] = true
	}
	for k := range after {
		keys[k] = true
	}
	var names []string
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		was := map[string]int{}
		for _, l := range s[k] {
			was[l]++
		}
		for _, l := range after[k] {
			if was[l] > 0 {
				was[l]--
				continue
			}
			fmt.Fprintf(&b, "  + %s: %s\n", k, l)
		}
		for _, l := range s[k] {
			if was[l] > 0 {
				was[l]--
				fmt.Fprintf(&b, "  - %s: %s\n", k, l)
			}
		}
	}
	return b.String()
}
