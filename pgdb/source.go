package pgdb

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/replication/pgoutput"
	"github.com/osc-dev/osc/verify"
)

// Source returns the engine's chunk operations; keys are text.
func (e *Engine) Source() copier.Source { return (*source)(e) }

type source Engine

func keyArgs(ks ...copier.Key) []any {
	var args []any
	for _, k := range ks {
		args = append(args, k...)
	}
	return args
}

func scanKey(row pgx.Row, n int) (copier.Key, error) {
	vals := make([]string, n)
	ptrs := make([]any, n)
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := row.Scan(ptrs...); err != nil {
		return nil, err
	}
	k := make(copier.Key, n)
	for i, v := range vals {
		k[i] = v
	}
	return k, nil
}

// inSnapshot runs one statement in a REPEATABLE READ transaction of its
// own, on a pool connection, that sees the copy's snapshot (the slot's, as
// of its consistent point). The begin, the snapshot's import, the
// statement (whose result read takes) and the commit go to the server as
// one pipeline: one round trip. A failure leaves the transaction open and
// the pool discards the connection.
func (e *Engine) inSnapshot(ctx context.Context, readOnly bool, read func(pgx.BatchResults) error, query string, args ...any) error {
	name := e.snap.current()
	if name == "" {
		return errors.New("the copy's snapshot is not held (the change stream was not started, or the copy has ended)")
	}
	begin := "BEGIN ISOLATION LEVEL REPEATABLE READ"
	if readOnly {
		begin += " READ ONLY"
	}
	b := &pgx.Batch{}
	b.Queue(begin)
	b.Queue("SET TRANSACTION SNAPSHOT " + lit(name))
	b.Queue(query, args...)
	b.Queue("COMMIT")
	br := e.pool.SendBatch(ctx, b)
	_, err := br.Exec()
	if err == nil {
		if _, err = br.Exec(); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "22023" {
				err = fmt.Errorf("the copy's snapshot is gone (the session holding it ended): %w", err)
			}
		}
	}
	if err == nil {
		err = read(br)
	}
	if err == nil || errors.Is(err, pgx.ErrNoRows) {
		if _, cerr := br.Exec(); cerr != nil {
			err = cerr
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// streamFailed is why the change stream ended, if it did: the applier
// is held during the copy and would only see it afterwards.
func (e *Engine) streamFailed() error {
	if e.reader == nil {
		return nil
	}
	if err := e.reader.Err(); err != nil {
		return fmt.Errorf("the change stream ended during the copy: %w", err)
	}
	return nil
}

// The copy's chunks are ranges of the table's row positions (TIDs), read
// by TID range scans, not ranges of its key: a key range is read through
// the key's index, in the key's order, which on a table whose rows are not
// stored in that order visits the heap at random (1M pgbench rows stored
// in random order, in memory: 2.6 s by key ranges, 0.9-1.1 s by ranges of
// blocks; 10% apart when stored in key order). The snapshot fixes where
// each row it sees is stored: vacuum removes no version the snapshot sees
// and nothing moves one but a rewrite of the table (EndCopy checks for
// one), so every such row is at a position up to Max, in exactly one
// chunk. A chunk ends at the position of its size-th row, so it holds
// exactly its size in rows, as on MySQL. Keys are TIDs, as text.

// Max is past every row position the copy's snapshot sees: the last
// block, by the table's size read after the snapshot was taken; ok is
// false when the table has no block. It also takes the rows per block
// from the statistics, to size Boundary's window.
func (s *source) Max(ctx context.Context) (copier.Key, bool, error) {
	var blocks int64
	var perBlock float64
	err := s.pool.QueryRow(ctx, `SELECT pg_relation_size(c.oid) / current_setting('block_size')::int8,
			CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages ELSE 0 END,
			pg_relation_filenode(c.oid)
		FROM pg_class c WHERE c.oid = $1`, s.src.oid).Scan(&blocks, &perBlock, &s.copyFilenode)
	if err != nil {
		return nil, false, fmt.Errorf("reading the table's size: %w", err)
	}
	// Never analyzed: the window grows until it holds a chunk.
	s.rowsPerBlock = perBlock
	if s.rowsPerBlock <= 0 {
		s.rowsPerBlock = 50
	}
	if blocks == 0 {
		return nil, false, nil
	}
	return copier.Key{tidText(blocks-1, math.MaxUint16)}, true, nil
}

// tidText renders a row position as the tid type's input.
func tidText(block int64, offset int) string {
	return "(" + strconv.FormatInt(block, 10) + "," + strconv.Itoa(offset) + ")"
}

// position is a chunk bound as a TID; a nil bound (the first chunk's
// start) is before every row, whose offsets start at 1.
func position(k copier.Key) string {
	if k == nil {
		return "(0,0)"
	}
	return k[0].(string)
}

// blockOf is the block of a TID as tidText renders it.
func blockOf(tid string) (int64, error) {
	b, _, ok := strings.Cut(strings.TrimPrefix(tid, "("), ",")
	n, err := strconv.ParseInt(b, 10, 64)
	if !ok || err != nil {
		return 0, fmt.Errorf("not a row position: %q", tid)
	}
	return n, nil
}

// Boundary is the position of the size-th row after `after` in the
// copy's snapshot, or last with done when fewer remain. It counts rows in
// a window of blocks twice the chunk's size by the statistics, doubled
// while it holds too few (dead rows, a stale estimate). A TID range scan
// returns a block's rows in position order, which makes the count exact;
// the chunks cover every row whatever the order, since Copy selects them by
// position. The window's blocks are the next chunk's, so this also reads
// them into the server's cache for the copy.
func (s *source) Boundary(ctx context.Context, after copier.Key, size int, last copier.Key) (copier.Key, bool, error) {
	if err := (*Engine)(s).streamFailed(); err != nil {
		return nil, false, err
	}
	from := position(after)
	first, err := blockOf(from)
	if err != nil {
		return nil, false, err
	}
	lastBlock, err := blockOf(position(last))
	if err != nil {
		return nil, false, err
	}
	for window := max(1, int64(math.Ceil(2*float64(size)/s.rowsPerBlock))); ; window *= 2 {
		past := first + window + 1
		var k string
		err := (*Engine)(s).inSnapshot(ctx, true, func(br pgx.BatchResults) error {
			return br.QueryRow().Scan(&k)
		}, s.sql.chunkEnd(), from, tidText(past, 0), size-1)
		switch {
		case err == nil:
			return copier.Key{k}, false, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return nil, false, err
		case past > lastBlock:
			return last, true, nil
		}
	}
}

// Copy copies the chunk's rows, after < position <= end, as the copy's
// snapshot sees them, in a transaction of its own on a pool connection;
// chunks may be copied concurrently. The
// applier is held until the copy ends, so nothing else writes to the
// shadow meanwhile and no row of the chunk can be there already: no lock
// on the table's rows, no conflict handling (the shadow has no index yet,
// and EndCopy's build of its key would fail on a row copied twice).
func (s *source) Copy(ctx context.Context, after, end copier.Key) (int64, error) {
	if err := (*Engine)(s).streamFailed(); err != nil {
		return 0, err
	}
	if end == nil {
		return 0, errors.New("a chunk without an end")
	}
	var tag pgconn.CommandTag
	err := (*Engine)(s).inSnapshot(ctx, false, func(br pgx.BatchResults) (err error) {
		tag, err = br.Exec()
		return err
	}, s.sql.copyPositions(), position(after), position(end))
	if err != nil {
		// A column dropped or retyped by someone else's DDL breaks the
		// copy: say so rather than quote the server's error.
		if cerr := (*Engine)(s).checkUnchanged(ctx, s.pool); errors.Is(cerr, errDefinitionChanged) {
			return 0, fmt.Errorf("%w (copying: %s)", cerr, pgMessage(err))
		}
		return 0, copyErr(err)
	}
	return tag.RowsAffected(), nil
}

// copyErr says what a row that breaks the shadow's constraints means.
func copyErr(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23514" || pe.Code == "23502" || pe.Code == "22001" || pe.Code == "22003") {
		return fmt.Errorf("a row of the table does not fit the new definition: %s; no row was changed or dropped: fix the data or the ALTER and rerun", pgMessage(err))
	}
	return err
}

// Repair copies a chunk again: the shadow's rows in it are replaced by the
// table's latest rows, in one transaction. Unlike the copy it runs while
// the applier applies the stream, so it reads under row locks (see
// repairRange) and may find rows the applier has just written.
func (e *Engine) Repair(ctx context.Context, c verify.Chunk) error {
	st := e.sql
	return retryDeadlock(ctx, func() error {
		return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "DELETE FROM "+st.shadow+" WHERE "+st.rangeWhere(st.shadowKey, c.After != nil, c.End != nil), keyArgs(c.After, c.End)...); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, st.repairRange(c.After != nil, c.End != nil), keyArgs(c.After, c.End)...)
			return copyErr(err)
		})
	})
}

// Restore has nothing to copy back: PostgreSQL's shadow has no unique
// index but the key's until FinishShadow, so nothing is ever displaced.
func (e *Engine) Restore(context.Context) (int, error) { return 0, nil }

// SnapshotCopy is true: the copy reads the slot's exported snapshot, and
// the applier replays the stream from the slot's consistent point once
// the copy is done (docs/postgresql.md).
func (e *Engine) SnapshotCopy() bool { return true }

// EndCopy releases the copy's snapshot, which holds back vacuum, checks
// that the table was not rewritten during the copy, and builds the
// shadow's key, which the applier needs, before it starts.
func (e *Engine) EndCopy(ctx context.Context) error {
	if held, ok := e.snap.release(context.WithoutCancel(ctx)); ok {
		e.log.Info("copy done; released its snapshot", zap.Duration("held", held))
	}
	// A TRUNCATE or a rewrite between chunks (VACUUM FULL, CLUSTER: the
	// copy holds no lock between chunks) replaces the table's file, so the
	// chunks before and after it would miss or repeat rows.
	var filenode uint32
	if err := e.pool.QueryRow(ctx, "SELECT pg_relation_filenode($1)", e.src.oid).Scan(&filenode); err != nil {
		return fmt.Errorf("checking the table after the copy: %w", err)
	}
	if e.copyFilenode != 0 && filenode != e.copyFilenode {
		// A TRUNCATE the stream has already reported says it best.
		if err := e.streamFailed(); err != nil {
			return err
		}
		return fmt.Errorf("%w: the table's file was replaced during the copy (TRUNCATE, VACUUM FULL, CLUSTER or an ALTER TABLE that rewrites it, by someone else), which moves its rows away from the positions osc copies them by; rerun osc when nothing else truncates or rewrites the table", pgoutput.ErrTableChanged)
	}
	if d := e.deferredKey; d != nil {
		start := time.Now()
		if err := e.buildIndex(ctx, *d); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				// The table's key is unique: only a row copied twice does this.
				return fmt.Errorf("building the shadow table's key %s: %s; the copy wrote a row twice, which is a bug in osc: please report it", q(d.name), pgMessage(err))
			}
			return fmt.Errorf("building the shadow table's key %s: %w", q(d.name), err)
		}
		e.deferredKey = nil
		e.log.Info("built the shadow table's key", zap.String("index", d.name), zap.Duration("took", time.Since(start)))
	}
	return nil
}
