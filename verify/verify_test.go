package verify

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/copier"
)

// table is an in-memory pair of tables keyed 1..n; bad holds the keys
// where the shadow differs.
type table struct {
	n      int
	bad    map[int]bool
	opened int
	closed int
}

type fakeView struct{ t *table }

func (v fakeView) Boundary(_ context.Context, after copier.Key, size int) (copier.Key, bool, error) {
	start := 0
	if after != nil {
		start = after[0].(int)
	}
	if start+size >= v.t.n {
		return nil, true, nil
	}
	return copier.Key{start + size}, false, nil
}

func (v fakeView) Differs(_ context.Context, c Chunk) (bool, error) {
	for k := range v.t.bad {
		if (c.After == nil || k > c.After[0].(int)) && (c.End == nil || k <= c.End[0].(int)) {
			return true, nil
		}
	}
	return false, nil
}

func (v fakeView) Close() error { v.t.closed++; return nil }

func (t *table) open(context.Context) (View, error) { t.opened++; return fakeView{t}, nil }

func (t *table) repair(_ context.Context, c Chunk) error {
	for k := range t.bad {
		if (c.After == nil || k > c.After[0].(int)) && (c.End == nil || k <= c.End[0].(int)) {
			delete(t.bad, k)
		}
	}
	return nil
}

// A clean table is compared whole, as one chunk, in one view; a table
// that differs is then walked chunk by chunk (10 chunks of 10 keys).
func TestCleanTableNeedsOneView(t *testing.T) {
	tb := &table{n: 95, bad: map[int]bool{}}
	res, err := Run(context.Background(), tb.open, tb.repair, Options{ChunkSize: 10, Rounds: 3}, zap.NewNop())
	if err != nil || res.Chunks != 1 || res.Repaired != 0 || tb.opened != 1 || tb.closed != 1 {
		t.Fatalf("err %v, result %+v, views opened %d closed %d; want the whole table as one chunk in one view", err, res, tb.opened, tb.closed)
	}
	tb = &table{n: 95, bad: map[int]bool{3: true}}
	if res, err = Run(context.Background(), tb.open, tb.repair, Options{ChunkSize: 10, Rounds: 3}, zap.NewNop()); err != nil || res.Chunks != 10 {
		t.Fatalf("a difference: err %v, result %+v; want 10 chunks compared", err, res)
	}
}

func TestDifferencesAreRepairedAndRechecked(t *testing.T) {
	// 3 and 95 (past the last boundary: the open-ended last chunk) differ.
	tb := &table{n: 95, bad: map[int]bool{3: true, 95: true}}
	res, err := Run(context.Background(), tb.open, tb.repair, Options{ChunkSize: 10, Rounds: 3}, zap.NewNop())
	if err != nil || res.Repaired != 2 || tb.opened != 2 || len(tb.bad) != 0 {
		t.Fatalf("err %v, result %+v, views %d, still bad %v; want 2 repairs confirmed by a second view", err, res, tb.opened, tb.bad)
	}
}

func TestPersistentDifferenceFails(t *testing.T) {
	tb := &table{n: 50, bad: map[int]bool{42: true}}
	noRepair := func(context.Context, Chunk) error { return nil }
	_, err := Run(context.Background(), tb.open, noRepair, Options{ChunkSize: 10, Rounds: 3}, zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "keys after (40) up to the end") || tb.opened != 3 {
		t.Fatalf("err %v after %d views; want a failure naming the chunk after 3 views", err, tb.opened)
	}
}

// sweepView sweeps when it can: each bad key is a chunk of its own.
type sweepView struct {
	fakeView
	can bool
}

func (v sweepView) Sweep(_ context.Context, _ int) ([]Chunk, int, bool, error) {
	if !v.can {
		return nil, 0, false, nil
	}
	var differ []Chunk
	for k := range v.t.bad {
		differ = append(differ, Chunk{After: copier.Key{k - 1}, End: copier.Key{k}})
	}
	return differ, 42, true, nil
}

func TestSweepReplacesTheChunkWalk(t *testing.T) {
	for _, can := range []bool{true, false} {
		tb := &table{n: 95, bad: map[int]bool{7: true, 50: true}}
		open := func(context.Context) (View, error) { tb.opened++; return sweepView{fakeView{tb}, can}, nil }
		res, err := Run(context.Background(), open, tb.repair, Options{ChunkSize: 10, Rounds: 3}, zap.NewNop())
		want := 10 // the chunk walk
		if can {
			want = 42
		}
		if err != nil || res.Chunks != want || res.Repaired != 2 || len(tb.bad) != 0 || tb.opened != 2 {
			t.Errorf("sweep possible %v: err %v, result %+v, left bad %v, views %d; want %d chunks compared, 2 repaired, 2 views", can, err, res, tb.bad, tb.opened, want)
		}
	}
}
