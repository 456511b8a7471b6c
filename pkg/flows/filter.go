package flows

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ztnet/zt/pkg/datapath"
)

// ReasonSuppressed is the reason of summary records.
const ReasonSuppressed = "suppressed"

// MaxLast bounds Filter.Last, so a query's memory is bounded.
const MaxLast = 100000

// Filter selects records. The zero Filter matches everything. It is
// applied by the agent (server side); ParseFilter and Values carry it in a
// URL query.
type Filter struct {
	// Namespace matches records with a pod of this namespace on either
	// side, unless AllNamespaces. It also scopes Pod, From and To given as
	// a bare pod name or a label selector.
	Namespace     string
	AllNamespaces bool
	// Pod matches either side: "ns/name" or "name".
	Pod string
	// From and To match the source and destination: "ns/name", "name", a
	// label selector ("app=web", "tier in (a,b)"), "world", "host", an IP
	// address or a CIDR.
	From, To string
	// Verdict is "dropped", "allowed" or "audit" (also "drop", "allow").
	Verdict string
	// Reason is a datapath reason ("policy-denied") or "suppressed".
	Reason string
	// Port matches the destination port; Protocol the protocol ("TCP").
	Port     uint16
	Protocol string
	// Since and Until bound the record time (zero: unbounded).
	Since, Until time.Time
	// Last keeps only the last N matching records (0: all, at most
	// MaxLast).
	Last int
	// Follow streams records stored after the query started.
	Follow bool
	// Node matches the node name.
	Node string

	compiled  bool
	from, to  peerMatch
	pod       peerMatch
	verdict   string
	namespace string
}

// peerMatch is a compiled From/To/Pod.
type peerMatch struct {
	set       bool
	namespace string // "" = any (scoped by Filter.Namespace when bare)
	name      string
	selector  labels.Selector
	reserved  string
	prefix    netip.Prefix
}

func (m *peerMatch) match(p *Peer) bool {
	switch {
	case !m.set:
		return true
	case m.reserved != "":
		return p.Reserved == m.reserved
	case m.prefix.IsValid():
		return p.IP.IsValid() && m.prefix.Contains(p.IP.Unmap())
	case p.Pod == "" || (m.namespace != "" && p.Namespace != m.namespace):
		return false
	case m.selector != nil:
		return m.selector.Matches(labels.Set(p.Labels))
	}
	return p.Pod == m.name
}

func compilePeer(s, namespace string, what string) (peerMatch, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return peerMatch{}, nil
	}
	m := peerMatch{set: true}
	switch {
	case s == "world" || s == "host":
		m.reserved = s
		return m, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		m.prefix = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		return m, nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		m.prefix = p.Masked()
		return m, nil
	}
	if strings.ContainsAny(s, "=!(), ") {
		sel, err := labels.Parse(s)
		if err != nil {
			return m, fmt.Errorf("%s %q: not a pod, address or label selector: %w", what, s, err)
		}
		m.selector, m.namespace = sel, namespace
		return m, nil
	}
	if ns, name, ok := strings.Cut(s, "/"); ok {
		if ns == "" || name == "" || strings.Contains(name, "/") {
			return m, fmt.Errorf("%s %q: want namespace/pod", what, s)
		}
		m.namespace, m.name = ns, name
		return m, nil
	}
	m.namespace, m.name = namespace, s
	return m, nil
}

var verdictAliases = map[string]string{
	"dropped": "drop", "drop": "drop", "denied": "drop",
	"allowed": "allow", "allow": "allow",
	"audit": "audit", "audited": "audit",
}

// Compile validates the filter and prepares it for Match. Match compiles
// on first use; call Compile to see errors.
func (f *Filter) Compile() error {
	var errs []error
	f.namespace = f.Namespace
	if f.AllNamespaces {
		f.namespace = ""
	}
	var err error
	if f.from, err = compilePeer(f.From, f.namespace, "from"); err != nil {
		errs = append(errs, err)
	}
	if f.to, err = compilePeer(f.To, f.namespace, "to"); err != nil {
		errs = append(errs, err)
	}
	if f.pod, err = compilePeer(f.Pod, f.namespace, "pod"); err != nil {
		errs = append(errs, err)
	} else if f.pod.set && f.pod.name == "" {
		errs = append(errs, fmt.Errorf("pod %q: want namespace/pod or pod", f.Pod))
	}
	f.verdict = ""
	if f.Verdict != "" {
		v, ok := verdictAliases[strings.ToLower(f.Verdict)]
		if !ok {
			errs = append(errs, fmt.Errorf("verdict %q: want dropped, allowed or audit", f.Verdict))
		}
		f.verdict = v
	}
	if f.Reason != "" && !slices.Contains(reasonNames(), f.Reason) {
		errs = append(errs, fmt.Errorf("reason %q: want one of %s", f.Reason, strings.Join(reasonNames(), ", ")))
	}
	if f.Last < 0 || f.Last > MaxLast {
		errs = append(errs, fmt.Errorf("last %d: want 0 to %d", f.Last, MaxLast))
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		errs = append(errs, fmt.Errorf("until %s is before since %s", f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339)))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	f.compiled = true
	return nil
}

func reasonNames() []string {
	var out []string
	for _, r := range datapath.Reasons() {
		out = append(out, r.String())
	}
	return append(out, ReasonSuppressed)
}

// Match reports whether r passes the filter (Last and Follow aside). An
// invalid filter matches nothing.
func (f *Filter) Match(r *Record) bool {
	if !f.compiled && f.Compile() != nil {
		return false
	}
	if f.namespace != "" && r.Src.Namespace != f.namespace && r.Dst.Namespace != f.namespace {
		return false
	}
	if f.pod.set && !f.pod.match(&r.Src) && !f.pod.match(&r.Dst) {
		return false
	}
	if !f.from.match(&r.Src) || !f.to.match(&r.Dst) {
		return false
	}
	if f.verdict != "" && r.Verdict != f.verdict {
		return false
	}
	if f.Reason != "" && r.Reason != f.Reason {
		return false
	}
	if f.Port != 0 && r.Dst.Port != f.Port {
		return false
	}
	if f.Protocol != "" && !strings.EqualFold(r.Protocol, f.Protocol) {
		return false
	}
	if f.Node != "" && r.Node != f.Node {
		return false
	}
	if !f.Since.IsZero() && r.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && r.Time.After(f.Until) {
		return false
	}
	return true
}

// Values encodes the filter as URL query parameters.
func (f *Filter) Values() url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	if !f.AllNamespaces {
		set("namespace", f.Namespace)
	}
	set("pod", f.Pod)
	set("from", f.From)
	set("to", f.To)
	set("verdict", f.Verdict)
	set("reason", f.Reason)
	if f.Port != 0 {
		v.Set("port", strconv.Itoa(int(f.Port)))
	}
	set("protocol", f.Protocol)
	if !f.Since.IsZero() {
		v.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		v.Set("until", f.Until.UTC().Format(time.RFC3339Nano))
	}
	if f.Last != 0 {
		v.Set("last", strconv.Itoa(f.Last))
	}
	if f.Follow {
		v.Set("follow", "1")
	}
	set("node", f.Node)
	return v
}

// ParseTime parses an absolute time (RFC 3339) or a duration before now
// ("24h", "90s").
func ParseTime(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: want a positive duration", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want a duration (24h) or an RFC 3339 time", s)
	}
	return t, nil
}

// ParseFilter decodes URL query parameters (see Values) and compiles the
// filter.
func ParseFilter(v url.Values, now time.Time) (Filter, error) {
	f := Filter{
		Namespace: v.Get("namespace"), Pod: v.Get("pod"), From: v.Get("from"), To: v.Get("to"),
		Verdict: v.Get("verdict"), Reason: v.Get("reason"), Protocol: v.Get("protocol"), Node: v.Get("node"),
	}
	f.AllNamespaces = f.Namespace == ""
	var errs []error
	if s := v.Get("port"); s != "" {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil || p == 0 {
			errs = append(errs, fmt.Errorf("port %q: want 1-65535", s))
		}
		f.Port = uint16(p)
	}
	for k, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if s := v.Get(k); s != "" {
			t, err := ParseTime(s, now)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %w", k, err))
			}
			*dst = t
		}
	}
	if s := v.Get("last"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("last %q: want a number", s))
		}
		f.Last = n
	}
	switch v.Get("follow") {
	case "", "0", "false":
	default:
		f.Follow = true
	}
	if err := errors.Join(errs...); err != nil {
		return f, err
	}
	return f, f.Compile()
}
