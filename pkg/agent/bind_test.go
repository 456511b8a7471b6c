package agent

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/ztnet/zt/pkg/policy"
)

// A failed interface lookup must not unbind a pod whose interface still
// exists (its endpoint entry would be deleted: fail open); a vanished
// interface does unbind it.
func TestBindFailsClosed(t *testing.T) {
	pk := policy.PodKey{Namespace: "a", Name: "p"}
	c := policy.New(policy.Options{NodeName: "n"})
	c.SetPod(policy.Pod{Namespace: "a", Name: "p", NodeName: "n", IPs: []netip.Addr{netip.MustParseAddr("10.9.0.1")}})
	c.Sync()
	a := &Agent{log: zap.NewNop(), compiler: c, metrics: newMetrics(nil),
		bound: map[policy.PodKey]binding{pk: {ifindex: 42}}, missing: map[policy.PodKey]string{}}

	oldLookup, oldLink := lookupHostInterface, linkByIndex
	t.Cleanup(func() { lookupHostInterface, linkByIndex = oldLookup, oldLink })
	lookupHostInterface = func([]netip.Addr) (netlink.Link, error) {
		return nil, errors.New("netlink: interrupted system call")
	}
	linkByIndex = func(i int) (netlink.Link, error) {
		if i == 42 {
			return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: 42, Name: "veth42"}}, nil
		}
		return nil, errors.New("link not found")
	}
	if !a.bindEndpoints() {
		t.Error("a failed lookup must be retried")
	}
	if b, ok := a.bound[pk]; !ok || b.ifindex != 42 {
		t.Fatalf("transient lookup failure unbound the pod: %+v", a.bound)
	}
	if a.missing[pk] == "" {
		t.Error("the failure was not reported")
	}
	// The interface is gone: now the pod is unbound.
	linkByIndex = func(int) (netlink.Link, error) { return nil, errors.New("link not found") }
	a.bindEndpoints()
	if _, ok := a.bound[pk]; ok {
		t.Error("a pod whose interface vanished stays bound")
	}
}
