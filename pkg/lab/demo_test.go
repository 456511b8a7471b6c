package lab_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDemo runs the README's main command (hack/demo.sh, what `make demo`
// runs) on one and on two nodes and checks what it prints: the matrix
// before and after the policies, the agreement with ztctl reach, every
// lateral-movement attempt blocked where and why it should be, and
// `ztctl flows` naming each drop once, with its pods, reason and policy.
func TestDemo(t *testing.T) {
	for _, nodes := range []string{"1", "2"} {
		t.Run("nodes="+nodes, func(t *testing.T) {
			e := newEnv(t)
			cmd := exec.Command("bash", filepath.Join(repoRoot, "hack", "demo.sh"))
			cmd.Env = append(os.Environ(),
				"ZT_DEMO_BIN="+filepath.Dir(ztlabBin), "ZT_K8S_BIN="+k8sBin,
				"ZT_DEMO_DIR="+e.dir, "ZT_DEMO_NAME="+e.name, "ZT_DEMO_NODES="+nodes,
				"ZT_DEMO_KEEP=", "ZT_FLOWS_SOCKET=", "KUBECONFIG=")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			t.Logf("make demo:\n%s", out.String())
			if err != nil {
				t.Fatalf("demo: %v", err)
			}
			checkDemo(t, out.String())
		})
	}
}

func checkDemo(t *testing.T, out string) {
	t.Helper()
	section := func(from, to string) string {
		i := strings.Index(out, from)
		if i < 0 {
			t.Fatalf("no %q in the demo's output", from)
		}
		s := out[i:]
		if j := strings.Index(s, to); j >= 0 {
			s = s[:j]
		}
		return s
	}
	// Before: everything reaches everything.
	before := section("== 2.", "== 3.")
	for _, row := range []string{
		`data/db        -         .         .              .`,
		`shop/api       .         -         .              .`,
		`shop/attacker  .         .         -              .`,
		`shop/frontend  .         .         .              -`,
	} {
		if !strings.Contains(before, row+"\n") {
			t.Errorf("matrix before the policies lacks the row %q", row)
		}
	}
	if !strings.Contains(before, "shop/attacker -> data/db 5432/TCP: PASSED") {
		t.Error("before the policies, the attacker does not reach the database")
	}
	// After: only frontend->api:8080 and api->db:5432.
	after := section("== 3.", "== 4.")
	for _, row := range []string{
		`data/db        -         X         X              X`,
		`shop/api       .         -         X              X`,
		`shop/attacker  X         X         -              X`,
		`shop/frontend  X         .         X              -`,
	} {
		if !strings.Contains(after, row+"\n") {
			t.Errorf("matrix after the policies lacks the row %q", row)
		}
	}
	if !strings.Contains(after, "What passes now:\n    shop/api -> data/db 5432/TCP\n    shop/frontend -> shop/api 8080/TCP\n$ ") {
		t.Error("what passes after the policies is not exactly frontend->api:8080 and api->db:5432")
	}
	if !strings.Contains(after, "The kernel agrees with ztctl reach on all 12 (pod, pod, port) probes.") {
		t.Error("the kernel's answer is not shown to agree with ztctl reach")
	}
	// Every attempt, blocked where and why it should be, by the counters.
	attacks := section("== 4.", "== 5.")
	for _, re := range []string{
		`shop/attacker -> data/db 5432/TCP: BLOCKED, refused at shop/attacker's socket .*; zt counted node\d egress sock-denied \+1\n`,
		`shop/attacker -> data/db 5432/UDP: BLOCKED, refused at shop/attacker's socket .*; zt counted node\d egress sock-denied \+1\n`,
		`shop/attacker -> shop/api 8080/TCP: BLOCKED, refused at shop/attacker's socket .*; zt counted node\d egress sock-denied \+1\n`,
		`shop/attacker -> data/db 5432/TCP \(raw socket\): BLOCKED, dropped at shop/attacker's interface; zt counted node\d egress policy-denied \+1\n`,
		`shop/attacker -> data/db 5432/TCP \(forged source 10\.244\.1\.11\): BLOCKED, .* zt counted node\d egress spoofed \+1\n`,
		`shop/frontend -> shop/api 8080/TCP: PASSED`,
	} {
		if !regexp.MustCompile(re).MatchString(attacks) {
			t.Errorf("no line matching %q in:\n%s", re, attacks)
		}
	}
	// ztctl flows: each attempt once, with pods, reason and policy.
	flows := section("== 5.", "== Tearing")
	table, _, _ := strings.Cut(flows, "$ ztctl flows -n shop")
	for _, re := range []string{
		`(?m)^\d\d:\d\d:\d\d shop/attacker +data/db +5432/TCP +DROP +sock-denied +default-deny$`,
		`(?m)^\d\d:\d\d:\d\d shop/attacker +data/db +5432/UDP +DROP +sock-denied +default-deny$`,
		`(?m)^\d\d:\d\d:\d\d shop/attacker +shop/api +8080/TCP +DROP +sock-denied +default-deny$`,
		`(?m)^\d\d:\d\d:\d\d shop/attacker +data/db +5432/TCP +DROP +policy-denied +default-deny$`,
		`(?m)^\d\d:\d\d:\d\d shop/attacker +data/db +5432/TCP +DROP +spoofed +as shop/api$`,
	} {
		if n := len(regexp.MustCompile(re).FindAllString(table, -1)); n != 1 {
			t.Errorf("%d flow rows match %q, want 1:\n%s", n, re, table)
		}
	}
	if rows := len(regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d `).FindAllString(table, -1)); rows != 5 {
		t.Errorf("%d flow rows since the attack began, want 5 (one per attempt):\n%s", rows, table)
	}
	for _, l := range strings.Split(table, "\n") {
		if len([]rune(l)) > 80 {
			t.Errorf("flows table line wider than 80 columns: %q", l)
		}
	}
	if !regexp.MustCompile(`attacker +data/db +5432/TCP +DROP +spoofed +egress +SYN .* app=debug +app=db +as api\n`).MatchString(flows) {
		t.Errorf("the wide spoofed record lacks the sender's labels or the claimed pod:\n%s", flows)
	}
	if !strings.Contains(out, "To keep the lab up and explore: ZT_DEMO_KEEP=1 make demo") {
		t.Error("the demo does not say how to keep the lab up")
	}
}
