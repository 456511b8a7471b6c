package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztnet/zt/pkg/flows"
)

var (
	fWeb  = flows.Peer{IP: netip.MustParseAddr("10.1.0.10"), Port: 40000, Namespace: "shop", Pod: "web", Labels: map[string]string{"app": "web"}}
	fDB   = flows.Peer{IP: netip.MustParseAddr("10.1.0.20"), Port: 5432, Namespace: "data", Pod: "db", Labels: map[string]string{"app": "db"}}
	fAPI  = flows.Peer{IP: netip.MustParseAddr("10.1.0.30"), Port: 41000, Namespace: "shop", Pod: "api", Labels: map[string]string{"app": "api"}}
	fWrld = flows.Peer{IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Reserved: "world"}
)

func flowRec(at time.Time, src, dst flows.Peer, verdict, reason string, policies ...string) flows.Record {
	return flows.Record{Time: at, Node: "node-a", Direction: "ingress", Src: src, Dst: dst, Protocol: "TCP", TCPFlags: "SYN",
		Verdict: verdict, Reason: reason, Hook: "tc", PeerIdentity: 300, Policies: policies}
}

// agentAPI serves a store on a unix socket, as the agent does.
func agentAPI(t *testing.T, v flows.Version) (*flows.Store, string) {
	t.Helper()
	st, err := flows.OpenStore(flows.StoreOptions{RingSize: 128, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	sock := filepath.Join(t.TempDir(), "flows.sock")
	ls, err := flows.Listen(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(flows.NewHandler(flows.ServerOptions{Store: st, Version: v}))
	srv.Listener = ls[0]
	srv.Start()
	t.Cleanup(srv.Close)
	return st, sock
}

func seed(st *flows.Store) time.Time {
	t0 := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	st.Append(flowRec(t0, fWeb, fDB, "drop", "policy-denied", "data/db-from-api", "data/default-deny"))
	api := flowRec(t0.Add(time.Hour), fAPI, fDB, "allow", "allowed")
	api.Rule, api.RuleID = "data/db-from-api ingress[0]", 7
	st.Append(api)
	udp := flowRec(t0.Add(90*time.Minute), fWrld, fWeb, "drop", "policy-denied", "shop/default-deny")
	udp.Protocol, udp.TCPFlags, udp.Dst.Port = "UDP", "", 53
	st.Append(udp)
	st.Append(flows.Record{Time: t0.Add(100 * time.Minute), Node: "node-a", Src: fWrld, Verdict: "drop", Reason: "suppressed",
		Suppressed: 41, Summary: "suppressed 41 drop events from world(203.0.113.7)"})
	return t0
}

func flowsJSON(t *testing.T, args ...string) []flows.Record {
	t.Helper()
	out, errOut, code := ztctl(t, append([]string{"flows", "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("ztctl flows %v: exit %d: %s", args, code, errOut)
	}
	var recs []flows.Record
	if err := json.Unmarshal([]byte(out), &recs); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	return recs
}

func TestFlowsFilters(t *testing.T) {
	st, sock := agentAPI(t, flows.Version{API: flows.APIVersion, Agent: "test"})
	seed(st)
	for _, tc := range []struct {
		args []string
		want []uint64 // seqs
	}{
		{[]string{"-A"}, []uint64{1, 2, 3, 4}},
		{[]string{"-n", "data"}, []uint64{1, 2}},
		{[]string{"-n", "shop", "--pod", "web"}, []uint64{1, 3}},
		{[]string{"-A", "--pod", "data/db"}, []uint64{1, 2}},
		{[]string{"-A", "--from", "app=api"}, []uint64{2}},
		{[]string{"-A", "--from", "world"}, []uint64{3, 4}},
		{[]string{"-A", "--to", "shop/web"}, []uint64{3}},
		{[]string{"-A", "--verdict", "dropped"}, []uint64{1, 3, 4}},
		{[]string{"-A", "--verdict", "allowed"}, []uint64{2}},
		{[]string{"-A", "--reason", "suppressed"}, []uint64{4}},
		{[]string{"-A", "--port", "53"}, []uint64{3}},
		{[]string{"-A", "--protocol", "udp"}, []uint64{3}},
		{[]string{"-A", "--since", "45m"}, []uint64{3, 4}},
		{[]string{"-A", "--until", "75m"}, []uint64{1}},
		{[]string{"-A", "--last", "2"}, []uint64{3, 4}},
		{[]string{"-A", "--node", "node-b"}, nil},
	} {
		recs := flowsJSON(t, append(tc.args, "--socket", sock)...)
		var got []uint64
		for _, r := range recs {
			got = append(got, r.Seq)
		}
		if !equalSeqs(got, tc.want) {
			t.Errorf("%v: seqs %v, want %v", tc.args, got, tc.want)
		}
	}
	// A bad filter is refused before anything is asked.
	if _, errOut, code := ztctl(t, "flows", "-A", "--verdict", "maybe", "--socket", sock); code == 0 || !strings.Contains(errOut, "want dropped, allowed or audit") {
		t.Errorf("bad verdict: %d %s", code, errOut)
	}
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFlowsOutput(t *testing.T) {
	st, sock := agentAPI(t, flows.Version{API: flows.APIVersion, Agent: "test"})
	seed(st)
	out, errOut, code := ztctl(t, "flows", "-n", "shop", "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("table:\n%s", out)
	}
	for _, want := range []string{
		"TIME     SOURCE      DESTINATION PORT     VERDICT REASON        POLICY",
		" web         data/db     5432/TCP DROP    policy-denied db-from-api +1",
		" api         data/db     5432/TCP ALLOW   allowed       db-from-api ing…",
		" 203.0.113.7 web         53/UDP   DROP    policy-denied default-deny",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	for _, l := range lines {
		if n := len([]rune(l)); n > 80 {
			t.Errorf("%d columns: %q", n, l)
		}
	}
	out, _, _ = ztctl(t, "flows", "-A", "--socket", sock, "-o", "wide", "--reason", "policy-denied", "--last", "1")
	for _, want := range []string{"DIR", "IDENTITY", "SOURCE LABELS", "world(203.0.113.7)", "ingress", "node-a", "app=web", "shop/default-deny"} {
		if !strings.Contains(out, want) {
			t.Errorf("wide lacks %q:\n%s", want, out)
		}
	}
	out, _, _ = ztctl(t, "flows", "-A", "--socket", sock, "--reason", "suppressed")
	if !strings.Contains(out, "203.0.113.7 -           -    DROP    suppressed (41 events)") {
		t.Errorf("summary row:\n%s", out)
	}
	out, _, _ = ztctl(t, "flows", "-A", "--socket", sock, "-o", "jsonl")
	if n := strings.Count(out, "\n"); n != 4 {
		t.Errorf("jsonl: %d lines\n%s", n, out)
	}
	out, _, _ = ztctl(t, "flows", "-n", "nothing-here", "--socket", sock)
	if !strings.Contains(out, "No flow records found.") {
		t.Errorf("empty: %q", out)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestFlowsFollow(t *testing.T) {
	for _, output := range []string{"table", "jsonl"} {
		t.Run(output, func(t *testing.T) {
			st, sock := agentAPI(t, flows.Version{API: flows.APIVersion, Agent: "test"})
			seed(st)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out, errOut syncBuffer
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, []string{"flows", "-f", "-A", "--verdict", "dropped", "--last", "1", "--socket", sock, "-o", output}, &out, &errOut)
			}()
			waitFor := func(s string) {
				t.Helper()
				deadline := time.Now().Add(5 * time.Second)
				for !strings.Contains(out.String(), s) {
					if time.Now().After(deadline) {
						t.Fatalf("output never showed %q:\n%s\nstderr: %s", s, out.String(), errOut.String())
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			waitFor("suppressed") // the backlog: the last dropped record
			late := flowRec(time.Now(), fAPI, fWeb, "drop", "deny-rule")
			late.Dst.Port = 8443
			st.Append(late)
			st.Append(flowRec(time.Now(), fAPI, fWeb, "allow", "allowed")) // filtered out
			waitFor("8443")
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("follow ended with %d: %s", code, errOut.String())
			}
			if strings.Contains(out.String(), "ALLOW") || strings.Contains(out.String(), `"allow"`) || strings.Contains(out.String(), "5432") {
				t.Errorf("follow printed records outside the filter or the --last window:\n%s", out.String())
			}
		})
	}
}

func TestFlowsErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	_, errOut, code := ztctl(t, "flows", "-A", "--socket", missing, "--kubeconfig", filepath.Join(t.TempDir(), "none"))
	if code == 0 || !strings.Contains(errOut, "is zt-agent running on this node? use --server or run with kubeconfig access") {
		t.Errorf("no agent: exit %d: %s", code, errOut)
	}
	_, sock := agentAPI(t, flows.Version{API: flows.APIVersion + 1, Agent: "v9.9.9"})
	_, errOut, code = ztctl(t, "flows", "-A", "--socket", sock)
	if code == 0 || !strings.Contains(errOut, "version skew") || !strings.Contains(errOut, "v9.9.9") {
		t.Errorf("skew: exit %d: %s", code, errOut)
	}
	_, errOut, code = ztctl(t, "flows", "-A", "--server", "127.0.0.1:1")
	if code == 0 || !strings.Contains(errOut, "is zt-agent running") {
		t.Errorf("server down: exit %d: %s", code, errOut)
	}
	if _, errOut, code = ztctl(t, "flows", "-A", "-o", "yaml", "--socket", sock); code == 0 || !strings.Contains(errOut, "unknown output format") {
		t.Errorf("output: %s", errOut)
	}
}

// fakeSource replays records, optionally following a channel.
type fakeSource struct {
	recs []flows.Record
	live chan flows.Record
}

func (s *fakeSource) Query(ctx context.Context, f flows.Filter, fn func(*flows.Record) error) error {
	for i := range s.recs {
		if f.Match(&s.recs[i]) {
			if err := fn(&s.recs[i]); err != nil {
				return err
			}
		}
	}
	if !f.Follow {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-s.live:
			if err := fn(&r); err != nil {
				return err
			}
		}
	}
}

func TestMergeSource(t *testing.T) {
	t0 := time.Now().Add(-time.Minute)
	a := &fakeSource{live: make(chan flows.Record, 1)}
	b := &fakeSource{live: make(chan flows.Record, 1)}
	for i := range 3 {
		ra := flowRec(t0.Add(time.Duration(2*i)*time.Second), fWeb, fDB, "drop", "policy-denied")
		ra.Seq, ra.Node = uint64(i+1), "a"
		rb := flowRec(t0.Add(time.Duration(2*i+1)*time.Second), fWeb, fDB, "drop", "policy-denied")
		rb.Seq, rb.Node = uint64(i+1), "b"
		a.recs, b.recs = append(a.recs, ra), append(b.recs, rb)
	}
	var got []string
	f := flows.Filter{Last: 4}
	err := mergeSource{a, b}.Query(context.Background(), f, func(r *flows.Record) error {
		got = append(got, r.Node+string(rune('0'+r.Seq)))
		return nil
	})
	if err != nil || strings.Join(got, " ") != "a2 b2 a3 b3" {
		t.Errorf("merged %v %v", got, err)
	}
	// Follow: the backlog once, then new records from either agent.
	ctx, cancel := context.WithCancel(context.Background())
	got = nil
	errc := make(chan error, 1)
	seen := make(chan struct{}, 10)
	go func() {
		errc <- mergeSource{a, b}.Query(ctx, flows.Filter{Follow: true, Last: 1}, func(r *flows.Record) error {
			got = append(got, r.Node+string(rune('0'+r.Seq)))
			seen <- struct{}{}
			return nil
		})
	}()
	<-seen
	nb := flowRec(time.Now(), fWeb, fDB, "drop", "policy-denied")
	nb.Seq, nb.Node = 4, "b"
	b.live <- nb
	<-seen
	cancel()
	if err := <-errc; err != nil && err != context.Canceled {
		t.Error(err)
	}
	if strings.Join(got, " ") != "b3 b4" {
		t.Errorf("followed %v", got)
	}
}

// TestFlowsSeveralSockets: a lab's nodes each have an agent socket;
// --socket a,b merges their records by time, and a forged source shows as
// the pod that sent it, "as" the pod it claimed to be.
func TestFlowsSeveralSockets(t *testing.T) {
	v := flows.Version{API: flows.APIVersion, Agent: "test"}
	a, sockA := agentAPI(t, v)
	b, sockB := agentAPI(t, v)
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	a.Append(flowRec(t0, fWeb, fDB, "drop", "policy-denied", "data/default-deny"))
	spoof := flowRec(t0.Add(time.Second), fAPI, fDB, "drop", "spoofed")
	spoof.Direction, spoof.Node, spoof.Src.IP, spoof.Claimed = "egress", "node-b", fWeb.IP, "shop/web"
	b.Append(spoof)
	a.Append(flowRec(t0.Add(2*time.Second), fAPI, fDB, "drop", "policy-denied", "data/default-deny"))

	recs := flowsJSON(t, "-A", "--socket", sockA+","+sockB)
	var got []string
	for _, r := range recs {
		got = append(got, r.Src.Name()+" "+r.Reason)
	}
	if want := []string{"shop/web policy-denied", "shop/api spoofed", "shop/api policy-denied"}; strings.Join(got, ";") != strings.Join(want, ";") {
		t.Errorf("merged records %q, want %q (by time across both sockets)", got, want)
	}
	out, errOut, code := ztctl(t, "flows", "-n", "shop", "--socket", sockA+","+sockB, "--reason", "spoofed")
	if code != 0 || !regexp.MustCompile(`(?m) api +data/db +5432/TCP +DROP +spoofed +as web$`).MatchString(out) {
		t.Errorf("table of a forged source (exit %d, %s):\n%s", code, errOut, out)
	}
	if recs := flowsJSON(t, "-A", "--from", "shop/api", "--reason", "spoofed", "--socket", sockA+","+sockB); len(recs) != 1 {
		t.Errorf("--from the forging pod: %d records, want 1", len(recs))
	}
	_, errOut, code = ztctl(t, "flows", "-A", "--socket", sockA+","+filepath.Join(t.TempDir(), "gone.sock"))
	if code == 0 || !strings.Contains(errOut, "gone.sock") {
		t.Errorf("a missing socket of several: exit %d, %q; want an error naming it", code, errOut)
	}
}
