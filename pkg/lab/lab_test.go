package lab_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/lab"
	"github.com/ztnet/zt/pkg/reach"
)

// env is one lab's folder and name, unique per test; cleanup checks that
// the lab left nothing behind.
type env struct {
	t    *testing.T
	dir  string
	name string
	// ownOnly: other labs run at once in this process; only processes
	// naming dir or recorded in pids, and the root links in links, are
	// this lab's.
	ownOnly bool
	pids    []int
	links   []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	e := &env{t: t, dir: filepath.Join(os.TempDir(), "ztlab-test-"+tag), name: "zt" + tag}
	t.Cleanup(func() {
		if t.Failed() {
			if st, err := lab.LoadState(e.dir); err == nil {
				for _, n := range st.Nodes {
					if b, err := os.ReadFile(n.AgentLog); err == nil {
						t.Logf("agent log of %s:\n%s", n.Name, lastLines(string(b), 30))
					}
				}
			}
			// Never leave a lab behind, even when the test failed.
			_, _, _ = e.ztlab("down")
		}
		for _, l := range e.leftovers() {
			t.Errorf("left behind: %s", l)
		}
	})
	return e
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ztlab runs the ztlab binary on this env's lab.
func (e *env) ztlab(args ...string) (stdout, stderr string, err error) {
	return e.ztlabIn(nil, args...)
}

func (e *env) ztlabIn(attr *syscall.SysProcAttr, args ...string) (stdout, stderr string, err error) {
	all := append([]string{args[0], "--dir", e.dir}, args[1:]...)
	if args[0] == "run" || args[0] == "up" {
		all = append(all, "--name", e.name, "--agent-bin", agentBin, "--k8s-bin", k8sBin)
	}
	cmd := exec.Command(ztlabBin, all...)
	cmd.SysProcAttr = attr
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func (e *env) mustZtlab(args ...string) string {
	e.t.Helper()
	out, stderr, err := e.ztlab(args...)
	e.t.Logf("ztlab %s:\n%s", strings.Join(args, " "), strings.TrimSpace(stderr))
	if err != nil {
		e.t.Fatalf("ztlab %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func rootLinks() map[string]bool {
	out := map[string]bool{}
	links, _ := netlink.LinkList()
	for _, l := range links {
		out[l.Attrs().Name] = true
	}
	return out
}

// leftovers lists what of this env's lab still exists: its folder, mounts
// under it, its bpffs roots, its labs' links in the root namespace, and
// processes of the lab (agents, pod servers, etcd and kube-apiserver).
func (e *env) leftovers() []string {
	var out []string
	if _, err := os.Stat(e.dir); err == nil {
		out = append(out, "lab folder "+e.dir)
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(mi), "\n") {
			if strings.Contains(l, e.dir) {
				out = append(out, "mount "+l)
			}
		}
	}
	if ents, err := os.ReadDir("/sys/fs/bpf"); err == nil {
		for _, d := range ents {
			if strings.HasPrefix(d.Name(), e.name+"-") {
				out = append(out, "bpffs root /sys/fs/bpf/"+d.Name())
			}
		}
	}
	// Only this env's labs' links: other packages' tests run labs at the
	// same time.
	own := append([]string{lab.RootLinkName(e.dir)}, e.links...)
	for name := range rootLinks() {
		if slices.Contains(own, name) {
			out = append(out, "root link "+name)
		}
	}
	// Processes go a moment after their namespaces' last user: allow it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs := e.processes()
		if len(procs) == 0 || time.Now().After(deadline) {
			out = append(out, procs...)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return out
}

func (e *env) processes() []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid := d.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		if st, err := os.ReadFile("/proc/" + pid + "/stat"); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
				continue
			}
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if e.ownOnly {
			if strings.Contains(cmd, e.dir) || slices.ContainsFunc(e.pids, func(p int) bool { return fmt.Sprint(p) == pid }) {
				out = append(out, fmt.Sprintf("process %s: %s", pid, cmd))
			}
			continue
		}
		if strings.HasPrefix(cmd, agentBin) || strings.HasPrefix(cmd, ztlabBin+" serve") || strings.Contains(cmd, e.dir) {
			out = append(out, fmt.Sprintf("process %s: %s", pid, cmd))
		}
	}
	return out
}

// expected is ztctl's answer: reach.Compute on the same bundle.
func expected(t *testing.T, files ...string) reach.Report {
	t.Helper()
	b, err := bundle.Load(files...)
	if err != nil {
		t.Fatal(err)
	}
	return compute(t, b)
}

func parseReport(t *testing.T, out string) reach.Report {
	t.Helper()
	var r reach.Report
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("probe output is no reachability JSON: %v\n%s", err, out)
	}
	return r
}

// agree checks that the probes and the compiler agree on every row, and
// that the JSON is byte for byte what `ztctl reach -o json` prints.
func agree(t *testing.T, want reach.Report, gotJSON string) reach.Report {
	t.Helper()
	got := parseReport(t, gotJSON)
	if d := lab.Diff(want, got); len(d) > 0 {
		t.Errorf("probes disagree with reach.Compute on %d of %d rows:\n  %s", len(d), len(want.Results), strings.Join(d, "\n  "))
	}
	var wb bytes.Buffer
	if err := want.WriteJSON(&wb); err != nil {
		t.Fatal(err)
	}
	if len(lab.Diff(want, got)) == 0 && wb.String() != gotJSON {
		t.Errorf("same verdicts but not the same JSON text as ztctl reach -o json")
	}
	allowed := 0
	for _, r := range got.Results {
		if r.Verdict == reach.Allow {
			allowed++
		}
	}
	t.Logf("%d rows, %d allowed, %d denied", len(got.Results), allowed, len(got.Results)-allowed)
	return got
}

func shop(f string) string { return filepath.Join(repoRoot, "examples", "shop", f) }

func TestShop(t *testing.T) {
	for _, nodes := range []int{1, 2} {
		t.Run(fmt.Sprintf("nodes=%d", nodes), func(t *testing.T) {
			e := newEnv(t)
			files := []string{shop("cluster.yaml"), shop("policies.yaml")}
			out := e.mustZtlab("run", "--nodes", fmt.Sprint(nodes), "-f", files[0], "-f", files[1], "-o", "json")
			agree(t, expected(t, files...), out)
		})
	}
}

// denyAll isolates every pod of x, y and z for ingress: every probe waits
// for its timeouts, the slowest case.
const denyAll = `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: "x", name: deny-all}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: "y", name: deny-all}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: "z", name: deny-all}
spec: {podSelector: {}, policyTypes: [Ingress]}
`

// denyAllBundle writes the xyz world with denyAll as one bundle file.
func denyAllBundle(t *testing.T) string {
	t.Helper()
	world, err := os.ReadFile(filepath.Join(repoRoot, "pkg", "policy", "testdata", "worlds", "xyz-v4.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "deny-all.yaml")
	if err := os.WriteFile(file, append(world, denyAll...), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestNinePodsSixPortsUnderAMinute is the requirement: `ztlab run`
// over 9 pods with 6 ports each, every probe denied at the destination
// (so every one waits out its timeouts), on two nodes, end to end (API
// server, agents, probes, teardown) in under a minute.
func TestNinePodsSixPortsUnderAMinute(t *testing.T) {
	e := newEnv(t)
	file := denyAllBundle(t)
	start := time.Now()
	out := e.mustZtlab("run", "--nodes", "2", "-f", file, "-o", "json")
	took := time.Since(start)
	got := agree(t, expected(t, file), out)
	if len(got.Results) != 432 {
		t.Errorf("%d rows, want 432", len(got.Results))
	}
	t.Logf("ztlab run, 9 pods x 6 ports, all denied, 2 nodes: %s", took.Round(time.Millisecond))
	if took >= time.Minute {
		t.Errorf("ztlab run took %s, want under a minute", took)
	}
}

// TestInteractive: up (two nodes, the shop without policies), probe,
// apply the policies, probe, ztctl against the live cluster, a second up
// over the running lab (as after a crash) that starts clean, down.
func TestInteractive(t *testing.T) {
	e := newEnv(t)
	out := e.mustZtlab("up", "--nodes", "2", "-f", shop("cluster.yaml"))
	for _, want := range []string{"kubeconfig:", "agent http://", "node node2", "env:        eval"} {
		if !strings.Contains(out, want) {
			t.Errorf("ztlab up does not print %q:\n%s", want, out)
		}
	}
	t.Logf("ztlab up:\n%s", out)
	agree(t, expected(t, shop("cluster.yaml")), e.mustZtlab("probe", "-o", "json"))

	e.mustZtlab("apply", shop("policies.yaml"))
	agree(t, expected(t, shop("cluster.yaml"), shop("policies.yaml")), e.mustZtlab("probe", "-o", "json"))
	// Applying what is already there changes nothing: the agents have
	// realized it already, and apply returns at once.
	start := time.Now()
	e.mustZtlab("apply", shop("policies.yaml"))
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("ztlab apply of an unchanged bundle took %s", took.Round(time.Millisecond))
	} else {
		t.Logf("ztlab apply of an unchanged bundle: %s", took.Round(time.Millisecond))
	}

	// ztctl on what the live API server holds agrees with the probes.
	st, err := lab.LoadState(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	dump, err := exec.Command(st.Kubectl, "--kubeconfig", st.AdminKubeconfig, "--cache-dir", filepath.Join(e.dir, "kubectl-cache"),
		"get", "ns,pods,netpol", "-A", "-o", "yaml").Output()
	if err != nil {
		t.Fatalf("kubectl get: %v", err)
	}
	live := filepath.Join(t.TempDir(), "live.yaml")
	if err := os.WriteFile(live, dump, 0o644); err != nil {
		t.Fatal(err)
	}
	agree(t, expected(t, live), e.mustZtlab("probe", "-o", "json"))

	// ztlab sync takes the policies away again (apply only adds).
	e.mustZtlab("sync", shop("cluster.yaml"))
	agree(t, expected(t, shop("cluster.yaml")), e.mustZtlab("probe", "-o", "json"))

	// A second up over a lab that was never taken down (a crash) removes
	// the leftovers first and comes up clean.
	// The root link's name comes from the folder, so the new lab's has the
	// same name: the first lab's link is gone when its index is.
	oldRoot, err := netlink.LinkByName(st.RootLink)
	if err != nil {
		t.Fatalf("root link %s of the first lab: %v", st.RootLink, err)
	}
	e.mustZtlab("up", "-f", shop("cluster.yaml"), "-f", shop("policies.yaml"))
	if l, err := netlink.LinkByIndex(oldRoot.Attrs().Index); err == nil && l.Attrs().Name == st.RootLink {
		t.Errorf("root link %s (index %d) of the first lab still exists", st.RootLink, oldRoot.Attrs().Index)
	}
	agree(t, expected(t, shop("cluster.yaml"), shop("policies.yaml")), e.mustZtlab("probe", "-o", "json"))
	e.mustZtlab("down")
}

// TestCrashThenUp: the lab's processes die by SIGKILL (as if ztlab, the
// machine's OOM killer or a user killed everything); the next up removes
// every leftover recorded in the state and starts clean.
func TestCrashThenUp(t *testing.T) {
	e := newEnv(t)
	e.mustZtlab("up", "-f", shop("cluster.yaml"))
	st, err := lab.LoadState(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Procs {
		_ = syscall.Kill(p.Pid, syscall.SIGKILL)
	}
	e.mustZtlab("up", "-f", shop("cluster.yaml"), "-f", shop("policies.yaml"))
	agree(t, expected(t, shop("cluster.yaml"), shop("policies.yaml")), e.mustZtlab("probe", "-o", "json"))
	e.mustZtlab("down")
}

// TestInterrupt: Ctrl-C (SIGINT) during the probes of `ztlab run` removes
// everything.
func TestInterrupt(t *testing.T) {
	e := newEnv(t)
	file := denyAllBundle(t)
	cmd := exec.Command(ztlabBin, "run", "--dir", e.dir, "--name", e.name, "--agent-bin", agentBin, "--k8s-bin", k8sBin, "-f", file)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var log []string
	interrupted := false
	for sc.Scan() {
		log = append(log, sc.Text())
		if strings.Contains(sc.Text(), "lab up in") {
			interrupted = true
			time.Sleep(500 * time.Millisecond) // into the probes
			_ = cmd.Process.Signal(syscall.SIGINT)
		}
	}
	err = cmd.Wait()
	t.Logf("ztlab run, interrupted:\n%s", strings.Join(log, "\n"))
	if !interrupted {
		t.Fatalf("the lab never came up: %v", err)
	}
	if err == nil {
		t.Errorf("interrupted ztlab run exited 0")
	}
}

// TestNotRoot: without root ztlab refuses to run and says why.
func TestNotRoot(t *testing.T) {
	e := &env{t: t, dir: t.TempDir(), name: "ztnoroot"}
	for _, args := range [][]string{{"run", "-f", shop("cluster.yaml")}, {"up"}, {"down"}} {
		_, stderr, err := e.ztlabIn(&syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}, args...)
		if err == nil || !strings.Contains(stderr, "must run as root") {
			t.Errorf("ztlab %s as nobody: err %v, stderr %q; want a refusal naming root", args[0], err, stderr)
		}
	}
}
