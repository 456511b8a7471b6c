package flows

import (
	"errors"
	"sync"
	"sync/atomic"
)

// DefaultRingSize is how many records the in-memory ring holds.
const DefaultRingSize = 16384

// StoreOptions configure OpenStore.
type StoreOptions struct {
	// RingSize is the in-memory ring's capacity (default DefaultRingSize).
	RingSize int
	// Dir is the journal directory; "" keeps records in memory only.
	Dir string
	// MaxBytes caps the journal's files in total (default 64 MiB);
	// FileBytes caps one file (default 8 MiB).
	MaxBytes, FileBytes int64
	// FollowBuffer is how many records a follower may fall behind before
	// it skips some (default 4096).
	FollowBuffer int
}

// Store keeps the latest records in a ring and all within the journal's
// size cap on disk, and feeds followers. Safe for concurrent use.
type Store struct {
	mu      sync.Mutex
	ring    []Record
	head    int // next slot to write
	n       int // records in the ring
	nextSeq uint64
	journal *journal
	subs    map[*Subscription]struct{}
	bufSize int

	journalErrors atomic.Uint64
	lastErr       atomic.Pointer[error]
}

// OpenStore opens (or creates) the journal and an empty ring. Records of
// a previous run stay queryable from the journal; numbering continues
// after them.
func OpenStore(o StoreOptions) (*Store, error) {
	if o.RingSize <= 0 {
		o.RingSize = DefaultRingSize
	}
	if o.FollowBuffer <= 0 {
		o.FollowBuffer = 4096
	}
	s := &Store{ring: make([]Record, o.RingSize), nextSeq: 1, subs: map[*Subscription]struct{}{}, bufSize: o.FollowBuffer}
	if o.Dir != "" {
		j, maxSeq, err := openJournal(o.Dir, o.MaxBytes, o.FileBytes)
		if err != nil {
			return nil, err
		}
		s.journal = j
		s.nextSeq = maxSeq + 1
	}
	return s, nil
}

// Append numbers r, stores it and hands it to matching followers. A
// journal write error is counted (JournalErrors) and does not stop the
// ring.
func (s *Store) Append(r Record) Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Seq = s.nextSeq
	s.nextSeq++
	s.ring[s.head] = r
	s.head = (s.head + 1) % len(s.ring)
	s.n = min(s.n+1, len(s.ring))
	if s.journal != nil {
		if err := s.journal.write(&r); err != nil {
			s.journalErrors.Add(1)
			s.lastErr.Store(&err)
		}
	}
	for sub := range s.subs {
		if !sub.filter.Match(&r) {
			continue
		}
		select {
		case sub.ch <- r:
		default:
			sub.skipped.Add(1)
		}
	}
	return r
}

// JournalErrors returns how many records could not be written to the
// journal, and the last error.
func (s *Store) JournalErrors() (uint64, error) {
	var err error
	if p := s.lastErr.Load(); p != nil {
		err = *p
	}
	return s.journalErrors.Load(), err
}

// JournalBytes returns the journal's size on disk (0 without one).
func (s *Store) JournalBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.journal == nil {
		return 0
	}
	return s.journal.size()
}

// Flush writes buffered journal lines to their file.
func (s *Store) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.journal == nil {
		return nil
	}
	return s.journal.flush()
}

// Close flushes and closes the journal and ends every subscription.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		delete(s.subs, sub)
		close(sub.ch)
	}
	if s.journal == nil {
		return nil
	}
	return s.journal.closeCurrent()
}

var errStop = errors.New("stop")

// Scan calls fn, oldest first, for every stored record f matches: those
// in journal files overlapping [f.Since, f.Until], then those in the
// ring. With f.Last only the last f.Last are passed (memory: f.Last
// records). f.Follow is ignored. It returns the highest seq stored when
// the scan began, so a follower can skip what it has seen.
func (s *Store) Scan(f *Filter, fn func(*Record) error) (uint64, error) {
	if !f.compiled {
		if err := f.Compile(); err != nil {
			return 0, err
		}
	}
	s.mu.Lock()
	var files []journalFile
	var flushErr error
	if s.journal != nil {
		flushErr = s.journal.flush()
		files = s.journal.overlapping(f.Since, f.Until)
	}
	// Copy the ring's matches under the lock (at most RingSize records),
	// read the files without it so the pipeline never waits on a query.
	var ring []Record
	ringFirst := s.nextSeq - uint64(s.n)
	for i := range s.n {
		r := &s.ring[(s.head-s.n+i+len(s.ring))%len(s.ring)]
		if f.Match(r) {
			ring = append(ring, *r)
		}
	}
	high := s.nextSeq - 1
	s.mu.Unlock()
	if flushErr != nil {
		return high, flushErr
	}

	emit := fn
	var last *lastN
	if f.Last > 0 {
		last = newLastN(f.Last)
		emit = func(r *Record) error { last.add(r); return nil }
	}
	for _, jf := range files {
		err := readJournalFile(jf.path, ringFirst, func(r *Record) error {
			if !f.Match(r) {
				return nil
			}
			return emit(r)
		})
		if err != nil {
			return high, err
		}
	}
	for i := range ring {
		if err := emit(&ring[i]); err != nil {
			return high, err
		}
	}
	if last != nil {
		for _, r := range last.records() {
			if err := fn(r); err != nil {
				return high, err
			}
		}
	}
	return high, nil
}

// lastN keeps the last n records added.
type lastN struct {
	buf  []Record
	n    int
	next int
}

func newLastN(n int) *lastN { return &lastN{buf: make([]Record, 0, min(n, 1024)), n: n} }

func (l *lastN) add(r *Record) {
	if len(l.buf) < l.n {
		l.buf = append(l.buf, *r)
		return
	}
	l.buf[l.next] = *r
	l.next = (l.next + 1) % len(l.buf)
}

func (l *lastN) records() []*Record {
	out := make([]*Record, 0, len(l.buf))
	for i := range l.buf {
		out = append(out, &l.buf[(l.next+i)%len(l.buf)])
	}
	return out
}

// Subscription receives records stored after Subscribe that match its
// filter. Records it is too slow to take are skipped and counted.
type Subscription struct {
	ch      chan Record
	filter  *Filter
	skipped atomic.Uint64
	store   *Store
}

// C delivers the records; it is closed by Close or Store.Close.
func (sub *Subscription) C() <-chan Record { return sub.ch }

// Skipped returns and resets how many records were skipped since the
// last call because the follower fell behind.
func (sub *Subscription) Skipped() uint64 { return sub.skipped.Swap(0) }

// Close ends the subscription.
func (sub *Subscription) Close() {
	s := sub.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.subs[sub]; ok {
		delete(s.subs, sub)
		close(sub.ch)
	}
}

// Subscribe starts following records that match f (compiled first).
func (s *Store) Subscribe(f Filter) (*Subscription, error) {
	if err := f.Compile(); err != nil {
		return nil, err
	}
	sub := &Subscription{ch: make(chan Record, s.bufSize), filter: &f, store: s}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return sub, nil
}
