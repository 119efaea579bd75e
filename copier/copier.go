// Package copier copies the existing rows of a table into its shadow in
// chunks ordered by a unique key, consulting the throttler before every
// chunk. The SQL of a chunk belongs to the database engine (Source); this
// package owns the loop, the chunk size and the progress counters.
package copier

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
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

// ErrConflict marks a chunk that collided on a unique key other than the
// chunking key. That can be transient: the copy reads rows newer than the
// applier has reached, so a value that moved between rows can sit in the
// shadow twice until the stream catches up. The copier lets the applier
// catch up and retries; a collision that persists is real.
var ErrConflict = errors.New("unique key conflict")

// conflictRetries bounds the retries of a colliding chunk.
const conflictRetries = 3

// Gate is consulted before every chunk; it blocks while copying must wait.
type Gate interface {
	Wait(ctx context.Context) error
}

// Copier runs the chunk loop. Its counters are safe to read concurrently.
type Copier struct {
	src       Source
	gate      Gate
	catchUp   func(context.Context) error
	chunkSize atomic.Int64
	copied    atomic.Int64
	chunks    atomic.Int64
	done      atomic.Bool
}

// New returns a copier; chunkSize is the starting rows per chunk. catchUp
// returns once the applier has applied everything written so far.
func New(src Source, gate Gate, catchUp func(context.Context) error, chunkSize int) *Copier {
	c := &Copier{src: src, gate: gate, catchUp: catchUp}
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

// ChunkSize is the rows per chunk in force.
func (c *Copier) ChunkSize() int { return int(c.chunkSize.Load()) }

// Copied is the number of rows inserted into the shadow so far.
func (c *Copier) Copied() int64 { return c.copied.Load() }

// Done reports whether every chunk has been copied.
func (c *Copier) Done() bool { return c.done.Load() }

// Run copies every chunk and returns when the whole range is copied.
func (c *Copier) Run(ctx context.Context) error {
	max, ok, err := c.src.Max(ctx)
	if err != nil {
		return fmt.Errorf("reading the key range: %w", err)
	}
	if !ok {
		c.done.Store(true)
		return nil
	}
	var after Key
	for {
		if err := c.gate.Wait(ctx); err != nil {
			return err
		}
		end, last, err := c.src.Boundary(ctx, after, c.ChunkSize(), max)
		if err != nil {
			return fmt.Errorf("finding the end of chunk %d: %w", c.chunks.Load()+1, err)
		}
		n, err := c.copy(ctx, after, end)
		if err != nil {
			return fmt.Errorf("copying chunk %d (keys after %s up to %s): %w", c.chunks.Load()+1, after, end, err)
		}
		c.copied.Add(n)
		c.chunks.Add(1)
		after = end
		if last {
			c.done.Store(true)
			return nil
		}
	}
}

func (c *Copier) copy(ctx context.Context, after, end Key) (n int64, err error) {
	err = RetryConflicts(ctx, c.catchUp, func() error {
		n, err = c.src.Copy(ctx, after, end)
		return err
	})
	return n, err
}

// RetryConflicts runs fn, a copy from the source, and after an
// ErrConflict lets the applier catch up and runs it again, a bounded
// number of times.
func RetryConflicts(ctx context.Context, catchUp func(context.Context) error, fn func() error) error {
	for try := 0; ; try++ {
		err := fn()
		if err == nil || !errors.Is(err, ErrConflict) || try == conflictRetries {
			return err
		}
		if err := catchUp(ctx); err != nil {
			return fmt.Errorf("waiting for the applier after a unique key conflict: %w", err)
		}
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
