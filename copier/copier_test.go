package copier

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// intSource is an in-memory table of integer keys 1..n; the loop logic is
// under test here, the SQL of a chunk is tested against real servers.
type intSource struct {
	keys []int

	mu      sync.Mutex
	copied  map[int]int // key -> times copied
	running int         // Copy calls in progress
	overlap int         // most Copy calls seen in progress at once
	delay   time.Duration
	fail    int // the chunk starting after this key fails
}

func (s *intSource) Max(context.Context) (Key, bool, error) {
	if len(s.keys) == 0 {
		return nil, false, nil
	}
	return Key{s.keys[len(s.keys)-1]}, true, nil
}

func (s *intSource) Boundary(_ context.Context, after Key, size int, max Key) (Key, bool, error) {
	n := 0
	for _, k := range s.keys {
		if (after == nil || k > after[0].(int)) && k <= max[0].(int) {
			n++
			if n == size {
				return Key{k}, false, nil
			}
		}
	}
	return max, true, nil
}

func (s *intSource) Copy(ctx context.Context, after, end Key) (int64, error) {
	s.mu.Lock()
	s.running++
	s.overlap = max(s.overlap, s.running)
	s.mu.Unlock()
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	if s.fail > 0 && after != nil && after[0].(int) == s.fail {
		return 0, errors.New("duplicate entry")
	}
	var n int64
	for _, k := range s.keys {
		if (after == nil || k > after[0].(int)) && k <= end[0].(int) {
			s.copied[k]++
			n++
		}
	}
	return n, nil
}

type open struct{ waits int }

func (o *open) Wait(context.Context) error { o.waits++; return nil }

func TestWorkersCopyConcurrently(t *testing.T) {
	src := &intSource{copied: map[int]int{}, delay: 20 * time.Millisecond}
	for i := 1; i <= 100; i++ {
		src.keys = append(src.keys, i)
	}
	c := New(src, &open{}, 10, 3)
	if err := c.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if src.overlap != 3 || c.Copied() != 100 {
		t.Fatalf("at most %d chunks copied at once and %d rows copied; want 3 and 100", src.overlap, c.Copied())
	}
}

func TestAFailedChunkStopsTheOthers(t *testing.T) {
	src := &intSource{copied: map[int]int{}, delay: 5 * time.Millisecond, fail: 30}
	for i := 1; i <= 1000; i++ {
		src.keys = append(src.keys, i)
	}
	c := New(src, &open{}, 10, 2)
	err := c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "(keys after (30) up to (40)): duplicate entry") || c.Done() {
		t.Fatalf("err %v, done %v; want the failed chunk's error, not done", err, c.Done())
	}
	if c.Copied() > 100 {
		t.Fatalf("%d rows copied after a chunk failed: the other workers did not stop", c.Copied())
	}
}

func TestRunCopiesEveryKeyOnce(t *testing.T) {
	for _, tc := range []struct{ rows, chunk, workers int }{{0, 10, 1}, {1, 10, 1}, {10, 10, 2}, {11, 10, 2}, {95, 7, 3}, {100, 1, 1}, {100, 1, 4}} {
		src := &intSource{copied: map[int]int{}}
		for i := 1; i <= tc.rows; i++ {
			src.keys = append(src.keys, i*3) // gaps between keys
		}
		gate := &open{}
		c := New(src, gate, tc.chunk, tc.workers)
		if err := c.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := c.Copied(); got != int64(tc.rows) {
			t.Errorf("rows=%d chunk=%d: copied %d", tc.rows, tc.chunk, got)
		}
		for _, k := range src.keys {
			if src.copied[k] != 1 {
				t.Errorf("rows=%d chunk=%d: key %d copied %d times", tc.rows, tc.chunk, k, src.copied[k])
			}
		}
		if !c.Done() {
			t.Errorf("rows=%d: not done", tc.rows)
		}
		if tc.rows > 0 && gate.waits < (tc.rows+tc.chunk-1)/tc.chunk {
			t.Errorf("rows=%d chunk=%d: gate consulted %d times, want one per chunk", tc.rows, tc.chunk, gate.waits)
		}
	}
}

type closed struct{}

func (closed) Wait(ctx context.Context) error { return errors.New("aborted by operator") }

func TestGateStopsTheCopy(t *testing.T) {
	src := &intSource{keys: []int{1, 2, 3}, copied: map[int]int{}}
	c := New(src, closed{}, 10, 2)
	if err := c.Run(context.Background()); err == nil || c.Copied() != 0 {
		t.Fatalf("err %v, copied %d; want the gate's error and nothing copied", err, c.Copied())
	}
}

func TestChunkTimeAdapts(t *testing.T) {
	c := New(nil, nil, 1000, 1)
	c.adapt(1000, time.Second) // no target: fixed size
	if c.ChunkSize() != 1000 {
		t.Fatalf("size changed without a target: %d", c.ChunkSize())
	}
	c.SetChunkTime(100 * time.Millisecond)
	c.adapt(1000, 50*time.Millisecond)
	if c.ChunkSize() != 2000 {
		t.Fatalf("a chunk twice as fast as the target should double the size, got %d", c.ChunkSize())
	}
	c.adapt(2000, time.Millisecond) // far too fast: at most doubles
	if c.ChunkSize() != 4000 {
		t.Fatalf("growth per chunk must be bounded, got %d", c.ChunkSize())
	}
	c.adapt(4000, 10*time.Second) // far too slow: at most halves
	if c.ChunkSize() != 2000 {
		t.Fatalf("shrinking per chunk must be bounded, got %d", c.ChunkSize())
	}
	c.adapt(10, 10*time.Second) // a short last chunk is ignored
	if c.ChunkSize() != 2000 {
		t.Fatalf("a short chunk changed the size: %d", c.ChunkSize())
	}
	c.SetChunkSize(15)
	c.adapt(15, time.Hour)
	if c.ChunkSize() != minChunk {
		t.Fatalf("size must not fall below %d, got %d", minChunk, c.ChunkSize())
	}
}
