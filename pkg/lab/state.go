package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/policy"
	"github.com/ztnet/zt/pkg/reach"
)

// DefaultDir is where `ztlab up` keeps a lab's state, logs, kubeconfigs
// and namespace files.
const DefaultDir = "/run/ztlab"

// StateFile is the state's name inside the lab folder.
const StateFile = "state.json"

// State records everything a lab created, written after every step, so
// `ztlab down` (or the next `ztlab up`) can remove it after a crash.
type State struct {
	Name    string    `json:"name"`
	Dir     string    `json:"dir"`
	Created time.Time `json:"created"`

	APIServer       string `json:"apiServer,omitempty"`
	AdminKubeconfig string `json:"adminKubeconfig,omitempty"`
	AgentKubeconfig string `json:"agentKubeconfig,omitempty"`
	Kubectl         string `json:"kubectl,omitempty"`

	RootLink string `json:"rootLink,omitempty"`
	Fabric   string `json:"fabric,omitempty"`
	FabricNS string `json:"fabricNetns,omitempty"`

	// Mounts are namespace files (bind mounts), BPFFS the agents' pin roots.
	Mounts []string `json:"mounts,omitempty"`
	BPFFS  []string `json:"bpffs,omitempty"`
	Procs  []Proc   `json:"processes,omitempty"`
	Nodes  []Node   `json:"nodes,omitempty"`
	Pods   []Pod    `json:"pods,omitempty"`

	mu sync.Mutex
}

// Proc is a process the lab started. Start (jiffies since boot, from
// /proc/PID/stat) tells it apart from a later process with the same id.
type Proc struct {
	Role  string `json:"role"` // etcd, kube-apiserver, agent, server
	Name  string `json:"name"`
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
	Log   string `json:"log,omitempty"`
}

// Node is one lab node: a network namespace running its own zt-agent.
type Node struct {
	Name       string `json:"name"`
	Index      int    `json:"index"`
	Netns      string `json:"netns"`
	PodNetns   string `json:"podNetnsDir"`
	IP         string `json:"ip"`
	MAC        string `json:"mac,omitempty"`
	HealthAddr string `json:"healthAddr"`
	BPFFS      string `json:"bpffs"`
	AgentLog   string `json:"agentLog,omitempty"`
	// FlowsSocket is the agent's flows API (ztctl flows).
	FlowsSocket string `json:"flowsSocket,omitempty"`
}

// Pod is one lab pod: a network namespace with the pod's addresses and a
// server on each declared port.
type Pod struct {
	Namespace string      `json:"namespace"`
	Name      string      `json:"name"`
	Node      string      `json:"node"`
	Netns     string      `json:"netns"`
	HostIf    string      `json:"hostIf"`
	IPs       []string    `json:"ips"`
	Ports     []PortProto `json:"ports"`
}

// PortProto is a declared port.
type PortProto struct {
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
}

// Key is "namespace/name".
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// Addrs parses IPs.
func (p Pod) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, s := range p.IPs {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// Target is the pod as reach.Targets lists it.
func (p Pod) Target() reach.Target {
	t := reach.Target{Pod: policy.PodKey{Namespace: p.Namespace, Name: p.Name}}
	for _, pp := range p.Ports {
		proto, err := identity.ParseProtocol(pp.Protocol)
		if err != nil {
			continue
		}
		t.Ports = append(t.Ports, reach.PortProto{Port: pp.Port, Protocol: proto})
	}
	return t
}

func (s *State) path() string { return filepath.Join(s.Dir, StateFile) }

// save writes the state atomically.
func (s *State) save() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path())
}

// record runs f under the state lock and saves.
func (s *State) record(f func(*State)) error {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
	return s.save()
}

// LoadState reads the state of the lab in dir. A missing state is
// os.ErrNotExist.
func LoadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return nil, err
	}
	s := &State{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	s.Dir = dir
	return s, nil
}

// ---- processes ----

// procStart reads the start time of pid (field 22 of /proc/PID/stat) and
// whether it is a zombie.
func procStart(pid int) (start uint64, zombie bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false, errors.New("bad stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 {
		return 0, false, errors.New("short stat")
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, f[0] == "Z", err
}

// alive reports whether p still runs (a zombie does not).
func (p Proc) alive() bool {
	st, zombie, err := procStart(p.Pid)
	return err == nil && st == p.Start && !zombie
}

// stop sends SIGTERM, then SIGKILL after grace; only to the same process
// the lab started (same start time).
func (p Proc) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(p.Pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for p.alive() {
		if time.Now().After(deadline) {
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			for i := 0; i < 100 && p.alive(); i++ {
				time.Sleep(20 * time.Millisecond)
			}
			if p.alive() {
				return fmt.Errorf("%s %s (pid %d) survived SIGKILL", p.Role, p.Name, p.Pid)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func newProc(role, name string, pid int, log string) Proc {
	st, _, _ := procStart(pid)
	return Proc{Role: role, Name: name, Pid: pid, Start: st, Log: log}
}
