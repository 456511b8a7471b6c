package kernel

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/pkg/agent"
	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/mapsync"
	"github.com/ztnet/zt/pkg/policy"
)

// helperEnv selects the loader mode of the test binary: its value is the
// path of a loaderConfig.
const helperEnv = "ZT_KERNEL_TEST_LOADER"

func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		os.Exit(loaderMain(path))
	}
	code := m.Run()
	if err := checkLeftovers(); err != nil {
		fmt.Fprintln(os.Stderr, "leftovers:", err)
		if code == 0 {
			code = 1
		}
	} else {
		created.Lock()
		fmt.Printf("leftovers: none (%d namespaces, %d bpffs roots, %d BPF links created and removed)\n",
			created.netns, len(created.roots), len(created.links))
		created.Unlock()
	}
	os.Exit(code)
}

// loaderConfig is what a loader process does: what the agent does at
// start, from a file instead of the API server.
type loaderConfig struct {
	Root      string // bpffs root to open (adopting its pins)
	NodeNetns string // namespace the host veths live in (set by startLoader)
	Snapshot  policy.Snapshot
	Bindings  []mapsync.Binding
	// Renumber numbers identities above every identity in the adopted
	// maps (policy.Options.FirstIdentity), as the agent does; Hints also
	// keeps the numbers the adopted ipcache shows (IdentityHints), as the
	// agent does since it can.
	Renumber, Hints bool
	Result          string        // where the loaderResult goes
	MaxLife         time.Duration // exit after this long if nobody kills us
}

type loaderResult struct {
	Stats         mapsync.Stats
	Writes        int
	MaxAdopted    uint32
	FirstIdentity uint32
	Error         string
}

// loaderMain opens the datapath at the configured root, reconciles the
// desired state of the snapshot, attaches the tc programs in the node
// namespace, reports, prints READY and sleeps until killed.
func loaderMain(path string) int {
	var cfg loaderConfig
	res, err := func() (loaderResult, error) {
		var res loaderResult
		raw, err := os.ReadFile(path)
		if err != nil {
			return res, err
		}
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return res, fmt.Errorf("config: %w", err)
		}
		// The whole loader runs on this thread, inside the node namespace:
		// tcx attaches by ifindex, which is per namespace.
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(cfg.NodeNetns)
		if err != nil {
			return res, err
		}
		if err := netns.Set(ns); err != nil {
			return res, fmt.Errorf("enter %s: %w", cfg.NodeNetns, err)
		}
		dp, err := datapath.Open(datapath.Options{BPFFSRoot: cfg.Root})
		if err != nil {
			return res, fmt.Errorf("open datapath: %w", err)
		}
		defer dp.Close() // pins and links stay
		maxID, hints, err := agent.AdoptedIdentities(dp)
		if err != nil {
			return res, err
		}
		res.MaxAdopted = uint32(maxID)
		opts := policy.Options{}
		if cfg.Renumber {
			opts.FirstIdentity = maxID + 1
			res.FirstIdentity = uint32(opts.FirstIdentity)
		}
		if cfg.Hints {
			opts.IdentityHints = hints
		}
		c := policy.Build(cfg.Snapshot, opts)
		desired, err := mapsync.Desired(c, cfg.Bindings, mapsync.Options{})
		if err != nil {
			return res, fmt.Errorf("desired: %w", err)
		}
		res.Stats, err = mapsync.New(dp).Reconcile(desired)
		res.Writes = res.Stats.Writes()
		if err != nil {
			return res, fmt.Errorf("reconcile: %w", err)
		}
		for _, b := range cfg.Bindings {
			if _, err := dp.AttachEndpoint(int(b.Ifindex)); err != nil {
				return res, fmt.Errorf("attach %d: %w", b.Ifindex, err)
			}
		}
		return res, nil
	}()
	if err != nil {
		res.Error = err.Error()
	}
	if cfg.Result != "" {
		raw, _ := json.Marshal(res)
		tmp := cfg.Result + ".tmp"
		if werr := os.WriteFile(tmp, raw, 0o600); werr == nil {
			_ = os.Rename(tmp, cfg.Result)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loader:", err)
		return 1
	}
	fmt.Println("READY")
	time.Sleep(cfg.MaxLife)
	return 0
}

// loader is a running loader process.
type loader struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	exited chan struct{}
	res    loaderResult
}

// startLoader runs the test binary in loader mode and waits for READY.
// The node namespace is passed as an inherited descriptor (fd 3).
func startLoader(t testing.TB, node netns.NsHandle, cfg loaderConfig) *loader {
	t.Helper()
	dir := t.TempDir()
	cfg.NodeNetns = "/proc/self/fd/3"
	dup, err := unix.Dup(int(node))
	if err != nil {
		t.Fatal(err)
	}
	nsFile := os.NewFile(uintptr(dup), "node-netns")
	defer nsFile.Close()
	cfg.Result = filepath.Join(dir, "result.json")
	if cfg.MaxLife == 0 {
		cfg.MaxLife = 60 * time.Second
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	l := &loader{stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	l.cmd = exec.Command(os.Args[0], "-test.run=^$")
	l.cmd.Env = append(os.Environ(), helperEnv+"="+path)
	l.cmd.ExtraFiles = []*os.File{nsFile}
	l.cmd.Stderr = l.stderr
	l.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := l.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("start loader: %v", err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "READY" {
				ok = true
				break
			}
		}
		ready <- ok
		for sc.Scan() {
		}
		_ = l.cmd.Wait()
		close(l.exited)
	}()
	t.Cleanup(l.kill)
	select {
	case ok := <-ready:
		if !ok {
			<-l.exited
			t.Fatalf("loader failed: %s", l.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("loader not ready after 30s: %s", l.stderr.String())
	}
	raw, err = os.ReadFile(cfg.Result)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &l.res); err != nil {
		t.Fatal(err)
	}
	t.Logf("loader pid %d ready after %v: %+v", l.cmd.Process.Pid, time.Since(start).Round(time.Millisecond), l.res)
	return l
}

// kill sends SIGKILL (no cleanup of any kind in the process) and reaps it.
func (l *loader) kill() {
	select {
	case <-l.exited:
		return
	default:
	}
	_ = l.cmd.Process.Signal(syscall.SIGKILL)
	<-l.exited
}
