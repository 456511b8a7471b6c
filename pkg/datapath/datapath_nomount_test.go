package datapath

import (
	"path/filepath"
	"strings"
	"testing"
)

// With NoMount, a root that is not on bpffs is refused with what to do,
// and nothing is mounted.
func TestEnsureBPFFSNoMount(t *testing.T) {
	mnt := t.TempDir() // not a bpffs
	err := ensureBPFFS(filepath.Join(mnt, "zt"), mnt, false)
	if err == nil || !strings.Contains(err.Error(), "mount it on the host") {
		t.Fatalf("err = %v, want a refusal saying to mount bpffs on the host", err)
	}
	if err := ensureBPFFS(bpffsMount+"/zt-nomount-check", bpffsMount, false); err != nil {
		t.Fatalf("bpffs is mounted at %s here (the test setup does it): %v", bpffsMount, err)
	}
}
