package pgdb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/copier"
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

// Max is the highest key in the copy's snapshot: rows inserted after it
// are in the stream.
func (s *source) Max(ctx context.Context) (copier.Key, bool, error) {
	st := s.sql
	var k copier.Key
	err := (*Engine)(s).inSnapshot(ctx, true, func(br pgx.BatchResults) (err error) {
		k, err = scanKey(br.QueryRow(), len(st.keyCols))
		return err
	}, "SELECT "+st.keyText()+" FROM ONLY "+st.src+" ORDER BY "+st.keyOrder(true)+" LIMIT 1")
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	return k, err == nil, err
}

// Boundary finds a chunk's end in the copy's snapshot, in a transaction of
// its own: one transaction for the whole copy would hold the table's
// ACCESS SHARE lock, and then DDL by others, and everything queued behind
// it, would wait for the copy. It scans size entries of the key's index
// (an index-only scan on a vacuumed table), far less than a chunk's copy,
// so one goroutine keeps several copy workers busy.
func (s *source) Boundary(ctx context.Context, after copier.Key, size int, max copier.Key) (copier.Key, bool, error) {
	if err := (*Engine)(s).streamFailed(); err != nil {
		return nil, false, err
	}
	st := s.sql
	where := st.rangeWhere(st.keyList(), after != nil, true)
	args := append(keyArgs(after, max), size-1)
	var k copier.Key
	err := (*Engine)(s).inSnapshot(ctx, true, func(br pgx.BatchResults) (err error) {
		k, err = scanKey(br.QueryRow(), len(st.keyCols))
		return err
	}, fmt.Sprintf("SELECT %s FROM ONLY %s WHERE %s ORDER BY %s LIMIT 1 OFFSET $%d",
		st.keyText(), st.src, where, st.keyOrder(false), len(args)), args...)
	if errors.Is(err, pgx.ErrNoRows) {
		return max, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return k, false, nil
}

// Copy copies a chunk as the copy's snapshot sees it, in a transaction of
// its own on a pool connection; chunks may be copied concurrently. The
// applier is held until the copy ends, so nothing else writes to the
// shadow meanwhile and no row of the chunk can be there already: no lock
// on the table's rows, no conflict handling (the shadow has no index yet,
// and EndCopy's build of its key would fail on a row copied twice).
func (s *source) Copy(ctx context.Context, after, end copier.Key) (int64, error) {
	if err := (*Engine)(s).streamFailed(); err != nil {
		return 0, err
	}
	var tag pgconn.CommandTag
	err := (*Engine)(s).inSnapshot(ctx, false, func(br pgx.BatchResults) (err error) {
		tag, err = br.Exec()
		return err
	}, s.sql.copyRange(after != nil, end != nil), keyArgs(after, end)...)
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

// EndCopy releases the copy's snapshot, which holds back vacuum, and
// builds the shadow's key, which the applier needs, before it starts.
func (e *Engine) EndCopy(ctx context.Context) error {
	if held, ok := e.snap.release(context.WithoutCancel(ctx)); ok {
		e.log.Info("copy done; released its snapshot", zap.Duration("held", held))
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
