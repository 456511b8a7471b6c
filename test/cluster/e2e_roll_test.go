//go:build cluster

package cluster

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// e2eTraffic runs connections from one client in a bounded loop until
// stopped and counts what it saw.
type e2eTraffic struct {
	conn     e2eConn
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	tries    int
	wrong    []string // allowed that failed, denied that passed
	duringOp int      // tries that overlapped an operation
	inOp     bool
	opEdges  int // how often an operation began or ended
}

const e2eMaxTries = 400 // bounds each loop (about 2 s a try at most)

func (e *e2e) traffic(c e2eConn) *e2eTraffic {
	tr := &e2eTraffic{conn: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for i := 0; i < e2eMaxTries; i++ {
			select {
			case <-tr.stop:
				return
			default:
			}
			tr.mu.Lock()
			inOp, edges := tr.inOp, tr.opEdges
			tr.mu.Unlock()
			start := time.Now()
			bad := e.check([]e2eConn{c})
			tr.mu.Lock()
			tr.tries++
			// A try overlapped the operation when it ran at its start or
			// at its end, or when the operation began or ended meanwhile
			// (a denied try waits out its timeout: counting only the tries
			// that end inside a short roll left it uncovered).
			if inOp || tr.inOp || tr.opEdges != edges {
				tr.duringOp++
			}
			for _, b := range bad {
				tr.wrong = append(tr.wrong, start.Format("15:04:05.000")+" "+b)
			}
			tr.mu.Unlock()
		}
	}()
	return tr
}

func (tr *e2eTraffic) setOp(on bool) {
	tr.mu.Lock()
	if tr.inOp != on {
		tr.opEdges++
	}
	tr.inOp = on
	tr.mu.Unlock()
}

func (tr *e2eTraffic) finish() {
	close(tr.stop)
	<-tr.done
}

// e2eAgentPods names the zt-agent pods (and their UIDs).
func (e *e2e) agentPods() string {
	e.t.Helper()
	return strings.TrimSpace(e.must("", "-n", "zt-system", "get", "pods", "-l", "app.kubernetes.io/name=zt-agent",
		"-o", "jsonpath={range .items[*]}{.metadata.name}/{.metadata.uid} {end}"))
}

// TestE2ERollWhileTraffic: the zt DaemonSet is rolled twice (rollout
// restart, then an update adding an env var) while an allowed and a denied
// client keep connecting: no allowed connection fails, no denied one
// passes, before, during and after.
func TestE2ERollWhileTraffic(t *testing.T) {
	e := newE2E(t)
	w := newE2EWorld(e)
	w.isolate(e)
	e.expect("isolated server", e2eAllow(w.cliA, w.srv), e2eDeny(w.cliB, w.srv))

	env := "ZT_E2E_ROLL_" + strings.ToUpper(e.tag)
	t.Cleanup(func() {
		// Leave the shared DaemonSet as it was (one more roll), ready.
		if _, err := e.kubectl("", "-n", "zt-system", "set", "env", "daemonset/zt-agent", env+"-"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if _, err := e.kubectl("", "-n", "zt-system", "rollout", "status", "daemonset/zt-agent", "--timeout=120s"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	allowed, denied := e.traffic(e2eAllow(w.cliA, w.srv)), e.traffic(e2eDeny(w.cliB, w.srv))
	loops := []*e2eTraffic{allowed, denied}
	defer func() {
		for _, tr := range loops {
			select {
			case <-tr.stop:
			default:
				tr.finish()
			}
		}
	}()
	time.Sleep(3 * time.Second) // some traffic before the roll

	roll := func(what string, args ...string) {
		t.Helper()
		before := e.agentPods()
		for _, tr := range loops {
			tr.setOp(true)
		}
		start := time.Now()
		e.must("", append([]string{"-n", "zt-system"}, args...)...)
		e.must("", "-n", "zt-system", "rollout", "status", "daemonset/zt-agent", "--timeout=120s")
		for _, tr := range loops {
			tr.setOp(false)
		}
		after := e.agentPods()
		t.Logf("%s: %s -> %s in %s", what, before, after, time.Since(start).Round(time.Millisecond))
		if before == after {
			t.Fatalf("%s: the agent pods did not change (%s)", what, after)
		}
	}
	roll("rollout restart", "rollout", "restart", "daemonset/zt-agent")
	roll("env update", "set", "env", "daemonset/zt-agent", env+"=1")
	if got := e.must("", "-n", "zt-system", "get", "pods", "-l", "app.kubernetes.io/name=zt-agent",
		"-o", "jsonpath={.items[*].spec.containers[0].env[*].name}"); !strings.Contains(got, env) {
		t.Fatalf("the rolled agent pods lack %s: %s", env, got)
	}
	time.Sleep(3 * time.Second) // and some after
	for _, tr := range loops {
		tr.finish()
	}

	for _, tr := range loops {
		kind := "allowed"
		if !tr.conn.allowed {
			kind = "denied"
		}
		t.Logf("%s %s -> %s: %d connections, %d while rolling, %d wrong", kind, tr.conn.from, tr.conn.to, tr.tries, tr.duringOp, len(tr.wrong))
		if len(tr.wrong) > 0 {
			t.Errorf("%s connections broke during the roll:\n%s", kind, strings.Join(tr.wrong, "\n"))
		}
		if tr.duringOp < 3 {
			t.Errorf("%s: only %d connections while rolling: the roll was not covered", kind, tr.duringOp)
		}
	}
}
