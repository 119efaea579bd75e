// Package verify compares the shadow with the source before cut-over, at
// one consistent point of the change stream, chunk by chunk, and repairs
// chunks that differ by copying them again from the source. It is the
// safety net for every race the copy and the applier reason about: a
// difference that survives repair stops the run before the swap.
package verify

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/copier"
)

// Chunk is the key range (After, End]; a nil After starts at the first
// key, a nil End runs past the last one.
type Chunk struct{ After, End copier.Key }

// View is a read view of the source and the shadow at the same point.
type View interface {
	// Boundary returns the key `size` rows after `after` in the source, or
	// last=true when fewer rows remain.
	Boundary(ctx context.Context, after copier.Key, size int) (end copier.Key, last bool, err error)
	// Differs compares the chunk's rows in the source and the shadow.
	Differs(ctx context.Context, c Chunk) (bool, error)
	Close() error
}

// Sweeper is implemented by views that can compare the whole table with
// a scan or two of each side rather than one range query per chunk. ok is
// false when they cannot tell the chunks that differ (the chunks are then
// compared one by one); differ are the chunks that differ, n how many
// were compared.
type Sweeper interface {
	Sweep(ctx context.Context, size int) (differ []Chunk, n int, ok bool, err error)
}

// Options bound the work.
type Options struct {
	ChunkSize int
	Rounds    int // views opened at most: the first compares everything, later ones what was repaired
}

// OpenFunc opens a view at the current point of the stream.
type OpenFunc func(ctx context.Context) (View, error)

// RepairFunc copies a chunk again from the source, replacing the shadow's
// rows in it.
type RepairFunc func(ctx context.Context, c Chunk) error

// Result says what verification found.
type Result struct {
	Chunks   int // chunks compared in the first round
	Repaired int // chunks repaired
}

// Run compares and repairs until no chunk differs, or fails once
// differences survive the rounds.
func Run(ctx context.Context, open OpenFunc, repair RepairFunc, o Options, log *zap.Logger) (Result, error) {
	var res Result
	var pending []Chunk // nil: the whole table
	for round := 1; round <= o.Rounds; round++ {
		v, err := open(ctx)
		if err != nil {
			return res, fmt.Errorf("opening a consistent view for verification: %w", err)
		}
		differ, n, err := compare(ctx, v, pending, round == 1, o.ChunkSize)
		v.Close()
		if err != nil {
			return res, err
		}
		if round == 1 {
			res.Chunks = n
		}
		if len(differ) == 0 {
			return res, nil
		}
		if round == o.Rounds {
			return res, fmt.Errorf("the shadow table still differs from the table in %d chunk(s) after %d repair round(s) (first: %s); osc stops before the swap",
				len(differ), o.Rounds-1, differ[0])
		}
		log.Warn("verification found chunks that differ; copying them again", zap.Int("chunks", len(differ)), zap.Int("round", round))
		for _, c := range differ {
			if err := repair(ctx, c); err != nil {
				return res, fmt.Errorf("repairing %s: %w", c, err)
			}
			res.Repaired++
		}
		pending = differ
	}
	return res, nil
}

func compare(ctx context.Context, v View, pending []Chunk, all bool, size int) (differ []Chunk, n int, err error) {
	check := func(c Chunk) error {
		d, err := v.Differs(ctx, c)
		if d {
			differ = append(differ, c)
		}
		n++
		return err
	}
	if !all {
		for _, c := range pending {
			if err := check(c); err != nil {
				return nil, n, err
			}
		}
		return differ, n, nil
	}
	// The whole table first, as one chunk: most runs find nothing to
	// repair, and one aggregate per side costs far less than finding the
	// chunks (1M rows, a side: PostgreSQL 0.2-0.3 s against 0.5 s grouped
	// into buckets; MariaDB verification 1.1 s against 1.7 s chunk by
	// chunk, whose ends cost another walk of the key).
	if d, err := v.Differs(ctx, Chunk{}); err != nil || !d {
		return nil, 1, err
	}
	if s, ok := v.(Sweeper); ok {
		differ, n, ok, err := s.Sweep(ctx, size)
		if ok || err != nil {
			return differ, n, err
		}
	}
	var after copier.Key
	for {
		end, last, err := v.Boundary(ctx, after, size)
		if err != nil {
			return nil, n, err
		}
		if last {
			return differ, n, check(Chunk{After: after})
		}
		if err := check(Chunk{After: after, End: end}); err != nil {
			return nil, n, err
		}
		after = end
	}
}

func (c Chunk) String() string {
	from, to := "the start", "the end"
	if c.After != nil {
		from = c.After.String()
	}
	if c.End != nil {
		to = c.End.String()
	}
	return "keys after " + from + " up to " + to
}
