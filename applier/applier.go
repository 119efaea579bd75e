// Package applier applies the change stream to the shadow table in stream
// order. Changes are batched: everything already waiting in the stream goes
// into one transaction, which keeps the applier ahead of heavy write loads
// without reordering anything. Markers are handed to the orchestrator in
// their stream position, after every change before them is applied.
package applier

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/osc-dev/osc/replication"
)

// Writer is one database's way of applying changes to the shadow.
type Writer interface {
	// Apply applies the changes, in order, in one transaction.
	Apply(ctx context.Context, changes []replication.Change) error
}

// MarkerFunc handles a marker. It runs on the applier's goroutine, so while
// it blocks nothing further is applied (cut-over relies on that).
type MarkerFunc func(ctx context.Context, m replication.Marker) error

// Applier drives a stream into a writer.
type Applier struct {
	stream   replication.Stream
	writer   Writer
	onMarker MarkerFunc
	maxBatch int

	applied atomic.Int64 // row changes applied
	backlog atomic.Int64 // events read from the stream, not yet applied
	paused  atomic.Bool
	held    atomic.Bool
}

// Pause stops (or resumes) applying before the next batch; the stream's
// events wait meanwhile. An operator's pause-all uses it.
func (a *Applier) Pause(on bool) { a.paused.Store(on) }

// Paused reports whether the applier is paused.
func (a *Applier) Paused() bool { return a.paused.Load() }

// Hold stops (or resumes) applying like Pause, for the orchestrator: a
// snapshot copy needs the applier held until the copy ends, whatever an
// operator pauses and resumes meanwhile.
func (a *Applier) Hold(on bool) { a.held.Store(on) }

// failer is a stream that reports its failure before its queue is
// drained: a held or paused applier reads nothing, so it asks.
type failer interface{ Err() error }

func (a *Applier) waitResumed(ctx context.Context) error {
	for a.paused.Load() || a.held.Load() {
		if s, ok := a.stream.(failer); ok {
			if err := s.Err(); err != nil && ctx.Err() == nil {
				return fmt.Errorf("change stream: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// New returns an applier; maxBatch bounds the row changes per transaction.
func New(stream replication.Stream, w Writer, onMarker MarkerFunc, maxBatch int) *Applier {
	if maxBatch < 1 {
		maxBatch = 1
	}
	return &Applier{stream: stream, writer: w, onMarker: onMarker, maxBatch: maxBatch}
}

// Applied is the number of row changes applied so far.
func (a *Applier) Applied() int64 { return a.applied.Load() }

// Backlog is the number of stream events read but not applied yet.
func (a *Applier) Backlog() int64 { return a.backlog.Load() }

type item struct {
	ev  replication.Event
	err error
}

// Run applies events until ctx is done or something fails. It returns
// ctx's error on cancellation.
func (a *Applier) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A reader goroutine keeps pulling from the stream while a batch is
	// applied, so the next batch is whatever queued up meanwhile.
	ch := make(chan item, 4*a.maxBatch)
	go func() {
		for {
			ev, err := a.stream.Next(ctx)
			if err == nil {
				a.backlog.Add(1)
			}
			select {
			case ch <- item{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	batch := make([]replication.Change, 0, a.maxBatch)
	acker, _ := a.stream.(replication.Acker)
	var ack uint64 // last commit in or before the batch, to confirm once applied
	flush := func() error {
		if len(batch) > 0 {
			if err := a.writer.Apply(ctx, batch); err != nil {
				return fmt.Errorf("applying %d captured row changes to the shadow table: %w", len(batch), err)
			}
			a.applied.Add(int64(len(batch)))
			batch = batch[:0]
		}
		if acker != nil && ack > 0 {
			acker.Applied(ack)
			ack = 0
		}
		return nil
	}
	for {
		if err := a.waitResumed(ctx); err != nil {
			return err
		}
		var it item
		select {
		case it = <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		for {
			if it.err != nil {
				if ferr := flush(); ferr != nil {
					return ferr
				}
				if errors.Is(it.err, context.Canceled) && ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("change stream: %w", it.err)
			}
			a.backlog.Add(-1)
			ev := it.ev
			switch {
			case ev.Marker != nil:
				if err := flush(); err != nil {
					return err
				}
				if err := a.onMarker(ctx, *ev.Marker); err != nil {
					return err
				}
			case ev.Commit: // batches span source transactions
				if ev.Ack > 0 {
					ack = ev.Ack
				}
			default:
				batch = append(batch, ev.Changes...)
			}
			if len(batch) >= a.maxBatch {
				break
			}
			// Take what is already queued without waiting.
			select {
			case it = <-ch:
				continue
			default:
			}
			break
		}
		if err := flush(); err != nil {
			return err
		}
	}
}
