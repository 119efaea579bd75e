package pgdb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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

func (s *source) Max(ctx context.Context) (copier.Key, bool, error) {
	st := s.sql
	k, err := scanKey(s.pool.QueryRow(ctx, "SELECT "+st.keyText()+" FROM ONLY "+st.src+" ORDER BY "+st.keyOrder(true)+" LIMIT 1"), len(st.keyCols))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	return k, err == nil, err
}

func (s *source) Boundary(ctx context.Context, after copier.Key, size int, max copier.Key) (copier.Key, bool, error) {
	st := s.sql
	where := st.rangeWhere(st.keyList(), after != nil, true)
	args := append(keyArgs(after, max), size-1)
	k, err := scanKey(s.pool.QueryRow(ctx, fmt.Sprintf("SELECT %s FROM ONLY %s WHERE %s ORDER BY %s LIMIT 1 OFFSET $%d",
		st.keyText(), st.src, where, st.keyOrder(false), len(args)), args...), len(st.keyCols))
	if errors.Is(err, pgx.ErrNoRows) {
		return max, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return k, false, nil
}

// nowaitAttempts is how often a chunk is tried without waiting for row
// locks the application holds, before one attempt that waits.
const nowaitAttempts = 8

// Copy copies a chunk in its own short transaction. It first tries
// without waiting for the application's row locks, backing off while
// they are held, so that it neither deadlocks with the application nor
// makes it wait behind a chunk waiting for someone else; a chunk whose
// rows stay busy is finally copied waiting.
func (s *source) Copy(ctx context.Context, after, end copier.Key) (int64, error) {
	var tag pgconn.CommandTag
	err := retryDeadlock(ctx, func() (err error) {
		for i := 0; ; i++ {
			nowait := i < nowaitAttempts
			tag, err = s.pool.Exec(ctx, s.sql.copyRange(after != nil, end != nil, nowait), keyArgs(after, end)...)
			if !nowait || !isLockTimeout(err) {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(min(time.Duration(5<<i)*time.Millisecond, 200*time.Millisecond)):
			}
		}
	})
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
// source's, in one transaction.
func (e *Engine) Repair(ctx context.Context, c verify.Chunk) error {
	st := e.sql
	return retryDeadlock(ctx, func() error {
		return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "DELETE FROM "+st.shadow+" WHERE "+st.rangeWhere(st.shadowKey, c.After != nil, c.End != nil), keyArgs(c.After, c.End)...); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, st.copyRange(c.After != nil, c.End != nil, false), keyArgs(c.After, c.End)...)
			return copyErr(err)
		})
	})
}

// Restore has nothing to copy back: PostgreSQL's shadow has no unique
// index but the key's until FinishShadow, so nothing is ever displaced.
func (e *Engine) Restore(context.Context) (int, error) { return 0, nil }

// SnapshotCopy is false for now (see EndCopy).
func (e *Engine) SnapshotCopy() bool { return false }

// EndCopy has nothing to release.
func (e *Engine) EndCopy(context.Context) error { return nil }
