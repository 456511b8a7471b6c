package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// TestVerdictCache: the second forward packet of an allowed flow reuses
// the verdict its entry was stamped with, while the policy generation is
// unchanged, and every write through Datapath moves the generation on so
// the next packet is decided from the maps again. The cache's use is made
// visible by deleting the allow behind the Datapath's back (no bump): the
// flow still passes, with the cached rule, until the generation moves.
func TestVerdictCache(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointIngressIsolated | EndpointAllowHost)
		r := PortRule{Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 80}
		f.allow(r, 7)
		g0 := must[uint64](t)(f.d.PolicyGeneration())
		if g0 == 0 {
			t.Fatal("writes left the policy generation at 0")
		}
		syn := f.in(f.peer, protoTCP, 40000, 80)
		ack := syn
		ack.tcpFlags = tcpACK
		f.expect("first packet", DirIngress, syn.bytes(), VerdictAllow, ReasonAllowed)
		key := ctKeyOf(f, syn)
		val := must[CTVal](t)(ctLookup(f.d, key))
		if val.VerifiedGen != g0 || val.RuleId != 7 || val.Flags&ztTcZtCtFlagsZT_CT_VIA_HOST != 0 {
			t.Fatalf("entry %+v, want verified at generation %d with rule 7", val, g0)
		}

		// The allow goes without a bump: the stamped verdict still holds.
		keys := must[[]PolicyKey](t)(PolicyKeys(PortRule{EndpointID: testEpID, Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 80}))
		for _, k := range keys {
			if err := f.d.tc.Policy.Delete(&k); err != nil {
				t.Fatal(err)
			}
		}
		f.expect("cached", DirIngress, ack.bytes(), VerdictAllow, ReasonAllowed)

		// Any write moves the generation on (here an unrelated one): the
		// next packet is decided from the maps and the flow is cut.
		if err := f.d.PolicyDelete(PolicyKey{}); err != nil {
			t.Fatal(err)
		}
		if g := must[uint64](t)(f.d.PolicyGeneration()); g <= g0 {
			t.Fatalf("generation %d after a delete, want above %d", g, g0)
		}
		f.expect("after the bump", DirIngress, ack.bytes(), VerdictDrop, ReasonPolicyDenied)
		f.expect("revoked", DirIngress, ack.bytes(), VerdictDrop, ReasonPolicyDenied)
		// The flag Go reads is the one the programs write (zt_abi.h).
		if val := must[CTVal](t)(ctLookup(f.d, key)); val.Flags != ztTcZtCtFlagsZT_CT_REVOKED {
			t.Fatalf("revoked entry flags %#x, want ZT_CT_REVOKED (%#x)", val.Flags, ztTcZtCtFlagsZT_CT_REVOKED)
		}

		// Allowed again through Datapath: decided from the maps, stamped
		// with the new generation, then cached.
		f.allow(r, 8)
		g1 := must[uint64](t)(f.d.PolicyGeneration())
		f.expect("allowed again", DirIngress, syn.bytes(), VerdictAllow, ReasonAllowed)
		if val := must[CTVal](t)(ctLookup(f.d, key)); val.VerifiedGen != g1 || val.RuleId != 8 {
			t.Fatalf("entry %+v, want verified at generation %d with rule 8", val, g1)
		}

		// From the host (allow-from-host flag): cached as HOST.
		hsyn := f.in(f.host, protoTCP, 40001, 81)
		hack := hsyn
		hack.tcpFlags = tcpACK
		f.expect("host first", DirIngress, hsyn.bytes(), VerdictAllow, ReasonHost)
		if val := must[CTVal](t)(ctLookup(f.d, ctKeyOf(f, hsyn))); val.Flags&ztTcZtCtFlagsZT_CT_VIA_HOST == 0 || val.VerifiedGen != g1 {
			t.Fatalf("host entry %+v, want via-host at generation %d", val, g1)
		}
		f.expect("host cached", DirIngress, hack.bytes(), VerdictAllow, ReasonHost)
		// The via-host mark is no revocation: the reply passes.
		hreply := pkt{src: f.pod, dst: f.host, proto: protoTCP, sport: 81, dport: 40001, tcpFlags: tcpACK}
		f.expect("host reply", DirEgress, hreply.bytes(), VerdictAllow, ReasonReply)
		// The flag is cleared through Datapath: the next packet is denied.
		f.setEndpoint(EndpointIngressIsolated)
		f.expect("host after the flag went", DirIngress, hack.bytes(), VerdictDrop, ReasonPolicyDenied)
	}
}

// TestVerdictCacheAudit: an audited (would-be dropped) flow is never
// cached: each packet is decided, and reported, again.
func TestVerdictCacheAudit(t *testing.T) {
	f := newFixture(t, false)
	f.setEndpoint(EndpointIngressIsolated | EndpointAudit)
	syn := f.in(f.other, protoTCP, 40000, 80)
	ack := syn
	ack.tcpFlags = tcpACK
	f.expect("audited", DirIngress, syn.bytes(), VerdictAudit, ReasonPolicyDenied)
	if val := must[CTVal](t)(ctLookup(f.d, ctKeyOf(f, syn))); val.VerifiedGen != 0 {
		t.Fatalf("audited entry %+v stamped", val)
	}
	f.expect("audited again", DirIngress, ack.bytes(), VerdictAudit, ReasonPolicyDenied)
}

// TestMigrateGrownValue: a pinned map whose value has grown at its end
// (conntrack, by verified_gen, then by reply_gen) keeps its entries with a
// zero tail.
func TestMigrateGrownValue(t *testing.T) {
	for _, size := range []uint32{16, 24} {
		t.Run(fmt.Sprint(size), func(t *testing.T) { testMigrateGrownValue(t, size) })
	}
}

func testMigrateGrownValue(t *testing.T, size uint32) {
	root := testRoot(t)
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "conntrack", Type: ebpf.LRUHash, KeySize: 44, ValueSize: size, MaxEntries: 262144})
	if err != nil {
		t.Fatal(err)
	}
	k := make([]byte, 44)
	k[0] = 9
	v := bytes.Repeat([]byte{0xab}, int(size))
	if err := old.Put(k, v); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(root + "/conntrack"); err != nil {
		t.Fatal(err)
	}
	old.Close()
	d := newTestDatapath(t, Options{BPFFSRoot: root, Migrate: true})
	mig := d.Migrated()
	if len(mig) != 1 || mig[0].Map != "conntrack" || mig[0].Copied != 1 || mig[0].Empty {
		t.Fatalf("migrations %+v, want conntrack with 1 entry copied", mig)
	}
	var got CTVal
	var key CTKey
	if err := binary.Read(bytes.NewReader(k), binary.LittleEndian, &key); err != nil {
		t.Fatal(err)
	}
	if err := d.tc.Conntrack.Lookup(&key, &got); err != nil {
		t.Fatal(err)
	}
	wantGen := uint64(0)
	if size == 24 {
		wantGen = 0xabababababababab
	}
	if got.LastSeenNs != 0xabababababababab || got.RuleId != 0xabababab || got.VerifiedGen != wantGen || got.ReplyGen != 0 {
		t.Fatalf("migrated entry %+v, want the old bytes and a zero tail", got)
	}
}

// TestFastPathWithoutEndpoint: a packet of an established flow whose
// verdict (forward) or reply was passed at the current policy generation
// passes on its conntrack entry alone, without its endpoint: made visible
// by deleting the endpoint behind the Datapath's back (no bump). Any write
// through Datapath ends it: the endpoint is looked up again (here: none).
func TestFastPathWithoutEndpoint(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		f := newServerFixture(t, v6)
		g := must[uint64](t)(f.d.PolicyGeneration())
		in := f.in(f.peer, protoTCP, 40000, 80)
		reply := pkt{src: f.pod, dst: f.peer, proto: protoTCP, sport: 80, dport: 40000, tcpFlags: tcpSYN | tcpACK}
		out := f.out(f.peer, protoTCP, 40001, 443) // egress is not isolated
		f.expect("in", DirIngress, in.bytes(), VerdictAllow, ReasonAllowed)
		f.expect("reply", DirEgress, reply.bytes(), VerdictAllow, ReasonReply)
		f.expect("out", DirEgress, out.bytes(), VerdictAllow, ReasonNotIsolated)
		if val := must[CTVal](t)(ctLookup(f.d, ctKeyOf(f, in))); val.ReplyGen != g || val.VerifiedGen != g {
			t.Fatalf("entry %+v, want verified and replied at generation %d", val, g)
		}
		outKey := ctKeyOf(f, out)
		outKey.Dir = DirEgress
		if val := must[CTVal](t)(ctLookup(f.d, outKey)); val.VerifiedGen != g || val.Flags != ztTcZtCtFlagsZT_CT_NOT_ISOLATED {
			t.Fatalf("egress entry %+v, want not isolated at generation %d", val, g)
		}

		f.deleteEndpointBehindBack()
		in.tcpFlags, reply.tcpFlags, out.tcpFlags = tcpACK, tcpACK, tcpACK
		f.expect("in, no endpoint", DirIngress, in.bytes(), VerdictAllow, ReasonAllowed)
		f.expect("reply, no endpoint", DirEgress, reply.bytes(), VerdictAllow, ReasonReply)
		f.expect("out, no endpoint", DirEgress, out.bytes(), VerdictAllow, ReasonNotIsolated)
		f.expect("a new flow", DirIngress, f.in(f.peer, protoTCP, 40002, 80).bytes(), VerdictAllow, ReasonNoEndpoint)

		if err := f.d.PolicyDelete(PolicyKey{}); err != nil { // any write
			t.Fatal(err)
		}
		f.expect("in after the bump", DirIngress, in.bytes(), VerdictAllow, ReasonNoEndpoint)
		f.expect("reply after the bump", DirEgress, reply.bytes(), VerdictAllow, ReasonNoEndpoint)
		f.expect("out after the bump", DirEgress, out.bytes(), VerdictAllow, ReasonNoEndpoint)
	}
}

// ctKeyOf is the forward conntrack key of packet p entering the test pod.
func ctKeyOf(f *fixture, p pkt) CTKey {
	be16 := func(v uint16) uint16 { return v>>8 | v<<8 }
	fam := FamilyIPv4
	if p.src.Is6() {
		fam = FamilyIPv6
	}
	return CTKey{Ifindex: testIfindex, Family: fam, Proto: p.proto, Dir: DirIngress, Sport: be16(p.sport), Dport: be16(p.dport),
		Saddr: addrBytes(p.src), Daddr: addrBytes(p.dst)}
}

func ctLookup(d *Datapath, k CTKey) (CTVal, error) {
	var v CTVal
	err := d.tc.Conntrack.Lookup(&k, &v)
	return v, err
}

// TestConfigMovesGeneration: a config write can change which packets tc
// decides (svc_mark), so it moves the policy generation on like a map
// write: no verdict cached before it is taken after it.
func TestConfigMovesGeneration(t *testing.T) {
	d := newTestDatapath(t, Options{})
	before := must[uint64](t)(d.PolicyGeneration())
	cfg := must[Config](t)(d.Config())
	cfg.SvcMark = 0x200
	if err := d.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if after := must[uint64](t)(d.PolicyGeneration()); after == before {
		t.Errorf("policy generation %d unchanged by a config write", after)
	}
}

// TestFirstReplyStamped: a flow's entry is created with its replies
// already vouched for at the generation it was allowed at (reply_gen),
// where the reply would pass the endpoint step: always entering the pod,
// and leaving it only from one of its addresses. So the first reply takes
// the fast path; with the endpoint deleted behind the Datapath's back it
// still counts as a reply, while an unvouched one is decided without an
// endpoint. A SYN on a live tuple writes the entry anew.
func TestFirstReplyStamped(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		f := newServerFixture(t, v6)
		g := must[uint64](t)(f.d.PolicyGeneration())
		in := f.in(f.peer, protoTCP, 40000, 80)
		stray := f.in(f.peer, protoTCP, 40001, 80)
		stray.dst = f.spoofed // routed into the pod's veth, not one of its addresses
		out := f.out(f.peer, protoTCP, 40002, 443)
		f.expect("in", DirIngress, in.bytes(), VerdictAllow, ReasonAllowed)
		f.expect("in to another address", DirIngress, stray.bytes(), VerdictAllow, ReasonAllowed)
		f.expect("out", DirEgress, out.bytes(), VerdictAllow, ReasonNotIsolated)
		outKey := ctKeyOf(f, out)
		outKey.Dir = DirEgress
		for _, c := range []struct {
			name     string
			key      CTKey
			replyGen uint64
		}{{"in", ctKeyOf(f, in), g}, {"in to another address", ctKeyOf(f, stray), 0}, {"out", outKey, g}} {
			if val := must[CTVal](t)(ctLookup(f.d, c.key)); val.VerifiedGen != g || val.ReplyGen != c.replyGen {
				t.Errorf("%s: entry %+v, want verified at %d, replies at %d", c.name, val, g, c.replyGen)
			}
		}

		f.deleteEndpointBehindBack()
		synAck := func(src, dst netip.Addr, sport, dport uint16) []byte {
			return pkt{src: src, dst: dst, proto: protoTCP, sport: sport, dport: dport, tcpFlags: tcpSYN | tcpACK}.bytes()
		}
		f.expect("reply", DirEgress, synAck(f.pod, f.peer, 80, 40000), VerdictAllow, ReasonReply)
		f.expect("reply from another address", DirEgress, synAck(f.spoofed, f.peer, 80, 40001), VerdictAllow, ReasonNoEndpoint)
		f.expect("reply of out", DirIngress, synAck(f.peer, f.pod, 443, 40002), VerdictAllow, ReasonReply)

		f.setEndpoint(EndpointIngressIsolated) // a write: the generation moves on
		g2 := must[uint64](t)(f.d.PolicyGeneration())
		f.expect("in again", DirIngress, in.bytes(), VerdictAllow, ReasonAllowed)
		if val := must[CTVal](t)(ctLookup(f.d, ctKeyOf(f, in))); val.VerifiedGen != g2 || val.ReplyGen != g2 || val.RuleId != 7 {
			t.Errorf("in again: entry %+v, want rule 7 verified and replies at %d", val, g2)
		}
		f.expect("reply from another address, endpoint back", DirEgress, synAck(f.spoofed, f.peer, 80, 40001), VerdictDrop, ReasonSpoofed)
	}
}
