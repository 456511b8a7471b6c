package flows

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func rec(t0 time.Time, i int) Record {
	return Record{
		Time: t0.Add(time.Duration(i) * time.Second), Node: "n1", Direction: "ingress",
		Src:      Peer{IP: ipWeb, Port: uint16(i), Namespace: "shop", Pod: "web", Labels: webLbls},
		Dst:      Peer{IP: ipDB, Port: 5432, Namespace: "data", Pod: "db", Labels: dbLbls},
		Protocol: "TCP", Verdict: "drop", Reason: "policy-denied", Policies: []string{"data/default-deny"},
	}
}

func scanAll(t *testing.T, s *Store, f Filter) []Record {
	t.Helper()
	var out []Record
	if _, err := s.Scan(&f, func(r *Record) error { out = append(out, *r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func dirBytes(t *testing.T, dir string) (total int64, files []string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		total += info.Size()
		files = append(files, e.Name())
	}
	return total, files
}

func checkSeqs(t *testing.T, got []Record, first, last uint64) {
	t.Helper()
	if len(got) != int(last-first+1) {
		t.Fatalf("%d records, want seq %d..%d (%d)", len(got), first, last, last-first+1)
	}
	for i, r := range got {
		if r.Seq != first+uint64(i) {
			t.Fatalf("record %d has seq %d, want %d", i, r.Seq, first+uint64(i))
		}
	}
}

func TestRingOnly(t *testing.T) {
	s := must[*Store](t)(OpenStore(StoreOptions{RingSize: 8}))
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 20 {
		s.Append(rec(t0, i))
	}
	checkSeqs(t, scanAll(t, s, Filter{}), 13, 20)
	checkSeqs(t, scanAll(t, s, Filter{Last: 3}), 18, 20)
	if got := scanAll(t, s, Filter{Since: t0.Add(18 * time.Second)}); len(got) != 2 {
		t.Errorf("since: %d records", len(got))
	}
}

func TestJournalRotationAndCap(t *testing.T) {
	dir := t.TempDir()
	const fileBytes, maxBytes = 16 << 10, 64 << 10
	o := StoreOptions{RingSize: 16, Dir: dir, MaxBytes: maxBytes, FileBytes: fileBytes}
	s := must[*Store](t)(OpenStore(o))
	t0 := time.Unix(1_700_000_000, 0)
	lineLen := len(must[[]byte](t)(jsonLine(rec(t0, 0))))
	n := 4 * maxBytes / lineLen // write four times past the cap
	for i := range n {
		s.Append(rec(t0, i))
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	total, files := dirBytes(t, dir)
	if total > maxBytes {
		t.Errorf("journal holds %d bytes, cap %d", total, maxBytes)
	}
	if total < maxBytes/2 {
		t.Errorf("journal holds only %d bytes of a %d cap", total, maxBytes)
	}
	if s.JournalBytes() != total {
		t.Errorf("accounted %d bytes, on disk %d", s.JournalBytes(), total)
	}
	for _, f := range files {
		if fi, _ := os.Stat(filepath.Join(dir, f)); fi.Size() > fileBytes {
			t.Errorf("%s: %d bytes, file cap %d", f, fi.Size(), fileBytes)
		}
	}
	if len(files) < 4 {
		t.Errorf("files %v: want rotation", files)
	}
	// Oldest gone, newest kept, and journal + ring read without gaps or
	// duplicates.
	all := scanAll(t, s, Filter{})
	if all[0].Seq == 1 {
		t.Error("oldest records not deleted")
	}
	checkSeqs(t, all, all[0].Seq, uint64(n))

	// --since reaching back past the ring reads the journal files, and
	// only those overlapping.
	since := all[0].Time.Add(time.Duration(len(all)/2) * time.Second)
	got := scanAll(t, s, Filter{Since: since})
	if len(got) == 0 || !got[0].Time.Equal(since) || got[len(got)-1].Seq != uint64(n) {
		t.Errorf("since %s: %d records from %v", since, len(got), got[0].Time)
	}
	s.mu.Lock()
	ov := len(s.journal.overlapping(since, time.Time{}))
	nf := len(s.journal.files)
	s.mu.Unlock()
	if ov >= nf {
		t.Errorf("since reads %d of %d files", ov, nf)
	}
	checkSeqs(t, scanAll(t, s, Filter{Last: 100}), uint64(n-99), uint64(n))
	if got := scanAll(t, s, Filter{Until: all[0].Time.Add(2 * time.Second)}); len(got) != 3 {
		t.Errorf("until: %d records", len(got))
	}

	// A restart keeps the journal, continues the numbering and honours a
	// lower cap at once.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	o.MaxBytes = 32 << 10
	s2 := must[*Store](t)(OpenStore(o))
	defer s2.Close()
	if total, _ := dirBytes(t, dir); total > o.MaxBytes {
		t.Errorf("after restart with a lower cap: %d bytes", total)
	}
	r := s2.Append(rec(t0, n))
	if r.Seq != uint64(n+1) {
		t.Errorf("seq after restart %d, want %d", r.Seq, n+1)
	}
	after := scanAll(t, s2, Filter{})
	checkSeqs(t, after, after[0].Seq, uint64(n+1))
}

func jsonLine(r Record) ([]byte, error) {
	b, err := json.Marshal(r)
	return append(b, '\n'), err
}
