package flows

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/ztnet/zt/pkg/datapath"
)

// PipelineOptions configure a Pipeline.
type PipelineOptions struct {
	Limiter LimiterOptions
	// AllowedSample keeps 1 in AllowedSample allowed-connection records;
	// 0 keeps none (drops and audits are never sampled).
	AllowedSample int
	// FlushInterval is how often suppression summaries are emitted and the
	// journal flushed (default 5s).
	FlushInterval time.Duration
}

// Stats counts what a pipeline did. Received = Stored + Suppressed +
// SampledOut + DecodeErrors, where Stored counts flow records only
// (summaries are Summaries). After Flush, Reported (the sum of the
// summaries' Suppressed) equals Suppressed.
type Stats struct {
	Received, Stored, Suppressed, SampledOut, DecodeErrors, Summaries, Reported uint64
}

// Pipeline decodes, enriches, rate-limits and stores events. Handle and
// Flush must be called from one goroutine (Run does).
type Pipeline struct {
	enricher *Enricher
	limiter  *Limiter
	store    *Store
	o        PipelineOptions
	allowed  uint64

	received, stored, suppressed, sampledOut, decodeErrors, summaries, reported atomic.Uint64
}

// NewPipeline wires an enricher, a limiter and a store.
func NewPipeline(e *Enricher, s *Store, o PipelineOptions) *Pipeline {
	if o.FlushInterval <= 0 {
		o.FlushInterval = 5 * time.Second
	}
	return &Pipeline{enricher: e, limiter: NewLimiter(o.Limiter), store: s, o: o}
}

// Stats returns the counts so far.
func (p *Pipeline) Stats() Stats {
	return Stats{
		Received: p.received.Load(), Stored: p.stored.Load(), Suppressed: p.suppressed.Load(),
		SampledOut: p.sampledOut.Load(), DecodeErrors: p.decodeErrors.Load(), Summaries: p.summaries.Load(),
		Reported: p.reported.Load(),
	}
}

// HandleRaw decodes one ring buffer record and handles it.
func (p *Pipeline) HandleRaw(raw []byte) error {
	ev, err := datapath.DecodeEvent(raw)
	if err != nil {
		p.received.Add(1)
		p.decodeErrors.Add(1)
		return err
	}
	p.Handle(&ev)
	return nil
}

// Handle enriches and stores one event.
func (p *Pipeline) Handle(ev *datapath.FlowEvent) {
	p.received.Add(1)
	if ev.Verdict == datapath.VerdictAllow {
		p.allowed++
		if p.o.AllowedSample <= 0 || (p.allowed-1)%uint64(p.o.AllowedSample) != 0 {
			p.sampledOut.Add(1)
			return
		}
	}
	r := p.enricher.Enrich(ev)
	if !p.limiter.Allow(&r, r.Time) {
		p.suppressed.Add(1)
		return
	}
	p.store.Append(r)
	p.stored.Add(1)
}

func (p *Pipeline) storeSummaries(sums []Record) {
	for _, s := range sums {
		p.store.Append(s)
		p.summaries.Add(1)
		p.reported.Add(s.Suppressed)
	}
}

// Flush stores the pending suppression summaries (timestamped now) and
// flushes the journal.
func (p *Pipeline) Flush(now time.Time) error {
	p.storeSummaries(p.limiter.Flush(now))
	return p.store.Flush()
}

// EventReader is what Run reads: *ringbuf.Reader.
type EventReader interface {
	ReadInto(*ringbuf.Record) error
	SetDeadline(time.Time)
	Close() error
}

// Run reads events until ctx ends or r is closed, then flushes. It
// closes r when ctx ends. onErr (may be nil) sees decode and journal
// errors; they do not stop it.
func (p *Pipeline) Run(ctx context.Context, r EventReader, onErr func(error)) error {
	stop := context.AfterFunc(ctx, func() { _ = r.Close() })
	defer stop()
	report := func(err error) {
		if err != nil && onErr != nil {
			onErr(err)
		}
	}
	var rec ringbuf.Record
	next := time.Now().Add(p.o.FlushInterval)
	r.SetDeadline(next)
	for {
		err := r.ReadInto(&rec)
		switch {
		case err == nil:
			report(p.HandleRaw(rec.RawSample))
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed):
			return p.Flush(time.Now())
		default:
			if ctx.Err() != nil {
				return p.Flush(time.Now())
			}
			report(err)
			time.Sleep(10 * time.Millisecond) // do not spin on a persistent error
		}
		if now := time.Now(); !now.Before(next) {
			report(p.Flush(now))
			next = now.Add(p.o.FlushInterval)
			r.SetDeadline(next)
		}
	}
}
