package mapsync

import (
	"fmt"
	"maps"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztnet/zt/internal/benchworld"
	"github.com/ztnet/zt/pkg/policy"
)

// BenchmarkNodeSync: what the agent does after the compiler's Sync when a
// local pod is relabeled (its identity, its policies and every rule
// naming it change), on one node of a generated cluster: Builder.Update
// and Syncer.ApplyDelta, against Desired and Apply of the same change in
// the same run (into in-memory maps, so the kernel's writes are not in
// it). ratio = whole / delta.
func BenchmarkNodeSync(b *testing.B) {
	for _, sz := range []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 1_000}, {10_000, 10_000}} {
		b.Run(fmt.Sprintf("pods=%d/policies=%d", sz.pods, sz.policies), func(b *testing.B) {
			w := benchworld.Generate(sz.pods, sz.policies)
			c := policy.Build(w, policy.Options{NodeName: w.Pods[0].NodeName})
			var binds []Binding
			for i, ep := range c.Endpoints() {
				binds = append(binds, Binding{Pod: ep.Pod, Ifindex: uint32(100 + i)})
			}
			bl := NewBuilder()
			whole, delta := New(newFake().maps()), New(newFake().maps())
			st, _, err := bl.Update(c, binds, Options{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := whole.Reconcile(st); err != nil {
				b.Fatal(err)
			}
			if _, err := delta.Reconcile(st); err != nil {
				b.Fatal(err)
			}
			var tWhole, tDelta time.Duration
			writes, i := 0, 0
			for b.Loop() {
				c.SetPod(benchworld.Relabel(w.Pods[0], i))
				c.Sync()
				i++
				t0 := time.Now()
				st, d, err := bl.Update(c, binds, Options{})
				if err == nil {
					var s Stats
					s, err = delta.ApplyDelta(st, d)
					writes += s.Writes()
				}
				t1 := time.Now()
				if err == nil {
					var want State
					if want, err = Desired(c, binds, Options{}); err == nil {
						_, err = whole.Apply(want)
					}
				}
				tDelta, tWhole = tDelta+t1.Sub(t0), tWhole+time.Since(t1)
				if err != nil {
					b.Fatal(err)
				}
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(tDelta), "delta-ms/op")
			b.ReportMetric(ms(tWhole), "whole-ms/op")
			b.ReportMetric(float64(tWhole)/float64(tDelta), "ratio")
			b.ReportMetric(float64(writes)/float64(b.N), "writes/op")
		})
	}
}

// BenchmarkRollout: a Deployment's rollout seen by the agent of one node
// of a generated cluster (10,000 pods, 1,000 policies) whose pods carry a
// pod-template-hash, as a Deployment's do. Each op moves every pod of
// the local pod's Deployment (its app and version in its namespace,
// spread over nodes) to a new hash in one Sync, followed by the agent's
// path (Builder.Update, Syncer.ApplyDelta into in-memory maps).
//   - untested: no policy tests pod-template-hash, so the pods keep their
//     identity (an identity holds only the labels some peer selector tests);
//   - tested: one policy in another namespace tests it, so each rollout
//     makes a new identity and rewrites every rule naming the old one, as
//     every rollout did when identities held every label.
//
// Both in the same run, alternating; ratio = tested / untested time.
func BenchmarkRollout(b *testing.B) {
	type side struct {
		c        *policy.Compiler
		bl       *Builder
		s        *Syncer
		binds    []Binding
		deploy   []policy.Pod
		t        time.Duration
		writes   int
		identity int
	}
	const hashKey = "pod-template-hash"
	setup := func(tested bool) *side {
		w := benchworld.Generate(10_000, 1_000)
		for i := range w.Pods {
			p := &w.Pods[i]
			p.Labels[hashKey] = fmt.Sprintf("%s-%s-0", p.Labels["app"], p.Labels["version"])
		}
		if tested {
			w.Policies = append(w.Policies, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: w.Pods[1].Namespace, Name: "tests-hash"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": w.Pods[1].Labels["app"]}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
						PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
							{Key: hashKey, Operator: metav1.LabelSelectorOpExists}}},
					}}}},
				},
			})
		}
		sd := &side{c: policy.Build(w, policy.Options{NodeName: w.Pods[0].NodeName}), bl: NewBuilder(), s: New(newFake().maps())}
		for i, ep := range sd.c.Endpoints() {
			sd.binds = append(sd.binds, Binding{Pod: ep.Pod, Ifindex: uint32(100 + i)})
		}
		p0 := w.Pods[0]
		for _, p := range w.Pods {
			if p.Namespace == p0.Namespace && p.Labels["app"] == p0.Labels["app"] && p.Labels["version"] == p0.Labels["version"] {
				sd.deploy = append(sd.deploy, p)
			}
		}
		st, _, err := sd.bl.Update(sd.c, sd.binds, Options{})
		if err == nil {
			_, err = sd.s.Reconcile(st)
		}
		if err != nil {
			b.Fatal(err)
		}
		sd.identity = len(sd.c.Identities())
		return sd
	}
	sides := []*side{setup(false), setup(true)}
	i := 0
	for b.Loop() {
		i++
		for j := range sides {
			sd := sides[(i+j)%2]
			t0 := time.Now()
			for _, p := range sd.deploy {
				p.Labels = maps.Clone(p.Labels)
				p.Labels[hashKey] = fmt.Sprintf("%s-%s-%d", p.Labels["app"], p.Labels["version"], i)
				sd.c.SetPod(p)
			}
			sd.c.Sync()
			st, d, err := sd.bl.Update(sd.c, sd.binds, Options{})
			if err == nil {
				var s Stats
				s, err = sd.s.ApplyDelta(st, d)
				sd.writes += s.Writes()
			}
			sd.t += time.Since(t0)
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(sides[0].t), "untested-ms/op")
	b.ReportMetric(ms(sides[1].t), "tested-ms/op")
	b.ReportMetric(float64(sides[1].t)/float64(sides[0].t), "ratio")
	b.ReportMetric(float64(sides[0].writes)/float64(b.N), "untested-writes/op")
	b.ReportMetric(float64(sides[1].writes)/float64(b.N), "tested-writes/op")
	b.ReportMetric(float64(sides[0].identity), "untested-identities")
	b.ReportMetric(float64(sides[1].identity), "tested-identities")
	b.ReportMetric(float64(len(sides[0].deploy)), "pods-rolled")
}
