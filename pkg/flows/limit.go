package flows

import (
	"container/list"
	"fmt"
	"net/netip"
	"time"
)

// LimiterOptions configure the per-source flood protection.
type LimiterOptions struct {
	// Rate is the records per second stored per source address; Burst how
	// many at once (defaults 50 and 200).
	Rate  float64
	Burst float64
	// MaxSources bounds the buckets kept; the least recently used is
	// evicted (its pending summary emitted). Default 8192.
	MaxSources int
}

// Limiter is a token bucket per source address over a bounded LRU of
// buckets. Suppressed records are counted per source and verdict and
// reported by summary records, so the records stored plus the
// suppressed counts of the summaries always equal the records seen. Not
// safe for concurrent use (the pipeline owns it).
type Limiter struct {
	o       LimiterOptions
	buckets map[netip.Addr]*list.Element // of *bucket, most recent at Front
	lru     *list.List
}

type bucket struct {
	src    netip.Addr
	tokens float64
	last   time.Time
	// suppressed per verdict, with the source as last seen, for summaries.
	suppressed map[string]uint64
	peer       Peer
	node       string
}

// NewLimiter returns a limiter; zero options take the defaults.
func NewLimiter(o LimiterOptions) *Limiter {
	if o.Rate <= 0 {
		o.Rate = 50
	}
	if o.Burst < 1 {
		o.Burst = 200
	}
	if o.MaxSources <= 0 {
		o.MaxSources = 8192
	}
	return &Limiter{o: o, buckets: map[netip.Addr]*list.Element{}, lru: list.New()}
}

// Allow reports whether r may be stored at time now, charging its
// source's bucket. Evicting a bucket to make room returns its summaries.
func (l *Limiter) Allow(r *Record, now time.Time) (bool, []Record) {
	var out []Record
	e, ok := l.buckets[r.Src.IP]
	if ok {
		l.lru.MoveToFront(e)
	} else {
		if l.lru.Len() >= l.o.MaxSources {
			old := l.lru.Back()
			b := old.Value.(*bucket)
			out = b.summaries(now, out)
			l.lru.Remove(old)
			delete(l.buckets, b.src)
		}
		e = l.lru.PushFront(&bucket{src: r.Src.IP, tokens: l.o.Burst, last: now})
		l.buckets[r.Src.IP] = e
	}
	b := e.Value.(*bucket)
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(l.o.Burst, b.tokens+dt.Seconds()*l.o.Rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, out
	}
	if b.suppressed == nil {
		b.suppressed = map[string]uint64{}
	}
	b.suppressed[r.Verdict]++
	b.peer, b.node = r.Src, r.Node
	return false, out
}

// Flush returns a summary for every source with suppressed records and
// resets the counts.
func (l *Limiter) Flush(now time.Time) []Record {
	var out []Record
	for e := l.lru.Front(); e != nil; e = e.Next() {
		out = e.Value.(*bucket).summaries(now, out)
	}
	return out
}

// Sources returns how many buckets are kept.
func (l *Limiter) Sources() int { return l.lru.Len() }

func (b *bucket) summaries(now time.Time, out []Record) []Record {
	for _, v := range []string{"drop", "audit", "allow"} {
		n := b.suppressed[v]
		if n == 0 {
			continue
		}
		delete(b.suppressed, v)
		out = append(out, Record{
			Time: now, Node: b.node, Src: b.peer, Verdict: v, Reason: ReasonSuppressed, Suppressed: n,
			Summary: fmt.Sprintf("suppressed %d %s events from %s", n, v, b.peer.Name()),
		})
	}
	for v, n := range b.suppressed { // verdicts not named above
		out = append(out, Record{
			Time: now, Node: b.node, Src: b.peer, Verdict: v, Reason: ReasonSuppressed, Suppressed: n,
			Summary: fmt.Sprintf("suppressed %d %s events from %s", n, v, b.peer.Name()),
		})
		delete(b.suppressed, v)
	}
	return out
}
