package identity

import (
	"maps"
	"net/netip"
	"slices"
)

// IPCache maps prefixes to identities and answers longest-prefix lookups,
// as the kernel's ipcache and ipcidr maps do together. The zero value is
// empty and ready.
type IPCache struct {
	entries map[netip.Prefix]Entry
	// refs counts the prefixes of each length, per family, so Lookup only
	// probes lengths in use.
	lens4, lens6 [129]int
	// ver counts the changes; journal[i] is the prefix changed by change
	// journalBase+i+1 (ChangedSince). It is cleared when it outgrows the
	// entries, so it never holds more than about twice as many.
	ver, journalBase uint64
	journal          []netip.Prefix
}

// Entry is what a prefix maps to: its identity and, for an address (a
// single-address prefix), the identity it has as a member of the prefixes
// policies reference (CIDR, 0 for none). The kernel probes the policy of
// an address's CIDR identity after its own identity's and the wildcard's
// (bpf/zt_abi.h, "Prefix identity of an address").
type Entry struct {
	ID   ID
	CIDR ID
}

// record notes a change of p.
func (c *IPCache) record(p netip.Prefix) {
	c.ver++
	if len(c.journal) >= max(1024, 2*len(c.entries)) {
		c.journal, c.journalBase = c.journal[:0], c.ver-1
	}
	c.journal = append(c.journal, p)
}

// Version counts the changes made so far: a consumer that copied the
// entries at version v learns what changed since from ChangedSince(v).
func (c *IPCache) Version() uint64 { return c.ver }

// ChangedSince returns the prefixes set to another identity, added or
// deleted after version v (possibly repeated; look each one up with Get),
// or false when they are no longer known: then copy Entries anew.
func (c *IPCache) ChangedSince(v uint64) ([]netip.Prefix, bool) {
	if v < c.journalBase || v > c.ver {
		return nil, false
	}
	return slices.Clone(c.journal[v-c.journalBase:]), true
}

// Set maps p (masked) to e.
func (c *IPCache) Set(p netip.Prefix, e Entry) {
	p = p.Masked()
	if c.entries == nil {
		c.entries = map[netip.Prefix]Entry{}
	}
	old, ok := c.entries[p]
	if !ok {
		c.lens(p)[p.Bits()]++
	}
	if !ok || old != e {
		c.record(p)
	}
	c.entries[p] = e
}

// Delete removes p.
func (c *IPCache) Delete(p netip.Prefix) {
	p = p.Masked()
	if _, ok := c.entries[p]; ok {
		c.lens(p)[p.Bits()]--
		delete(c.entries, p)
		c.record(p)
	}
}

func (c *IPCache) lens(p netip.Prefix) *[129]int {
	if p.Addr().Is4() {
		return &c.lens4
	}
	return &c.lens6
}

// Get returns the entry stored for exactly p.
func (c *IPCache) Get(p netip.Prefix) (Entry, bool) {
	e, ok := c.entries[p.Masked()]
	return e, ok
}

// Lookup returns the entry of the longest prefix containing a, or
// World's.
func (c *IPCache) Lookup(a netip.Addr) Entry {
	a = a.Unmap()
	lens, max := &c.lens6, 128
	if a.Is4() {
		lens, max = &c.lens4, 32
	}
	for bits := max; bits >= 0; bits-- {
		if lens[bits] == 0 {
			continue
		}
		p, _ := a.Prefix(bits)
		if e, ok := c.entries[p]; ok {
			return e
		}
	}
	return Entry{ID: World}
}

// Len returns the number of entries.
func (c *IPCache) Len() int { return len(c.entries) }

// Entries returns a copy of all entries.
func (c *IPCache) Entries() map[netip.Prefix]Entry { return maps.Clone(c.entries) }

// Prefixes returns the stored prefixes in a stable order.
func (c *IPCache) Prefixes() []netip.Prefix {
	return slices.SortedFunc(maps.Keys(c.entries), ComparePrefix)
}
