package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultBPFFSRoot is where maps and links are pinned by default.
const DefaultBPFFSRoot = "/sys/fs/bpf/zt"

// ErrMapIncompatible is wrapped by Open when a pinned map's type, key or
// value size, max entries or flags differ from what this build expects and
// Options.Migrate is not set. It also wraps ebpf.ErrMapIncompatible.
var ErrMapIncompatible = errors.New("pinned map incompatible")

// ErrMapFull is wrapped by writes that fail because a map is full
// (E2BIG from hash maps, ENOSPC from LPM tries). The error names the map;
// the previous entries stay in place.
var ErrMapFull = errors.New("map full")

// MapSizes overrides max_entries of the maps; zero keeps the default.
// Changing a size of an existing pinned map is a layout change (see
// Options.Migrate).
type MapSizes struct {
	// IPCache sizes both ipcache (host addresses, preallocated) and
	// ipcidr (shorter prefixes, memory per entry).
	IPCache   uint32
	Endpoints uint32
	Policy    uint32
	Conntrack uint32
	Netns     uint32
	// EventsBytes is the ring buffer size: a power of two multiple of the
	// page size.
	EventsBytes uint32
}

// Options configure Open.
type Options struct {
	// BPFFSRoot is the directory (on bpffs) maps and links are pinned in.
	// Default DefaultBPFFSRoot. bpffs is mounted at /sys/fs/bpf if needed.
	BPFFSRoot string
	MapSizes  MapSizes
	// Migrate replaces pinned maps whose layout differs instead of failing
	// with ErrMapIncompatible. A replaced map gets a new kernel object
	// pinned at the same path; entries are copied when key and value
	// sizes are unchanged (only max_entries or flags differ), otherwise the
	// new map starts empty and the caller must run a full reconcile.
	// Per-CPU maps (counters) restart from zero. Programs already attached
	// keep using the old maps until AttachEndpoint/AttachCgroup is called
	// again for them, so enforcement never has a gap. Datapath.Migrated
	// reports what was done.
	Migrate bool

	// NoMount refuses to mount bpffs when the root is not on one, instead
	// of mounting it. In a container a bpffs mounted by the agent is
	// private to it: the pins, and with them the attached programs, would
	// vanish when the container restarts. The host must mount it.
	NoMount bool

	// forceLegacyTC makes AttachEndpoint skip tcx (tests of the fallback).
	forceLegacyTC bool
}

// MapMigration describes one map replaced by Open with Options.Migrate.
type MapMigration struct {
	Map    string
	Reason string // the incompatibility, from cilium/ebpf
	Copied int    // entries copied into the new map
	// Moved entries went to another map (MovedTo): a trie became a hash
	// of host addresses, its shorter prefixes went to the new trie.
	Moved   int
	MovedTo string
	Empty   bool // layout changed: new map starts empty, reconcile needed
}

// trieToHash names the maps that were LPM tries and are hashes of the
// same key and value now, with the entries the hash keeps; the others
// move to the map moveTo once it is loaded. The programs find the same
// entries, so an upgrade is enforced from the first packet the new
// programs see.
var trieToHash = map[string]struct {
	keep   func(key []byte) bool
	moveTo string
}{
	"ipcache": {keep: isHostKey, moveTo: "ipcidr"},
	"policy":  {keep: func([]byte) bool { return true }},
}

// isHostKey reports whether a raw ipcache key is one address.
func isHostKey(b []byte) bool {
	var k IPCacheKey
	k.Prefixlen = binary.NativeEndian.Uint32(b[0:4])
	k.Family = Family(b[4])
	return k.IsHost()
}

// pendingMove are entries of a converted map that belong to another map,
// written there once it is loaded.
type pendingMove struct {
	from, to   string
	keys, vals [][]byte
}

// Datapath owns the loaded programs and the pinned maps. Close releases
// the file descriptors; pinned objects stay in the kernel.
type Datapath struct {
	root     string
	opts     Options
	tc       ztTcObjects
	sock     ztSockObjects
	nf       ztNfObjects
	migrated []MapMigration
	moves    []pendingMove
	genMu    sync.Mutex // orders policy generation bumps (polgen.go)
	maskMu   sync.Mutex // orders policy mask writes (polmask.go)
}

// Open mounts bpffs if needed, loads the programs and creates or adopts
// the maps pinned under opts.BPFFSRoot. Adopted maps keep their entries.
func Open(opts Options) (*Datapath, error) {
	if opts.BPFFSRoot == "" {
		opts.BPFFSRoot = DefaultBPFFSRoot
	}
	root := filepath.Clean(opts.BPFFSRoot)
	if err := ensureBPFFS(root, bpffsMount, !opts.NoMount); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(root, linksDir), 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}

	spec, err := loadZtTc()
	if err != nil {
		return nil, fmt.Errorf("load tc spec: %w", err)
	}
	if err := applySizes(spec, opts.MapSizes); err != nil {
		return nil, err
	}
	d := &Datapath{root: root, opts: opts}
	if err := d.checkPinned(spec); err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&d.tc, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: root},
	}); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("load tc objects: %w: %w", ErrMapIncompatible, err)
		}
		return nil, fmt.Errorf("load tc objects: %w", err)
	}

	sockSpec, err := loadZtSock()
	if err != nil {
		d.tc.Close()
		return nil, fmt.Errorf("load sock spec: %w", err)
	}
	if err := applySizes(sockSpec, opts.MapSizes); err != nil {
		d.tc.Close()
		return nil, err
	}
	if err := sockSpec.LoadAndAssign(&d.sock, &ebpf.CollectionOptions{
		MapReplacements: d.tcMapsByName(),
	}); err != nil {
		d.tc.Close()
		return nil, fmt.Errorf("load sock objects: %w", err)
	}

	nfSpec, err := loadZtNf()
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("load netfilter spec: %w", err)
	}
	if err := applySizes(nfSpec, opts.MapSizes); err != nil {
		d.Close()
		return nil, err
	}
	if err := nfSpec.LoadAndAssign(&d.nf, &ebpf.CollectionOptions{
		MapReplacements: d.tcMapsByName(),
	}); err != nil {
		d.Close()
		return nil, fmt.Errorf("load netfilter objects: %w", err)
	}

	if err := d.initConfig(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.finishMigration(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// finishMigration writes the entries a converted map moved to another
// map, and adds the prefix lengths of a converted policy map to the
// policy mask.
func (d *Datapath) finishMigration() error {
	byName := d.tcMapsByName()
	for _, mv := range d.moves {
		m := byName[mv.to]
		for i := range mv.keys {
			if err := m.Put(mv.keys[i], mv.vals[i]); err != nil {
				return fmt.Errorf("migrate map %s: move entry to %s: %w", mv.from, mv.to, mapErr(mv.to, err))
			}
		}
	}
	d.moves = nil
	for _, mig := range d.migrated {
		if mig.Map != "policy" || mig.Copied == 0 {
			continue
		}
		keys, err := d.PolicyList()
		if err != nil {
			return err
		}
		var need PolicyMask
		for k := range keys {
			if CheckPolicyKey(k) == nil {
				need.Add(k)
			}
		}
		d.maskMu.Lock()
		err = d.growPolicyMask(need)
		d.maskMu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *Datapath) tcMapsByName() map[string]*ebpf.Map {
	m := d.tc.ztTcMaps
	return map[string]*ebpf.Map{
		"ipcache": m.Ipcache, "ipcidr": m.Ipcidr, "endpoints": m.Endpoints,
		"policy": m.Policy, "polmask": m.Polmask,
		"conntrack": m.Conntrack, "counters": m.Counters, "events": m.Events,
		"config": m.Config, "netns": m.Netns, "ev_bucket": m.EvBucket,
		"svcnets": m.Svcnets, "svcpend": m.Svcpend, "polgen": m.Polgen,
	}
}

// DefaultConfig is written to a freshly created config map.
var DefaultConfig = Config{
	EvRate:      1000,
	EvBurst:     5000,
	CtTimeoutNs: 0,
}

// initConfig writes DefaultConfig into a zeroed (new) config map; an
// adopted config is left alone.
func (d *Datapath) initConfig() error {
	cfg, err := d.Config()
	if err != nil {
		return err
	}
	if cfg == (Config{}) {
		return d.SetConfig(DefaultConfig)
	}
	return nil
}

// Root returns the bpffs directory objects are pinned in.
func (d *Datapath) Root() string { return d.root }

// Migrated reports the maps Open replaced because of Options.Migrate.
func (d *Datapath) Migrated() []MapMigration { return d.migrated }

// Close releases all file descriptors. Pinned maps and links stay in the
// kernel and keep enforcing.
func (d *Datapath) Close() error {
	return errors.Join(d.nf.Close(), d.sock.Close(), d.tc.Close())
}

// Remove detaches every pinned link (endpoints and cgroup), unpins every
// map and removes the root directory. It is the teardown of a node; Close
// must still be called.
func (d *Datapath) Remove() error {
	var errs []error
	ifs, err := d.AttachedEndpoints()
	if err != nil {
		errs = append(errs, err)
	}
	for _, ifindex := range ifs {
		if err := d.DetachEndpoint(ifindex); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.DetachCgroup(); err != nil {
		errs = append(errs, err)
	}
	if err := d.DetachNetfilter(); err != nil {
		errs = append(errs, err)
	}
	for name, m := range d.tcMapsByName() {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", name, err))
		}
	}
	if err := os.RemoveAll(d.root); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", d.root, err))
	}
	return errors.Join(errs...)
}

func applySizes(spec *ebpf.CollectionSpec, s MapSizes) error {
	set := func(name string, v uint32) error {
		if v == 0 {
			return nil
		}
		ms, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("map %s not in spec", name)
		}
		ms.MaxEntries = v
		return nil
	}
	if s.EventsBytes != 0 {
		page := uint32(os.Getpagesize())
		if s.EventsBytes&(s.EventsBytes-1) != 0 || s.EventsBytes < page {
			return fmt.Errorf("events size %d: not a power of two >= page size", s.EventsBytes)
		}
	}
	return errors.Join(
		set("ipcache", s.IPCache), set("ipcidr", s.IPCache), set("endpoints", s.Endpoints), set("policy", s.Policy),
		set("conntrack", s.Conntrack), set("netns", s.Netns), set("events", s.EventsBytes),
	)
}

// checkPinned compares every pinned map with the spec before loading, so
// an incompatibility is reported per map (and migrated if asked to).
func (d *Datapath) checkPinned(spec *ebpf.CollectionSpec) error {
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(d.root, name)
		old, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load pinned map %s: %w", path, err)
		}
		cerr := ms.Compatible(old)
		if cerr == nil {
			old.Close()
			continue
		}
		if !d.opts.Migrate {
			old.Close()
			return fmt.Errorf("map %s: %w: %w", name, ErrMapIncompatible, cerr)
		}
		mig, mv, err := migrateMap(name, path, ms, old)
		old.Close()
		if err != nil {
			return fmt.Errorf("migrate map %s: %w", name, err)
		}
		mig.Map, mig.Reason = name, cerr.Error()
		d.migrated = append(d.migrated, mig)
		if len(mv.keys) > 0 {
			d.moves = append(d.moves, mv)
		}
	}
	return nil
}

// migrateMap creates a map from ms, copies old's entries if the layout
// allows, and swaps the pin. The old map lives on while programs use it.
// Entries of a converted trie that the new hash does not keep are
// returned, for the map they move to.
func migrateMap(name, path string, ms *ebpf.MapSpec, old *ebpf.Map) (MapMigration, pendingMove, error) {
	var mig MapMigration
	var mv pendingMove
	spec := ms.Copy()
	spec.Pinning = ebpf.PinNone
	nm, err := ebpf.NewMap(spec)
	if err != nil {
		return mig, mv, fmt.Errorf("create: %w", err)
	}
	defer nm.Close()

	perCPU := spec.Type == ebpf.PerCPUArray || spec.Type == ebpf.PerCPUHash || spec.Type == ebpf.LRUCPUHash
	sameKey := old.Type() == spec.Type && old.KeySize() == spec.KeySize
	// Values only grow at their end, and a zero tail means "unknown"
	// (zt_abi.h): a value that grew is copied with a zero tail.
	grown := sameKey && old.ValueSize() < spec.ValueSize
	conv, converted := trieToHash[name]
	converted = converted && old.Type() == ebpf.LPMTrie && spec.Type == ebpf.Hash &&
		old.KeySize() == spec.KeySize && old.ValueSize() == spec.ValueSize
	switch {
	case spec.Type == ebpf.RingBuf || perCPU:
		// nothing to carry over
	case converted:
		mv = pendingMove{from: name, to: conv.moveTo}
		k := make([]byte, spec.KeySize)
		v := make([]byte, spec.ValueSize)
		it := old.Iterate()
		for it.Next(&k, &v) {
			if !conv.keep(k) {
				if conv.moveTo == "" {
					continue
				}
				mv.keys = append(mv.keys, slices.Clone(k))
				mv.vals = append(mv.vals, slices.Clone(v))
				mig.Moved++
				continue
			}
			if err := nm.Update(k, v, ebpf.UpdateAny); err != nil {
				return mig, mv, fmt.Errorf("copy entry %d: %w", mig.Copied, mapErr(ms.Name, err))
			}
			mig.Copied++
		}
		if err := it.Err(); err != nil {
			return mig, mv, fmt.Errorf("iterate: %w", err)
		}
		if mig.Moved > 0 {
			mig.MovedTo = conv.moveTo
		}
	case !sameKey || (old.ValueSize() != spec.ValueSize && !grown):
		mig.Empty = true
	default:
		k := make([]byte, spec.KeySize)
		ov := make([]byte, old.ValueSize())
		v := make([]byte, spec.ValueSize)
		it := old.Iterate()
		for it.Next(&k, &ov) {
			copy(v, ov) // the tail stays zero
			if err := nm.Update(k, v, ebpf.UpdateAny); err != nil {
				return mig, mv, fmt.Errorf("copy entry %d: %w", mig.Copied, mapErr(ms.Name, err))
			}
			mig.Copied++
		}
		if err := it.Err(); err != nil {
			return mig, mv, fmt.Errorf("iterate: %w", err)
		}
	}
	if err := os.Remove(path); err != nil {
		return mig, mv, fmt.Errorf("unpin old: %w", err)
	}
	if err := nm.Pin(path); err != nil {
		return mig, mv, fmt.Errorf("pin new: %w", err)
	}
	return mig, mv, nil
}

// mapErr wraps a failed map write, adding ErrMapFull when the map is full.
func mapErr(name string, err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("map %s: %w: %w", name, ErrMapFull, err)
	}
	return fmt.Errorf("map %s: %w", name, err)
}

const bpfFSMagic = 0xcafe4a11

// ensureBPFFS makes sure root is on bpffs, mounting bpffs at /sys/fs/bpf
// when root lives below it and nothing is mounted there yet.
// bpffsMount is where bpffs is mounted when it is missing.
const bpffsMount = "/sys/fs/bpf"

func ensureBPFFS(root, mnt string, mount bool) error {
	// Find the nearest existing ancestor and check what it is.
	dir := root
	for {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == bpfFSMagic {
		return nil
	}
	rel, err := filepath.Rel(mnt, root)
	if err != nil || rel == ".." || filepath.IsAbs(rel) || (len(rel) >= 3 && rel[:3] == "../") {
		return fmt.Errorf("%s is not on bpffs", root)
	}
	if !mount {
		return fmt.Errorf("%s is not on bpffs: mount it on the host (mount -t bpf bpf %s); "+
			"a bpffs mounted inside a container would take the pinned maps and programs with it when the container restarts", root, mnt)
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", mnt, err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", mnt, err)
	}
	return nil
}

// Capacity returns the max_entries of the maps as loaded (EventsBytes is
// the ring buffer size), so writers can refuse an update that cannot fit
// before touching the kernel.
func (d *Datapath) Capacity() MapSizes {
	return MapSizes{
		IPCache:     d.tc.Ipcache.MaxEntries(),
		Endpoints:   d.tc.Endpoints.MaxEntries(),
		Policy:      d.tc.Policy.MaxEntries(),
		Conntrack:   d.tc.Conntrack.MaxEntries(),
		Netns:       d.tc.Netns.MaxEntries(),
		EventsBytes: d.tc.Events.MaxEntries(),
	}
}
