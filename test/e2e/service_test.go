package e2e_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztnet/zt/pkg/datapath"
)

// checkServiceEgress: the agent found the API server's Service range (the
// ServiceCIDR it creates from --service-cluster-ip-range) and wrote it to
// the svcnets map, attached the netfilter program at the four hooks and
// then set the Service mark, so egress to Service addresses is decided
// after kube-proxy's NAT (test/kernel TestServiceEgress checks the
// verdicts with a real NAT).
func checkServiceEgress(t *testing.T, c *cluster, a *agentRunner) {
	t.Helper()
	ctx := context.Background()
	list, err := c.admin.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list ServiceCIDRs: %v", err)
	}
	var want []netip.Prefix
	for _, o := range list.Items {
		for _, s := range o.Spec.CIDRs {
			want = append(want, netip.MustParsePrefix(s).Masked())
		}
	}
	if len(want) == 0 {
		t.Fatal("the API server has no ServiceCIDR")
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(a.bpffs, "svcnets"), nil)
	if err != nil {
		t.Fatalf("open the agent's svcnets map: %v", err)
	}
	defer m.Close()
	var got []netip.Prefix
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = got[:0]
		var k datapath.IPCacheKey
		var v uint32
		it := m.Iterate()
		for it.Next(&k, &v) {
			got = append(got, k.Prefix())
		}
		if err := it.Err(); err != nil {
			t.Fatalf("iterate svcnets: %v", err)
		}
		if len(got) == len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range want {
		if !slices.Contains(got, p) {
			t.Errorf("svcnets holds %v, want the ServiceCIDRs %v", got, want)
			break
		}
	}
	for _, name := range []string{"nf_ip4_forward", "nf_ip4_input", "nf_ip6_forward", "nf_ip6_input"} {
		l, err := link.LoadPinnedLink(filepath.Join(a.bpffs, "links", name), nil)
		if err != nil {
			t.Errorf("netfilter link %s: %v", name, err)
			continue
		}
		info, err := l.Info()
		if err != nil || info.Type != link.NetfilterType {
			t.Errorf("netfilter link %s: info %+v, %v", name, info, err)
		}
		l.Close()
	}
	cm, err := ebpf.LoadPinnedMap(filepath.Join(a.bpffs, "config"), nil)
	if err != nil {
		t.Fatalf("open config map: %v", err)
	}
	defer cm.Close()
	var cfg datapath.Config
	if err := cm.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.SvcMark != datapath.DefaultServiceMark {
		t.Errorf("config svc_mark %#x, want %#x", cfg.SvcMark, datapath.DefaultServiceMark)
	}
	t.Logf("Service egress: ranges %v, netfilter program at 4 hooks, mark %#x", got, cfg.SvcMark)
}
