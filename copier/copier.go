// Package copier copies the existing rows of a table into its shadow in
// chunks ordered by a unique key, consulting the throttler before every
// chunk. The SQL of a chunk belongs to the database engine (Source); this
// package owns the loop, the chunk size and the progress counters.
package copier

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Key is the value of the chunking key's columns for one row.
type Key []any

// Source is one database's chunk operations on one table.
type Source interface {
	// Max returns the highest key of the table, read after change capture
	// started: rows inserted beyond it arrive through the stream. ok is
	// false for an empty table.
	Max(ctx context.Context) (max Key, ok bool, err error)
	// Boundary returns the key `size` rows after `after` (exclusive; nil
	// means from the start), capped at max; last reports that the chunk
	// ends at max.
	Boundary(ctx context.Context, after Key, size int, max Key) (end Key, last bool, err error)
	// Copy copies the rows with after < key <= end (after nil: key <= end)
	// into the shadow and returns how many rows it inserted.
	Copy(ctx context.Context, after, end Key) (int64, error)
}

// WorkerLimit is implemented by a Source whose chunks stop gaining from
// running at once beyond some number, because the server serializes them
// (MySQL: INSERT ... SELECT into a table with an AUTO_INCREMENT column
// holds a table lock unless innodb_autoinc_lock_mode is 2). Extra workers
// would only wait, and make the applier wait with them.
type WorkerLimit interface {
	MaxWorkers() int
}

// Gate is consulted before every chunk; it blocks while copying must wait.
type Gate interface {
	Wait(ctx context.Context) error
}

// Copier runs the chunk loop. Its counters are safe to read concurrently.
type Copier struct {
	src       Source
	gate      Gate
	workers   int
	chunkSize atomic.Int64
	chunkTime atomic.Int64 // target duration of a chunk in ns; 0: fixed size
	copied    atomic.Int64
	chunks    atomic.Int64
	done      atomic.Bool
}

// New returns a copier; chunkSize is the starting rows per chunk, workers
// the chunks copied at once, each on its own connection.
func New(src Source, gate Gate, chunkSize, workers int) *Copier {
	if l, ok := src.(WorkerLimit); ok {
		workers = min(workers, l.MaxWorkers())
	}
	c := &Copier{src: src, gate: gate, workers: max(workers, 1)}
	c.SetChunkSize(chunkSize)
	return c
}

// SetChunkSize changes the size of the next chunk.
func (c *Copier) SetChunkSize(n int) {
	if n < 1 {
		n = 1
	}
	c.chunkSize.Store(int64(n))
}

// Bounds of an adapting chunk size.
const (
	minChunk = 10
	maxChunk = 100_000
)

// SetChunkTime sets the time a chunk should take; the chunk size adapts
// to it after every chunk. 0 keeps the size fixed.
func (c *Copier) SetChunkTime(d time.Duration) {
	if d < 0 {
		d = 0
	}
	c.chunkTime.Store(int64(d))
}

// ChunkTime is the target time per chunk (0: fixed size).
func (c *Copier) ChunkTime() time.Duration { return time.Duration(c.chunkTime.Load()) }

// adapt moves the chunk size towards the time target, at most doubling or
// halving it per chunk so that one slow or fast chunk does not swing it.
func (c *Copier) adapt(rows int64, took time.Duration) {
	target := c.ChunkTime()
	if target <= 0 || took <= 0 || rows < int64(c.ChunkSize())/2 {
		return // a short last chunk says nothing about the rate
	}
	size := float64(c.ChunkSize()) * float64(target) / float64(took)
	size = min(max(size, float64(c.ChunkSize())/2, minChunk), float64(c.ChunkSize())*2, maxChunk)
	c.SetChunkSize(int(size))
}

// ChunkSize is the rows per chunk in force.
func (c *Copier) ChunkSize() int { return int(c.chunkSize.Load()) }

// Copied is the number of rows inserted into the shadow so far.
func (c *Copier) Copied() int64 { return c.copied.Load() }

// Done reports whether every chunk has been copied.
func (c *Copier) Done() bool { return c.done.Load() }

// Run copies every chunk and returns when the whole range is copied. One
// goroutine finds the chunks' ends in key order and consults the gate
// before each; the workers copy them, so a throttled copy stops within a
// chunk per worker.
func (c *Copier) Run(ctx context.Context) error {
	max, ok, err := c.src.Max(ctx)
	if err != nil {
		return fmt.Errorf("reading the key range: %w", err)
	}
	if !ok {
		c.done.Store(true)
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type chunk struct {
		n          int64
		after, end Key
	}
	work := make(chan chunk)
	var wg sync.WaitGroup
	for range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range work {
				began := time.Now()
				n, err := c.src.Copy(ctx, ch.after, ch.end)
				if err != nil {
					cancel(fmt.Errorf("copying chunk %d (keys after %s up to %s): %w", ch.n, ch.after, ch.end, err))
					return
				}
				c.adapt(n, time.Since(began))
				c.copied.Add(n)
				c.chunks.Add(1)
			}
		}()
	}
	err = c.produce(ctx, max, func(n int64, after, end Key) bool {
		select {
		case work <- chunk{n, after, end}:
			return true
		case <-ctx.Done():
			return false
		}
	})
	close(work)
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil {
		return cause // a worker's failure, or the caller's cancellation
	}
	if err != nil {
		return err
	}
	c.done.Store(true)
	return nil
}

// produce hands out the chunks in key order until the last one, or until
// send reports that the run is over.
func (c *Copier) produce(ctx context.Context, max Key, send func(n int64, after, end Key) bool) error {
	var after Key
	for n := int64(1); ; n++ {
		if err := c.gate.Wait(ctx); err != nil {
			return err
		}
		end, last, err := c.src.Boundary(ctx, after, c.ChunkSize(), max)
		if err != nil {
			return fmt.Errorf("finding the end of chunk %d: %w", n, err)
		}
		if !send(n, after, end) || last {
			return nil
		}
		after = end
	}
}

// String shows a key for messages; nil is the start of the table.
func (k Key) String() string {
	if k == nil {
		return "the start"
	}
	s := "("
	for i, v := range k {
		if i > 0 {
			s += ","
		}
		if b, ok := v.([]byte); ok {
			s += fmt.Sprintf("%q", b)
		} else {
			s += fmt.Sprint(v)
		}
	}
	return s + ")"
}
