package policy

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/ztnet/zt/pkg/identity"
)

// PodFromAPI projects a Pod onto what the compiler reads: labels, the
// addresses in status.podIPs (or status.podIP), and the ports its
// containers (and restartable init containers) declare.
func PodFromAPI(p *corev1.Pod) (Pod, error) {
	out := Pod{
		Namespace:   p.Namespace,
		Name:        p.Name,
		Labels:      p.Labels,
		NodeName:    p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for i, ip := range ips {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			return out, fmt.Errorf("pod %s/%s: status.podIPs[%d]: invalid IP %q", p.Namespace, p.Name, i, ip.IP)
		}
		if !slices.Contains(out.IPs, a.Unmap()) {
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	containers := slices.Clone(p.Spec.Containers)
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			containers = append(containers, c)
		}
	}
	for _, c := range containers {
		for j, cp := range c.Ports {
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			pr, err := identity.ParseProtocol(string(proto))
			if err != nil {
				return out, fmt.Errorf("pod %s/%s: container %s ports[%d]: %v", p.Namespace, p.Name, c.Name, j, err)
			}
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				return out, fmt.Errorf("pod %s/%s: container %s ports[%d]: containerPort %d out of range", p.Namespace, p.Name, c.Name, j, cp.ContainerPort)
			}
			out.Ports = append(out.Ports, ContainerPort{Name: cp.Name, Port: uint16(cp.ContainerPort), Protocol: pr})
		}
	}
	return out, nil
}
