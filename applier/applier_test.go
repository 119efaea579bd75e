package applier

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/osc-dev/osc/replication"
)

// sliceStream replays events, then blocks until ctx ends.
type sliceStream struct {
	mu     sync.Mutex
	events []replication.Event
	err    error
}

func (s *sliceStream) Next(ctx context.Context) (replication.Event, error) {
	s.mu.Lock()
	if len(s.events) > 0 {
		ev := s.events[0]
		s.events = s.events[1:]
		s.mu.Unlock()
		return ev, nil
	}
	err := s.err
	s.mu.Unlock()
	if err != nil {
		return replication.Event{}, err
	}
	<-ctx.Done()
	return replication.Event{}, ctx.Err()
}

func (s *sliceStream) Close() error { return nil }

// recorder logs what reaches the database side, in order.
type recorder struct {
	mu      sync.Mutex
	log     []string
	batches int
	fail    error
}

func (r *recorder) Apply(_ context.Context, cs []replication.Change) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.batches++
	for _, c := range cs {
		r.log = append(r.log, c.Op.String()+":"+c.After[0].(string))
	}
	return nil
}

func change(op replication.Op, v string) replication.Event {
	return replication.Event{Changes: []replication.Change{{Op: op, After: []any{v}}}}
}

func marker(kind string) replication.Event {
	return replication.Event{Marker: &replication.Marker{Kind: kind}}
}

func TestOrderAndMarkers(t *testing.T) {
	stream := &sliceStream{events: []replication.Event{
		change(replication.Insert, "a"), change(replication.Update, "b"), {Commit: true, Pos: "f:1"},
		marker("m1"), change(replication.Delete, "c"), marker("m2"),
	}}
	rec := &recorder{}
	done := make(chan struct{})
	var seen []string
	a := New(stream, rec, func(_ context.Context, m replication.Marker) error {
		rec.mu.Lock()
		// A marker is handled only after every change before it is applied.
		seen = append(seen, m.Kind+" after "+rec.log[len(rec.log)-1])
		rec.mu.Unlock()
		if m.Kind == "m2" {
			close(done)
		}
		return nil
	}, 100)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { errc <- a.Run(ctx) }()
	<-done
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	want := []string{"insert:a", "update:b", "delete:c"}
	if !reflect.DeepEqual(rec.log, want) {
		t.Fatalf("applied %v, want %v", rec.log, want)
	}
	if !reflect.DeepEqual(seen, []string{"m1 after update:b", "m2 after delete:c"}) {
		t.Fatalf("markers %v", seen)
	}
	if a.Applied() != 3 || a.Backlog() != 0 {
		t.Fatalf("applied %d backlog %d", a.Applied(), a.Backlog())
	}
}

func TestBatchesQueuedEvents(t *testing.T) {
	var evs []replication.Event
	for i := 0; i < 50; i++ {
		evs = append(evs, change(replication.Insert, "x"))
	}
	evs = append(evs, marker("end"))
	rec := &recorder{}
	done := make(chan struct{})
	a := New(&sliceStream{events: evs}, rec, func(context.Context, replication.Marker) error { close(done); return nil }, 20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	<-done
	if len(rec.log) != 50 {
		t.Fatalf("applied %d changes, want 50", len(rec.log))
	}
	// 50 changes with at most 20 per batch: at least 3 batches, and fewer
	// than one per change when events queue up.
	if rec.batches < 3 || rec.batches >= 50 {
		t.Fatalf("%d batches for 50 queued changes with max 20", rec.batches)
	}
}

func TestErrorsStopTheRun(t *testing.T) {
	streamErr := errors.New("binlog purged")
	a := New(&sliceStream{err: streamErr}, &recorder{}, nil, 10)
	if err := a.Run(context.Background()); !errors.Is(err, streamErr) {
		t.Fatalf("stream error: got %v", err)
	}
	writeErr := errors.New("duplicate entry")
	a = New(&sliceStream{events: []replication.Event{change(replication.Insert, "a")}}, &recorder{fail: writeErr}, nil, 10)
	if err := a.Run(context.Background()); !errors.Is(err, writeErr) {
		t.Fatalf("write error: got %v", err)
	}
	markerErr := errors.New("swapped")
	a = New(&sliceStream{events: []replication.Event{marker("b")}}, &recorder{}, func(context.Context, replication.Marker) error { return markerErr }, 10)
	if err := a.Run(context.Background()); !errors.Is(err, markerErr) {
		t.Fatalf("marker error: got %v", err)
	}
}

// ackStream is a sliceStream that takes acks.
type ackStream struct {
	sliceStream
	mu    sync.Mutex
	acked []uint64
}

func (s *ackStream) Applied(pos uint64) {
	s.mu.Lock()
	s.acked = append(s.acked, pos)
	s.mu.Unlock()
}

func TestAcksOnlyAppliedCommits(t *testing.T) {
	s := &ackStream{sliceStream: sliceStream{events: []replication.Event{
		change(replication.Insert, "a"), {Commit: true, Ack: 10},
		change(replication.Insert, "b"), {Commit: true, Ack: 20}, marker("end"),
	}}}
	rec := &recorder{}
	done := make(chan struct{})
	a := New(s, rec, func(context.Context, replication.Marker) error { close(done); return nil }, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	<-done
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.acked) == 0 || s.acked[len(s.acked)-1] != 20 || len(rec.log) != 2 {
		t.Fatalf("acked %v after applying %v", s.acked, rec.log)
	}

	// A failed batch confirms nothing.
	s2 := &ackStream{sliceStream: sliceStream{events: []replication.Event{change(replication.Insert, "a"), {Commit: true, Ack: 10}}}}
	if err := New(s2, &recorder{fail: errors.New("boom")}, nil, 100).Run(context.Background()); err == nil {
		t.Fatal("a failed write must stop the run")
	}
	if len(s2.acked) != 0 {
		t.Fatalf("acked %v although nothing was applied", s2.acked)
	}
}

func TestPauseHoldsTheApplier(t *testing.T) {
	rec := &recorder{}
	a := New(&sliceStream{events: []replication.Event{change(replication.Insert, "a")}}, rec, nil, 100)
	a.Pause(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	time.Sleep(100 * time.Millisecond)
	if a.Applied() != 0 || !a.Paused() {
		t.Fatalf("a paused applier applied %d changes", a.Applied())
	}
	a.Pause(false)
	deadline := time.Now().Add(2 * time.Second)
	for a.Applied() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a.Applied() != 1 {
		t.Fatalf("the resumed applier applied %d changes, want 1", a.Applied())
	}
}
