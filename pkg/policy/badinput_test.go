package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// TestBadInput: each invalid policy gives a clear error naming the object
// and the field, is listed in Problems and skipped, and every other policy
// still compiles and enforces.
func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, spec, path, text string
	}{
		{"invalid CIDR", `
  ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.300/8}}]}]`, "spec.ingress[0].from[1].ipBlock.cidr", "invalid CIDR"},
		{"CIDR without length", `
  ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.1}}]}]`, "spec.ingress[0].from[1].ipBlock.cidr", "invalid CIDR"},
		{"empty CIDR", `
  egress: [{to: [{ipBlock: {cidr: ""}}]}]`, "spec.egress[0].to[0].ipBlock.cidr", "required"},
		{"except outside its cidr", `
  ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]`, "spec.ingress[0].from[1].ipBlock.except[0]", "strict subset"},
		{"except equal to its cidr", `
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/24, 10.0.0.0/16]}}]}]`, "spec.ingress[0].from[0].ipBlock.except[1]", "strict subset"},
		{"except of another family", `
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: ["::/1"]}}]}]`, "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"},
		{"invalid except", `
  egress: [{to: [{ipBlock: {cidr: "fd00::/8", except: ["fd00::/zz"]}}]}]`, "spec.egress[0].to[0].ipBlock.except[0]", "invalid CIDR"},
		{"unknown protocol", `
  egress: [{ports: [{port: 53, protocol: ICMP}]}]`, "spec.egress[0].ports[0].protocol", "unknown protocol"},
		{"lower-case protocol", `
  ingress: [{ports: [{port: 53}, {port: 53, protocol: udp}]}]`, "spec.ingress[0].ports[1].protocol", "unknown protocol"},
		{"endPort below port", `
  ingress: [{ports: [{port: 80}, {port: 90, endPort: 89}]}]`, "spec.ingress[0].ports[1].endPort", "greater than or equal"},
		{"endPort with a named port", `
  ingress: [{ports: [{port: http, endPort: 90}]}]`, "spec.ingress[0].ports[0].endPort", "named port"},
		{"endPort without port", `
  egress: [{ports: [{protocol: TCP, endPort: 90}]}]`, "spec.egress[0].ports[0].endPort", "port is not specified"},
		{"endPort out of range", `
  ingress: [{ports: [{port: 80, endPort: 70000}]}]`, "spec.ingress[0].ports[0].endPort", "between 1 and 65535"},
		{"port 0", `
  ingress: [{ports: [{port: 0}]}]`, "spec.ingress[0].ports[0].port", "between 1 and 65535"},
		{"invalid port name", `
  ingress: [{ports: [{port: "Not_A_Name"}]}]`, "spec.ingress[0].ports[0].port", "invalid port name"},
		{"selector with a bad operator", `
  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: Like, values: [x]}]}}]}]`, "spec.ingress[0].from[0].podSelector", "Like"},
		{"selector with a bad label value", `
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: "not a value!"}}}]}]`, "spec.ingress[0].from[0].namespaceSelector", "not a value!"},
		{"In without values", `
  egress: [{to: [{podSelector: {matchExpressions: [{key: app, operator: In}]}}]}]`, "spec.egress[0].to[0].podSelector", "values"},
		{"ipBlock with podSelector", `
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]`, "spec.ingress[0].from[0]", "ipBlock together with"},
		{"ipBlock with namespaceSelector", `
  egress: [{to: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]`, "spec.egress[0].to[1]", "ipBlock together with"},
		{"empty peer", `
  egress: [{to: [{podSelector: {}}, {}]}]`, "spec.egress[0].to[1]", "must specify a peer"},
		{"unknown policyType", `
  policyTypes: [Ingress, Sideways]`, "spec.policyTypes[1]", "Sideways"},
		{"three policyTypes", `
  policyTypes: [Ingress, Egress, Ingress]`, "spec.policyTypes", "more than two"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			world := Snapshot{
				Namespaces: threeNS(),
				Pods:       []Pod{mkPod("x/a", "10.0.0.1", "http:8080/TCP"), mkPod("x/b", "10.0.0.2", ""), mkPod("y/a", "10.0.1.1", "")},
			}
			good := mkPolicies(t, `
metadata: {namespace: x, name: good}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]`)[0]
			badV1 := mkPolicies(t, `
metadata: {namespace: x, name: bad}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{}]`)[0]
			bad := mkPolicies(t, "metadata: {namespace: x, name: bad}\nspec:\n  podSelector: {}"+tc.spec)[0]
			check := func(t *testing.T, c *Compiler, err error) {
				t.Helper()
				if err == nil {
					t.Fatal("want an error")
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v is not ErrInvalid", err)
				}
				msg := err.Error()
				for _, want := range []string{"x/bad", tc.path + ":", tc.text} {
					if !strings.Contains(msg, want) {
						t.Errorf("error %q does not contain %q", msg, want)
					}
				}
				probs := c.Problems()
				if len(probs) != 1 || probs[0].Policy != (PolicyKey{"x", "bad"}) || probs[0].Error() != msg {
					t.Errorf("Problems() = %v", probs)
				}
				// The bad policy enforces nothing: x is not egress-isolated.
				x, xb, y := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.1.1")
				if !c.Evaluate(x, y, ProtoTCP, 80).Allowed {
					t.Error("the rejected policy still enforces")
				}
				// The good policy does.
				if c.Evaluate(y, x, ProtoTCP, 80).Allowed {
					t.Error("the good policy is not enforced")
				}
				if !c.Evaluate(xb, x, ProtoTCP, 80).Allowed {
					t.Error("the good policy's allow is missing")
				}
				checkInvariants(t, c)
			}
			// Incrementally: a valid version first, then the invalid update.
			c := Build(world, Options{})
			if err := c.SetPolicy(good); err != nil {
				t.Fatal(err)
			}
			if err := c.SetPolicy(badV1); err != nil {
				t.Fatal(err)
			}
			err := c.SetPolicy(bad)
			check(t, c, err)
			// In one Build.
			world.Policies = append(world.Policies, bad, good)
			full := Build(world, Options{})
			probs := full.Problems()
			if len(probs) != 1 {
				t.Fatalf("Build problems %v", probs)
			}
			check(t, full, probs[0])
			// Fixing the policy clears the problem.
			if err := c.SetPolicy(badV1); err != nil || len(c.Problems()) != 0 {
				t.Errorf("after fix: %v, %v", err, c.Problems())
			}
		})
	}
}

func TestBadInputNames(t *testing.T) {
	c := New(Options{})
	for _, np := range mkPolicies(t, `
metadata: {namespace: x}
spec: {podSelector: {}}
---
metadata: {name: p}
spec: {podSelector: {}}`) {
		err := c.SetPolicy(np)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "metadata.") {
			t.Errorf("%s/%s: %v", np.Namespace, np.Name, err)
		}
	}
	if err := (&DefaultDeny{Allow: []DefaultDenyAllow{{Name: "a"}}}).Validate(); err == nil || !strings.Contains(err.Error(), "must specify a peer") {
		t.Errorf("DefaultDeny with an empty peer: %v", err)
	}
	if err := (&DefaultDeny{Allow: []DefaultDenyAllow{{Name: "a", To: DefaultExemptions().Allow[0].To}, {Name: "a", To: DefaultExemptions().Allow[0].To}}}).Validate(); err == nil {
		t.Error("DefaultDeny with duplicate names: want an error")
	}
}
