package datapath

import (
	"errors"
	"fmt"
)

// The policy generation (zt_abi.h, "Verdict cache"): the programs reuse a
// flow's verdict only while polgen holds the number it was taken at, so
// every write that can change a verdict must move it on, after the write.
// One agent writes a node's maps; genMu orders the writers of this
// process (mapsync writes two maps at once).

// changed moves the policy generation on after a write to ipcache,
// endpoints or policy, also when the write failed (part of it may be in
// the maps), and returns the write's error joined with the bump's.
func (d *Datapath) changed(err error) error {
	return errors.Join(err, d.bumpPolicyGeneration())
}

// changedN is changed for the many-entry writes.
func (d *Datapath) changedN(n int, err error) (int, error) {
	return n, d.changed(err)
}

func (d *Datapath) bumpPolicyGeneration() error {
	d.genMu.Lock()
	defer d.genMu.Unlock()
	var zero uint32
	var g uint64
	if err := d.tc.Polgen.Lookup(&zero, &g); err != nil {
		return fmt.Errorf("read policy generation: %w", mapErr("polgen", err))
	}
	g++
	if g == 0 { // 0 means "never verified"
		g = 1
	}
	if err := d.tc.Polgen.Put(&zero, &g); err != nil {
		return fmt.Errorf("write policy generation: %w", mapErr("polgen", err))
	}
	return nil
}

// PolicyGeneration reads the policy generation.
func (d *Datapath) PolicyGeneration() (uint64, error) {
	var zero uint32
	var g uint64
	if err := d.tc.Polgen.Lookup(&zero, &g); err != nil {
		return 0, fmt.Errorf("read policy generation: %w", mapErr("polgen", err))
	}
	return g, nil
}
