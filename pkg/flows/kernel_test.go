package flows

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/netnsutil"
	"github.com/ztnet/zt/pkg/datapath"
)

// Kernel test: the datapath's own programs, run with BPF_PROG_RUN on
// crafted frames, feed the agent-side pipeline (ring buffer reader,
// enricher, store). It runs as root and never skips: not loading BPF is
// a failure.

// BPF_PROG_RUN runs on the loopback device of the current namespace:
// ifindex 1, so the endpoint is keyed by it (and, as in the agent, its
// endpoint id is its ifindex).
const kIfindex = 1

var (
	kDB   = netip.MustParseAddr("10.77.0.10") // the enforced pod
	kWeb  = netip.MustParseAddr("10.77.0.20")
	kAPI  = netip.MustParseAddr("10.77.0.30")
	kFake = netip.MustParseAddr("10.77.0.99")
)

const (
	kWebID = datapath.Identity(300)
	kAPIID = datapath.Identity(301)
	kRule  = 7
)

// tcPrograms opens a Datapath at a unique bpffs root and returns its
// zt_to_pod (ingress) and zt_from_pod (egress) programs, taken from a
// tcx attachment to the loopback device of a throwaway namespace.
func tcPrograms(t *testing.T) (*datapath.Datapath, map[datapath.Dir]*ebpf.Program) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("kernel test: run as root (CI is root; it never skips)")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	root := filepath.Join("/sys/fs/bpf", "zt-flows-test-"+hex.EncodeToString(b[:]))
	dp, err := datapath.Open(datapath.Options{BPFFSRoot: root})
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Remove(); err != nil {
			t.Errorf("remove datapath: %v", err)
		}
		dp.Close()
		_ = os.RemoveAll(root)
	})
	progs := map[datapath.Dir]*ebpf.Program{}
	// In a scratch namespace: attach to its loopback (ifindex 1), keep
	// the programs, detach.
	fd, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	err = netnsutil.Do(fd, func() error {
		if _, err := dp.AttachEndpoint(kIfindex); err != nil {
			return err
		}
		for name, dir := range map[string]datapath.Dir{"1_in": datapath.DirEgress, "1_eg": datapath.DirIngress} {
			l, err := link.LoadPinnedLink(filepath.Join(root, "links", name), nil)
			if err != nil {
				return err
			}
			info, err := l.Info()
			l.Close()
			if err != nil {
				return err
			}
			p, err := ebpf.NewProgramFromID(info.Program)
			if err != nil {
				return err
			}
			t.Cleanup(func() { p.Close() })
			progs[dir] = p
		}
		return dp.DetachEndpoint(kIfindex)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dp, progs
}

// frame builds an Ethernet + IPv4 + TCP/UDP frame.
func frame(src, dst netip.Addr, proto uint8, sport, dport uint16, tcpFlags uint8) []byte {
	var l4 []byte
	if proto == 6 {
		l4 = make([]byte, 20)
		l4[12] = 5 << 4
		l4[13] = tcpFlags
	} else {
		l4 = make([]byte, 12)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	}
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	eth := make([]byte, 14)
	eth[0], eth[6] = 0x02, 0x02
	binary.BigEndian.PutUint16(eth[12:], 0x0800)
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	ip[8], ip[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	return append(append(eth, ip...), l4...)
}

func TestKernelPipeline(t *testing.T) {
	dp, progs := tcPrograms(t)

	// Maps as mapsync would write them for: data/db (kDB) isolated for
	// ingress by two policies, one of which allows shop/api on TCP 5432.
	for a, id := range map[netip.Addr]datapath.Identity{kWeb: kWebID, kAPI: kAPIID} {
		if err := dp.IPCachePut(netip.PrefixFrom(a, 32), datapath.IPCacheVal{Identity: id}); err != nil {
			t.Fatal(err)
		}
	}
	ep, err := datapath.NewEndpoint(kIfindex, datapath.EndpointIngressIsolated, kDB)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.EndpointPut(kIfindex, ep); err != nil {
		t.Fatal(err)
	}
	if err := dp.PolicyPutRule(datapath.PortRule{EndpointID: kIfindex, Dir: datapath.DirIngress, Peer: kAPIID, Proto: 6, Port: 5432},
		datapath.PolicyVal{RuleId: kRule, Action: datapath.ActionAllow}); err != nil {
		t.Fatal(err)
	}

	// The agent side: resolver tables as the sync loop publishes them.
	pods := NewPodTable(0, 0)
	pods.Set(PodInfo{Namespace: "data", Name: "db", Labels: map[string]string{"app": "db"}}, []netip.Addr{kDB})
	pods.Set(PodInfo{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}}, []netip.Addr{kWeb})
	pods.Set(PodInfo{Namespace: "shop", Name: "api", Labels: map[string]string{"app": "api"}}, []netip.Addr{kAPI})
	res := NewTableResolver(pods)
	res.Publish(&Tables{
		Endpoints: map[uint32]EndpointInfo{kIfindex: {Pod: PodInfo{Namespace: "data", Name: "db"},
			IsolatedBy: [2][]string{{"data/db-from-api", "data/default-deny"}}}},
		Rules: map[uint32]string{kRule: "data/db-from-api ingress[0]"},
	})

	run := func(t *testing.T, allowedSample int, packets func()) []Record {
		t.Helper()
		cfg := datapath.DefaultConfig
		if allowedSample > 0 {
			cfg.Flags |= datapath.ConfigEventsAllowed
		}
		if err := dp.SetConfig(cfg); err != nil {
			t.Fatal(err)
		}
		e := must[*Enricher](t)(NewEnricher("node-k", res))
		st := must[*Store](t)(OpenStore(StoreOptions{Dir: t.TempDir()}))
		defer st.Close()
		p := NewPipeline(e, st, PipelineOptions{AllowedSample: allowedSample, FlushInterval: 50 * time.Millisecond})
		reader := must[EventReader](t)(dp.NewEventReader())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx, reader, func(err error) { t.Errorf("pipeline: %v", err) }) }()
		packets()
		// Every event is in the ring buffer once BPF_PROG_RUN returned;
		// give the reader a moment beyond the first record to be sure no
		// extra one follows.
		deadline := time.Now().Add(5 * time.Second)
		for p.Stats().Received == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return scanAll(t, st, Filter{})
	}
	send := func(t *testing.T, dir datapath.Dir, f []byte, want uint32) {
		t.Helper()
		ret, err := progs[dir].Run(&ebpf.RunOptions{Data: f})
		if err != nil {
			t.Fatal(err)
		}
		if ret != want {
			t.Errorf("%s program returned %#x, want %#x", dir, ret, want)
		}
	}
	const pass, drop = 0xffffffff, 2 // TC_ACT_UNSPEC, TC_ACT_SHOT

	t.Run("drops", func(t *testing.T) {
		recs := run(t, 0, func() {
			send(t, datapath.DirIngress, frame(kWeb, kDB, 6, 40000, 5432, 0x02), drop) // SYN, not allowed from web
			send(t, datapath.DirIngress, frame(kWeb, kDB, 17, 40001, 53, 0), drop)     // UDP datagram
			send(t, datapath.DirEgress, frame(kFake, kWeb, 6, 40002, 80, 0x02), drop)  // spoofed source
			send(t, datapath.DirIngress, frame(kAPI, kDB, 6, 40003, 5432, 0x02), pass) // allowed: no record
			send(t, datapath.DirIngress, frame(kAPI, kDB, 6, 40003, 5432, 0x10), pass) // its ACK
		})
		var got []string
		for _, r := range recs {
			got = append(got, fmt.Sprintf("%s %s %s %s(%s)>%s %d %s %s %v", r.Verdict, r.Reason, r.Direction, r.Src.Name(), r.Src.IP,
				r.Dst.Name(), r.Dst.Port, r.Protocol, r.TCPFlags, r.Policies))
		}
		want := []string{
			"drop policy-denied ingress shop/web(10.77.0.20)>data/db 5432 TCP SYN [data/db-from-api data/default-deny]",
			"drop policy-denied ingress shop/web(10.77.0.20)>data/db 53 UDP  [data/db-from-api data/default-deny]",
			// the sender (db's interface), with the address it forged
			"drop spoofed egress data/db(10.77.0.99)>shop/web 80 TCP SYN []",
		}
		if !slices.Equal(got, want) {
			t.Errorf("records:\n%q\nwant\n%q", got, want)
		}
		for _, r := range recs {
			if r.Node != "node-k" || r.Endpoint != "data/db" || r.Hook != "tc" || time.Since(r.Time) > time.Minute || time.Since(r.Time) < 0 {
				t.Errorf("record %+v", r)
			}
			if r.Direction == "ingress" && (r.PeerIdentity != uint32(kWebID) || r.Src.Labels["app"] != "web" || r.Dst.Labels["app"] != "db") {
				t.Errorf("ingress record identity/labels %+v", r)
			}
		}
	})
	t.Run("allowed records when enabled", func(t *testing.T) {
		recs := run(t, 1, func() {
			send(t, datapath.DirIngress, frame(kAPI, kDB, 6, 41000, 5432, 0x02), pass)
			send(t, datapath.DirIngress, frame(kAPI, kDB, 6, 41000, 5432, 0x10), pass) // not a new connection
		})
		if len(recs) != 1 {
			t.Fatalf("%d records, want 1: %+v", len(recs), recs)
		}
		r := recs[0]
		if r.Verdict != "allow" || r.Reason != "allowed" || r.Src.Name() != "shop/api" || r.Dst.Name() != "data/db" ||
			r.RuleID != kRule || r.Rule != "data/db-from-api ingress[0]" || r.Policies != nil {
			t.Errorf("allowed record %+v", r)
		}
	})
}
