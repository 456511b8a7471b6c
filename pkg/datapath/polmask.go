package datapath

import (
	"fmt"
	"iter"
)

// The policy map is a hash of exact keys: a program finds the longest
// matching prefix by probing one key per prefix length in use, from the
// longest down, and the polmask map names those lengths (zt_abi.h). The
// mask may name a length no key has (a probe that misses), never the
// reverse: every policy write first adds the bits of its keys, and only
// SetPolicyMask, given all that the policy map holds, clears bits.

// CheckPolicyKey reports whether k can be written to the policy map: a
// valid direction and prefix length, and zero bits past the prefix
// length (a hash matches keys exactly, so a stray bit would never match).
func CheckPolicyKey(k PolicyKey) error {
	if k.Dir >= dirMax {
		return fmt.Errorf("policy key %+v: invalid direction %d", k, k.Dir)
	}
	switch p := k.Prefixlen; {
	case p == policyPrefixAny:
		if k.Proto != 0 || k.Port != 0 {
			return fmt.Errorf("policy key %+v: any-protocol key with protocol or port set", k)
		}
	case p == policyPrefixProto:
		if k.Port != 0 {
			return fmt.Errorf("policy key %+v: any-port key with a port set", k)
		}
	case p > policyPrefixProto && p <= policyPrefixFull:
		if k.Proto == 0 {
			return fmt.Errorf("policy key %+v: port without a protocol", k)
		}
		if low := uint16(1)<<(policyPrefixFull-p) - 1; ntohs(k.Port)&low != 0 {
			return fmt.Errorf("policy key %+v: port %d has bits past prefix length %d", k, ntohs(k.Port), p)
		}
	default:
		return fmt.Errorf("policy key %+v: invalid prefix length %d", k, p)
	}
	return nil
}

// Add sets the bit of k's prefix length (k must pass CheckPolicyKey).
func (m *PolicyMask) Add(k PolicyKey) {
	m.Plens[k.Dir&1] |= 1 << (k.Prefixlen - policyPrefixAny)
}

// PolicyMaskOf returns the mask naming exactly the prefix lengths of keys.
func PolicyMaskOf(keys iter.Seq[PolicyKey]) PolicyMask {
	var m PolicyMask
	for k := range keys {
		m.Add(k)
	}
	return m
}

// PolicyMask reads the polmask map.
func (d *Datapath) PolicyMask() (PolicyMask, error) {
	var zero uint32
	var m PolicyMask
	if err := d.tc.Polmask.Lookup(&zero, &m); err != nil {
		return m, fmt.Errorf("read policy mask: %w", mapErr("polmask", err))
	}
	return m, nil
}

// SetPolicyMask writes m, which must name at least the prefix length of
// every key the policy map holds (pkg/mapsync passes PolicyMaskOf of all
// of them after a reconcile, dropping lengths no longer in use). A mask
// that is already there is not written again.
func (d *Datapath) SetPolicyMask(m PolicyMask) error {
	d.maskMu.Lock()
	defer d.maskMu.Unlock()
	have, err := d.PolicyMask()
	if err != nil || have == m {
		return err
	}
	return d.changed(d.writePolicyMask(m))
}

// addPolicyMask checks keys and adds their prefix lengths to the mask
// before they are written.
func (d *Datapath) addPolicyMask(keys []PolicyKey) error {
	var need PolicyMask
	for _, k := range keys {
		if err := CheckPolicyKey(k); err != nil {
			return err
		}
		need.Add(k)
	}
	d.maskMu.Lock()
	defer d.maskMu.Unlock()
	return d.growPolicyMask(need)
}

// growPolicyMask adds need to the mask (maskMu held).
func (d *Datapath) growPolicyMask(need PolicyMask) error {
	have, err := d.PolicyMask()
	if err != nil {
		return err
	}
	m := have
	for i := range m.Plens {
		m.Plens[i] |= need.Plens[i]
	}
	if m == have {
		return nil
	}
	return d.writePolicyMask(m)
}

func (d *Datapath) writePolicyMask(m PolicyMask) error {
	var zero uint32
	if err := d.tc.Polmask.Put(&zero, &m); err != nil {
		return fmt.Errorf("write policy mask: %w", mapErr("polmask", err))
	}
	return nil
}
