package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztnet/zt/pkg/k8swatch"
)

// realizedStatus is an agent's GET /realized (pkg/agent.RealizedStatus).
type realizedStatus struct {
	k8swatch.Realized
	Endpoints int `json:"endpoints"`
	Unbound   int `json:"unbound"`
}

// apiState is what the API server holds: the fingerprints an agent that
// realized it reports, and each node's pods an agent enforces.
type apiState struct {
	realized k8swatch.Realized
	local    map[string]int // node name -> pods with an address
}

// listAPI lists the kinds the agents watch and fingerprints them as they
// do (k8swatch.FingerprintOf).
func listAPI(ctx context.Context, cs kubernetes.Interface) (apiState, error) {
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return apiState{}, fmt.Errorf("list namespaces: %w", err)
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return apiState{}, fmt.Errorf("list pods: %w", err)
	}
	nps, err := cs.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return apiState{}, fmt.Errorf("list networkpolicies: %w", err)
	}
	st := apiState{local: map[string]int{}}
	st.realized.Namespaces = k8swatch.FingerprintItems(nss.Items)
	st.realized.Pods = k8swatch.FingerprintItems(pods.Items)
	st.realized.NetworkPolicies = k8swatch.FingerprintItems(nps.Items)
	for _, p := range pods.Items {
		if p.Spec.NodeName != "" && !p.Spec.HostNetwork && !k8swatch.Terminated(&p) && p.DeletionTimestamp == nil &&
			(len(p.Status.PodIPs) > 0 || p.Status.PodIP != "") {
			st.local[p.Spec.NodeName]++
		}
	}
	return st, nil
}

// getRealized reads an agent's GET /realized.
func getRealized(hc *http.Client, addr string) (realizedStatus, error) {
	var st realizedStatus
	resp, err := hc.Get("http://" + addr + "/realized")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return st, fmt.Errorf("/realized: %s: this zt-agent does not report what it realized (rebuild it)", resp.Status)
	case resp.StatusCode != http.StatusOK:
		return st, fmt.Errorf("/realized: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("/realized: %w", err)
	}
	return st, nil
}

// agentRealized reports whether agent n is ready (/readyz 200) and has
// realized exactly the API state api (GET /realized), with every one of
// its local pods enforced; else why not.
func agentRealized(hc *http.Client, n Node, api apiState) (bool, string) {
	resp, err := hc.Get("http://" + n.HealthAddr + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Sprintf("/readyz %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	st, err := getRealized(hc, n.HealthAddr)
	if err != nil {
		return false, err.Error()
	}
	if d := st.Diff(api.realized); d != "" {
		return false, "realized state differs from the API server's: " + d
	}
	if st.Unbound > 0 || st.Endpoints != api.local[n.Name] {
		return false, fmt.Sprintf("%d of %d local pods enforced (%d interfaces not found yet)", st.Endpoints, api.local[n.Name], st.Unbound)
	}
	return true, ""
}

// waitAgents waits until every agent is ready and has realized in the
// kernel exactly what the API server holds: its GET /realized
// fingerprints (per kind, the objects at the resourceVersions its last
// realized sync compiled from) equal those of a fresh listing, and it
// enforces every local pod. The API is listed again on every round, so
// the wait ends on the state current at that moment; a change that
// changed nothing returns at once.
func (l *Lab) waitAgents(ctx context.Context) error {
	if err := l.ensureAdmin(); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(l.cfg.ReadyTimeout)
	pending := map[string]string{}
	for _, n := range l.st.Nodes {
		pending[n.Name] = "not asked yet"
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		api, err := listAPI(ctx, l.admin)
		if err != nil {
			return err
		}
		for _, n := range l.st.Nodes {
			if _, ok := pending[n.Name]; !ok {
				continue
			}
			if p, ok := l.proc("agent", n.Name); ok && !p.alive() {
				return fmt.Errorf("node %s: zt-agent exited (log %s):\n%s", n.Name, n.AgentLog, tail(n.AgentLog, 20))
			}
			if ok, why := agentRealized(hc, n, api); ok {
				delete(pending, n.Name)
			} else {
				pending[n.Name] = why
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var errs []string
			for _, n := range l.st.Nodes {
				if why, ok := pending[n.Name]; ok {
					errs = append(errs, fmt.Sprintf("node %s: agent has not realized the API state after %s: %s (log %s)",
						n.Name, l.cfg.ReadyTimeout, why, n.AgentLog))
				}
			}
			return fmt.Errorf("%s", strings.Join(errs, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ensureAdmin connects the admin client (a lab opened from its state).
func (l *Lab) ensureAdmin() error {
	if l.admin != nil {
		return nil
	}
	var err error
	l.admin, err = clientFromKubeconfig(l.st.AdminKubeconfig)
	return err
}
