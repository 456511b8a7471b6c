package flows

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Journal defaults.
const (
	DefaultJournalDir       = "/run/zt/flows"
	DefaultJournalMaxBytes  = 64 << 20
	DefaultJournalFileBytes = 8 << 20
)

// journal is a directory of newline-delimited JSON files, one record a
// line, named flows-<first seq>-<first time, unix ns>.jsonl. The file
// being written is the newest; when the next line would take it past
// fileBytes a new one starts, and the oldest files are deleted first so
// the closed files plus one full file fit in maxBytes. Not safe for
// concurrent use (Store serializes it).
type journal struct {
	dir       string
	maxBytes  int64
	fileBytes int64

	files  []journalFile // closed and current, oldest first
	closed int64         // bytes in files other than the current one
	cur    *os.File
	curBuf *bufio.Writer
	curLen int64
	line   bytes.Buffer
}

type journalFile struct {
	path     string
	firstSeq uint64
	start    time.Time
	size     int64
}

func parseJournalName(name string) (seq uint64, start time.Time, ok bool) {
	s, found := strings.CutPrefix(name, "flows-")
	if !found {
		return 0, time.Time{}, false
	}
	s, found = strings.CutSuffix(s, ".jsonl")
	if !found {
		return 0, time.Time{}, false
	}
	a, b, found := strings.Cut(s, "-")
	if !found {
		return 0, time.Time{}, false
	}
	seq, err1 := strconv.ParseUint(a, 10, 64)
	ns, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, time.Time{}, false
	}
	return seq, time.Unix(0, ns), true
}

// openJournal lists the existing files of dir (created if missing) and
// returns the journal and the highest sequence number found in it.
func openJournal(dir string, maxBytes, fileBytes int64) (*journal, uint64, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultJournalMaxBytes
	}
	if fileBytes <= 0 {
		fileBytes = DefaultJournalFileBytes
	}
	fileBytes = min(fileBytes, maxBytes)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("create journal directory: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("read journal directory: %w", err)
	}
	j := &journal{dir: dir, maxBytes: maxBytes, fileBytes: fileBytes}
	for _, e := range ents {
		seq, start, ok := parseJournalName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // deleted meanwhile
		}
		j.files = append(j.files, journalFile{path: filepath.Join(dir, e.Name()), firstSeq: seq, start: start, size: info.Size()})
		j.closed += info.Size()
	}
	slices.SortFunc(j.files, func(a, b journalFile) int { return cmpU64(a.firstSeq, b.firstSeq) })
	// A cap lowered since the last run applies at once.
	if err := j.trim(0); err != nil {
		return nil, 0, err
	}
	var maxSeq uint64
	for i := len(j.files) - 1; i >= 0; i-- {
		seq, found, err := lastSeq(j.files[i].path)
		if err != nil {
			return nil, 0, err
		}
		if found {
			maxSeq = seq
			break
		}
	}
	return j, maxSeq, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// lastSeq returns the highest seq in a journal file; lines cut short by
// a crash are skipped.
func lastSeq(path string) (uint64, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("open journal file: %w", err)
	}
	defer f.Close()
	var max uint64
	found := false
	err = scanLines(f, func(line []byte) error {
		var r struct {
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal(line, &r) == nil {
			max, found = maxU64(max, r.Seq), true
		}
		return nil
	})
	return max, found, err
}

func maxU64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// scanLines calls fn for every complete line of r. Lines longer than the
// largest record the journal writes are skipped.
func scanLines(r io.Reader, fn func([]byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, bufio.ErrTooLong) {
		return fmt.Errorf("read journal: %w", err)
	}
	return nil
}

// write appends one record, rotating and trimming as needed.
func (j *journal) write(r *Record) error {
	j.line.Reset()
	enc := json.NewEncoder(&j.line)
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	n := int64(j.line.Len())
	if n > j.fileBytes {
		return fmt.Errorf("record %d: %d bytes, more than a journal file holds", r.Seq, n)
	}
	if j.cur == nil || j.curLen+n > j.fileBytes {
		if err := j.rotate(r); err != nil {
			return err
		}
	}
	if _, err := j.curBuf.Write(j.line.Bytes()); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	j.curLen += n
	j.files[len(j.files)-1].size = j.curLen
	return nil
}

// rotate closes the current file, deletes the oldest files until a full
// new one fits under maxBytes, and starts a file for r.
func (j *journal) rotate(r *Record) error {
	if err := j.closeCurrent(); err != nil {
		return err
	}
	if err := j.trim(j.fileBytes); err != nil {
		return err
	}
	name := fmt.Sprintf("flows-%020d-%d.jsonl", r.Seq, r.Time.UnixNano())
	path := filepath.Join(j.dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create journal file: %w", err)
	}
	j.cur, j.curBuf, j.curLen = f, bufio.NewWriterSize(f, 64<<10), 0
	j.files = append(j.files, journalFile{path: path, firstSeq: r.Seq, start: r.Time})
	return nil
}

// trim deletes the oldest closed files until closed+reserve <= maxBytes.
func (j *journal) trim(reserve int64) error {
	for len(j.files) > 0 && j.closed+reserve > j.maxBytes {
		if j.cur != nil && len(j.files) == 1 {
			break
		}
		old := j.files[0]
		if err := os.Remove(old.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete old journal file: %w", err)
		}
		j.closed -= old.size
		j.files = j.files[1:]
	}
	return nil
}

func (j *journal) closeCurrent() error {
	if j.cur == nil {
		return nil
	}
	err := j.curBuf.Flush()
	if cerr := j.cur.Close(); err == nil {
		err = cerr
	}
	j.closed += j.curLen
	j.cur, j.curBuf, j.curLen = nil, nil, 0
	if err != nil {
		return fmt.Errorf("close journal file: %w", err)
	}
	return nil
}

func (j *journal) flush() error {
	if j.curBuf == nil {
		return nil
	}
	if err := j.curBuf.Flush(); err != nil {
		return fmt.Errorf("flush journal: %w", err)
	}
	return nil
}

// size is the bytes the journal holds (written or buffered).
func (j *journal) size() int64 { return j.closed + j.curLen }

// overlapping returns the files that may hold records in [since, until]
// (zero: unbounded), oldest first. A file's records end where the next
// one's start; a second of slack covers events read out of order.
func (j *journal) overlapping(since, until time.Time) []journalFile {
	const slack = time.Second
	var out []journalFile
	for i, f := range j.files {
		if !until.IsZero() && f.start.After(until.Add(slack)) {
			continue
		}
		if !since.IsZero() && i+1 < len(j.files) && j.files[i+1].start.Before(since.Add(-slack)) {
			continue
		}
		out = append(out, f)
	}
	return out
}

// readJournalFile calls fn for each record of path with seq < below.
func readJournalFile(path string, below uint64, fn func(*Record) error) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // rotated away meanwhile: it held the oldest records
	}
	if err != nil {
		return fmt.Errorf("open journal file: %w", err)
	}
	defer f.Close()
	err = scanLines(f, func(line []byte) error {
		var r Record
		if json.Unmarshal(line, &r) != nil {
			return nil
		}
		if r.Seq >= below {
			return errStopFile // the rest is in the ring
		}
		return fn(&r)
	})
	if errors.Is(err, errStopFile) {
		return nil
	}
	return err
}

var errStopFile = errors.New("stop reading file")
