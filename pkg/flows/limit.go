package flows

import (
	"container/list"
	"fmt"
	"net/netip"
	"slices"
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
	// GlobalRate and GlobalBurst bound all sources together (defaults
	// 2000/s and 10000): a flood from more sources than MaxSources would
	// otherwise meet a fresh, full bucket at every event.
	GlobalRate  float64
	GlobalBurst float64
}

// Limiter is a token bucket per source address over a bounded LRU of
// buckets. Suppressed records are counted per source and verdict and
// reported by summary records, so the records stored plus the
// suppressed counts of the summaries always equal the records seen. Not
// safe for concurrent use (the pipeline owns it).
type Limiter struct {
	o      LimiterOptions
	global tokens
	// evicted aggregates the pending counts of evicted buckets, so a
	// spray of sources yields one summary per flush, not one per source.
	evicted        map[string]uint64
	evictedSources uint64
	node           string
	buckets        map[netip.Addr]*list.Element // of *bucket, most recent at Front
	lru            *list.List
}

// tokens is a token bucket.
type tokens struct {
	n    float64
	last time.Time
}

// take refills at rate up to burst and takes a token if there is one.
func (t *tokens) take(now time.Time, rate, burst float64) bool {
	if dt := now.Sub(t.last); dt > 0 {
		t.n = min(burst, t.n+dt.Seconds()*rate)
		t.last = now
	}
	if t.n >= 1 {
		t.n--
		return true
	}
	return false
}

type bucket struct {
	src    netip.Addr
	tokens tokens
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
	if o.GlobalRate <= 0 {
		o.GlobalRate = 2000
	}
	if o.GlobalBurst < 1 {
		o.GlobalBurst = 10000
	}
	return &Limiter{o: o, global: tokens{n: o.GlobalBurst}, evicted: map[string]uint64{}, buckets: map[netip.Addr]*list.Element{}, lru: list.New()}
}

// Allow reports whether r may be stored at time now, charging its
// source's bucket and the global one.
func (l *Limiter) Allow(r *Record, now time.Time) bool {
	e, ok := l.buckets[r.Src.IP]
	if ok {
		l.lru.MoveToFront(e)
	} else {
		if l.lru.Len() >= l.o.MaxSources {
			old := l.lru.Back()
			b := old.Value.(*bucket)
			if len(b.suppressed) > 0 {
				l.evictedSources++
				for v, n := range b.suppressed {
					l.evicted[v] += n
				}
			}
			l.lru.Remove(old)
			delete(l.buckets, b.src)
		}
		e = l.lru.PushFront(&bucket{src: r.Src.IP, tokens: tokens{n: l.o.Burst, last: now}})
		l.buckets[r.Src.IP] = e
	}
	b := e.Value.(*bucket)
	// The source's bucket first: a noisy source must not use up the
	// global budget of the others.
	if b.tokens.take(now, l.o.Rate, l.o.Burst) && l.global.take(now, l.o.GlobalRate, l.o.GlobalBurst) {
		return true
	}
	if b.suppressed == nil {
		b.suppressed = map[string]uint64{}
	}
	b.suppressed[r.Verdict]++
	b.peer, b.node = r.Src, r.Node
	l.node = r.Node
	return false
}

// Flush returns a summary for every source with suppressed records (at
// most MaxSources), plus one per verdict for the sources evicted since
// the last flush, and resets the counts.
func (l *Limiter) Flush(now time.Time) []Record {
	var out []Record
	for e := l.lru.Front(); e != nil; e = e.Next() {
		out = e.Value.(*bucket).summaries(now, out)
	}
	for _, v := range sortedVerdicts(l.evicted) {
		n := l.evicted[v]
		out = append(out, Record{
			Time: now, Node: l.node, Verdict: v, Reason: ReasonSuppressed, Suppressed: n,
			Summary: fmt.Sprintf("suppressed %d %s events from %d other sources (too many to track one by one)", n, v, l.evictedSources),
		})
	}
	clear(l.evicted)
	l.evictedSources = 0
	return out
}

func sortedVerdicts(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for v := range m {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// Sources returns how many buckets are kept.
func (l *Limiter) Sources() int { return l.lru.Len() }

func (b *bucket) summaries(now time.Time, out []Record) []Record {
	if len(b.suppressed) == 0 {
		return out
	}
	for _, v := range sortedVerdicts(b.suppressed) {
		n := b.suppressed[v]
		out = append(out, Record{
			Time: now, Node: b.node, Src: b.peer, Verdict: v, Reason: ReasonSuppressed, Suppressed: n,
			Summary: fmt.Sprintf("suppressed %d %s events from %s", n, v, b.peer.Name()),
		})
	}
	b.suppressed = nil
	return out
}
