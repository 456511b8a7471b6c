// Package bundle reads a bundle: a multi-document YAML (or JSON) stream, or
// a v1 List, of plain Kubernetes Namespaces, Pods and NetworkPolicies, such
// as `kubectl get ns,pods,netpol -A -o yaml` prints. It decodes with the
// apimachinery universal deserializer, so any apiVersion client-go knows
// converts to the types the compiler reads.
package bundle

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/policy"
)

// ErrBundle marks every error about the bundle's content.
var ErrBundle = errors.New("bad bundle")

// Bundle is the decoded content, in document order.
type Bundle struct {
	Namespaces []*corev1.Namespace
	Pods       []*corev1.Pod
	Policies   []*networkingv1.NetworkPolicy
}

// Load reads one or more bundle files ("-" is standard input) into one
// bundle; an object in two files is a duplicate.
func Load(paths ...string) (*Bundle, error) {
	b := &Bundle{}
	seen := map[string]where{}
	for _, path := range paths {
		var r io.Reader
		if path == "-" {
			r = os.Stdin
		} else {
			f, err := os.Open(path)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			r = f
		}
		if err := b.decode(r, path, seen); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// where locates an object in the stream for error messages: the document
// index (1-based) and, inside a List, the item index (0-based).
type where struct {
	file string
	doc  int
	item int // -1 outside a List
}

func (w where) String() string {
	s := fmt.Sprintf("document %d", w.doc)
	if w.item >= 0 {
		s += fmt.Sprintf(", item %d", w.item)
	}
	if w.file != "" {
		s = w.file + ": " + s
	}
	return s
}

func errAt(w where, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrBundle, w, fmt.Sprintf(format, args...))
}

// Decode reads a bundle. Errors name the document (and List item) index.
func Decode(r io.Reader) (*Bundle, error) {
	b := &Bundle{}
	if err := b.decode(r, "", map[string]where{}); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Bundle) decode(r io.Reader, file string, seen map[string]where) error {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	decoder := scheme.Codecs.UniversalDeserializer()
	for doc := 1; ; doc++ {
		data, err := reader.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errAt(where{file, doc, -1}, "read: %v", err)
		}
		if len(bytes.TrimSpace(stripComments(data))) == 0 {
			doc--
			continue // an empty document between separators
		}
		if err := b.add(decoder, data, where{file, doc, -1}, seen); err != nil {
			return err
		}
	}
	return nil
}

func stripComments(data []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(data, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

func (b *Bundle) add(decoder runtime.Decoder, data []byte, w where, seen map[string]where) error {
	obj, gvk, err := decoder.Decode(data, nil, nil)
	if err != nil {
		if gvk != nil && gvk.Kind != "" {
			return errAt(w, "%s: %v", gvk.Kind, err)
		}
		return errAt(w, "%v", err)
	}
	switch o := obj.(type) {
	case *corev1.List:
		if w.item >= 0 {
			return errAt(w, "a List inside a List is not supported")
		}
		for i, item := range o.Items {
			if err := b.add(decoder, item.Raw, where{w.file, w.doc, i}, seen); err != nil {
				return err
			}
		}
		return nil
	case *metav1.List:
		if w.item >= 0 {
			return errAt(w, "a List inside a List is not supported")
		}
		for i, item := range o.Items {
			if err := b.add(decoder, item.Raw, where{w.file, w.doc, i}, seen); err != nil {
				return err
			}
		}
		return nil
	case *corev1.Namespace:
		if o.Name == "" {
			return errAt(w, "Namespace has no metadata.name")
		}
		if err := dup(seen, w, "Namespace "+o.Name); err != nil {
			return err
		}
		b.Namespaces = append(b.Namespaces, o)
	case *corev1.Pod:
		if err := named(w, seen, "Pod", &o.ObjectMeta); err != nil {
			return err
		}
		b.Pods = append(b.Pods, o)
	case *networkingv1.NetworkPolicy:
		if err := named(w, seen, "NetworkPolicy", &o.ObjectMeta); err != nil {
			return err
		}
		b.Policies = append(b.Policies, o)
	default:
		return errAt(w, "unsupported kind %s (a bundle holds Namespaces, Pods and NetworkPolicies)", gvk.Kind)
	}
	return nil
}

// named defaults a namespaced object's namespace, requires its name and
// refuses a duplicate.
func named(w where, seen map[string]where, kind string, m *metav1.ObjectMeta) error {
	if m.Namespace == "" {
		m.Namespace = metav1.NamespaceDefault
	}
	if m.Name == "" {
		return errAt(w, "%s in namespace %s has no metadata.name", kind, m.Namespace)
	}
	return dup(seen, w, kind+" "+m.Namespace+"/"+m.Name)
}

func dup(seen map[string]where, w where, name string) error {
	if first, ok := seen[name]; ok {
		return errAt(w, "duplicate %s (first in %s)", name, first)
	}
	seen[name] = w
	return nil
}

// Snapshot converts the bundle into the compiler's input. Pods without an
// address are an error (the reachability of a pod without one is
// undefined); namespaces that pods or policies name but the bundle lacks
// are created with no labels but the name label.
func (b *Bundle) Snapshot() (policy.Snapshot, error) {
	var s policy.Snapshot
	have := map[string]bool{}
	for _, ns := range b.Namespaces {
		have[ns.Name] = true
		s.Namespaces = append(s.Namespaces, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	implicit := func(ns string) {
		if !have[ns] {
			have[ns] = true
			s.Namespaces = append(s.Namespaces, policy.Namespace{Name: ns})
		}
	}
	var errs []error
	for _, p := range b.Pods {
		implicit(p.Namespace)
		pod, err := policy.PodFromAPI(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %v", ErrBundle, err))
			continue
		}
		if len(pod.IPs) == 0 {
			errs = append(errs, fmt.Errorf("%w: pod %s/%s has no IP (status.podIPs is empty): a bundle needs every pod's address", ErrBundle, p.Namespace, p.Name))
			continue
		}
		s.Pods = append(s.Pods, pod)
	}
	for _, np := range b.Policies {
		implicit(np.Namespace)
		s.Policies = append(s.Policies, np)
	}
	return s, errors.Join(errs...)
}

// PortKey is a (port, protocol) a pod declares.
type PortKey struct {
	Port     uint16
	Protocol identity.Protocol
}

func (k PortKey) String() string { return fmt.Sprintf("%d/%s", k.Port, k.Protocol) }

// ParsePortKey parses "80", "80/TCP", "53/udp".
func ParsePortKey(s string) (PortKey, error) {
	num, proto, found := strings.Cut(s, "/")
	k := PortKey{Protocol: identity.ProtoTCP}
	if found {
		p, err := identity.ParseProtocol(strings.ToUpper(proto))
		if err != nil {
			return k, err
		}
		k.Protocol = p
	}
	var n int
	if _, err := fmt.Sscanf(num, "%d", &n); err != nil || n < 1 || n > 65535 || fmt.Sprint(n) != num {
		return k, fmt.Errorf("invalid port %q (want 1-65535, optionally /TCP, /UDP or /SCTP)", s)
	}
	k.Port = uint16(n)
	return k, nil
}
