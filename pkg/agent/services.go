package agent

import (
	"fmt"
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"github.com/ztnet/zt/pkg/k8swatch"
)

// Service egress: an isolated pod's egress to a Service address is
// decided after kube-proxy's NAT, on the pod the address is translated to
// (see datapath.AttachNetfilter). The agent attaches the netfilter program
// before it sets the mark that defers the verdict, so nothing passes
// undecided; without the program Service addresses are decided before the
// NAT (as sent), which can only deny more.
func (a *Agent) setupServiceEgress() {
	mark := a.cfg.ServiceMark
	if mark != 0 {
		if err := a.dp.AttachNetfilter(); err != nil {
			a.metrics.errors.WithLabelValues("netfilter").Inc()
			a.log.Warn("netfilter program unavailable: egress to Service addresses is decided before kube-proxy's NAT, on the address as sent", zap.Error(err))
			mark = 0
		}
	}
	if err := a.dp.SetServiceMark(mark); err != nil {
		a.metrics.errors.WithLabelValues("netfilter").Inc()
		a.log.Error("set the Service mark", zap.Error(err))
		return
	}
	if mark != 0 {
		a.log.Info("Service egress decided after the NAT", zap.String("mark", fmt.Sprintf("%#x", mark)))
	} else if err := a.dp.DetachNetfilter(); err != nil {
		a.log.Warn("detach netfilter program", zap.Error(err))
	}
}

// syncServiceRanges writes the cluster's Service IP ranges (ServiceCIDR
// objects plus --service-cidrs) when they changed.
func (a *Agent) syncServiceRanges() {
	ranges, changed, err := a.watch.ServiceRanges()
	if err != nil {
		a.metrics.errors.WithLabelValues("service_cidrs").Inc()
		a.log.Error("Service IP ranges", zap.Error(err))
	}
	var want []netip.Prefix
	switch {
	case changed:
		want = slices.Concat(ranges, a.cfg.ServiceCIDRs)
	case a.svcRanges != nil || len(a.cfg.ServiceCIDRs) == 0:
		return
	default:
		// Not listed yet (or the role may not list them): add the
		// flag's ranges to what the map holds, an earlier agent's
		// included; nothing is removed before the list.
		cur, err := a.dp.ServiceCIDRs()
		if err != nil {
			a.log.Error("read Service IP ranges", zap.Error(err))
			return
		}
		want = slices.Concat(cur, a.cfg.ServiceCIDRs)
		slices.SortFunc(want, k8swatch.ComparePrefix)
		want = slices.Compact(want)
		if slices.Equal(want, cur) {
			return
		}
		if err := a.dp.SetServiceCIDRs(want); err != nil {
			a.metrics.errors.WithLabelValues("service_cidrs").Inc()
			a.log.Error("write Service IP ranges", zap.Error(err))
		}
		return
	}
	slices.SortFunc(want, k8swatch.ComparePrefix)
	want = slices.Compact(want)
	if a.svcRanges != nil && slices.Equal(want, *a.svcRanges) {
		return
	}
	if err := a.dp.SetServiceCIDRs(want); err != nil {
		a.metrics.errors.WithLabelValues("service_cidrs").Inc()
		a.log.Error("write Service IP ranges", zap.Error(err))
		return
	}
	a.svcRanges = &want
	a.log.Info("Service IP ranges", zap.Stringers("ranges", want))
}
