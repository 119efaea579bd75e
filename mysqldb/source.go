package mysqldb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/osc-dev/osc/copier"
)

// source implements copier.Source with locking-read INSERT ... SELECT
// chunks: the shared locks wait for writers in flight, so a chunk never
// copies a row older than an event the stream already holds.
type source struct {
	e        *Engine
	keyCols  []*column
	maxSQL   string
	boundSQL string // after-predicate variant
	firstSQL string // from the start of the table
	copySQL  string
	copyFrom string // from the start of the table
	afterIdx []int
	upToIdx  []int
}

// Source returns the chunk operations for the table.
func (e *Engine) Source() copier.Source {
	s := &source{e: e}
	var cols, asc, desc, srcExprs []string
	var sel []string
	for _, m := range e.keyPairs() {
		s.keyCols = append(s.keyCols, m.src)
		cols = append(cols, q(m.src.Name))
		sel = append(sel, keySelectExpr(m.src))
		asc = append(asc, q(m.src.Name))
		desc = append(desc, q(m.src.Name)+" DESC")
		srcExprs = append(srcExprs, cmpExpr(m.src, m.src))
	}
	from := e.qt(e.names.table) + " FORCE INDEX (" + q(e.key.Name) + ")"
	after, afterIdx := tuplePredicate(cols, srcExprs, ">")
	upTo, upToIdx := tuplePredicate(cols, srcExprs, "<=")
	s.afterIdx, s.upToIdx = afterIdx, upToIdx
	keyList := strings.Join(sel, ", ")
	s.maxSQL = "SELECT " + keyList + " FROM " + from + " ORDER BY " + strings.Join(desc, ", ") + " LIMIT 1"
	s.boundSQL = "SELECT " + keyList + " FROM " + from + " WHERE " + after + " AND " + upTo + " ORDER BY " + strings.Join(asc, ", ") + " LIMIT 1 OFFSET ?"
	s.firstSQL = "SELECT " + keyList + " FROM " + from + " WHERE " + upTo + " ORDER BY " + strings.Join(asc, ", ") + " LIMIT 1 OFFSET ?"
	var dst, src []string
	for _, m := range e.mapping {
		dst = append(dst, q(m.dst.Name))
		src = append(src, q(m.src.Name))
	}
	ins := "INSERT IGNORE INTO " + e.qt(e.names.shadow) + " (" + strings.Join(dst, ", ") + ") SELECT " + strings.Join(src, ", ") + " FROM " + from
	s.copySQL = ins + " WHERE " + after + " AND " + upTo + " LOCK IN SHARE MODE"
	s.copyFrom = ins + " WHERE " + upTo + " LOCK IN SHARE MODE"
	return s
}

func (s *source) readKey(ctx context.Context, query string, args ...any) (copier.Key, bool, error) {
	raw := make([]sql.RawBytes, len(s.keyCols))
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	rows, err := s.e.data.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, false, rows.Err()
	}
	if err := rows.Scan(dest...); err != nil {
		return nil, false, err
	}
	k, err := scanKey(s.keyCols, raw)
	return k, err == nil, err
}

func (s *source) Max(ctx context.Context) (copier.Key, bool, error) {
	return s.readKey(ctx, s.maxSQL)
}

func (s *source) Boundary(ctx context.Context, after copier.Key, size int, max copier.Key) (copier.Key, bool, error) {
	var args []any
	query := s.firstSQL
	if after != nil {
		query = s.boundSQL
		args = pick(args, after, s.afterIdx)
	}
	args = pick(args, max, s.upToIdx)
	args = append(args, size-1)
	end, ok, err := s.readKey(ctx, query, args...)
	if err != nil || !ok {
		return max, true, err
	}
	return end, false, nil
}

func (s *source) Copy(ctx context.Context, after, end copier.Key) (n int64, err error) {
	err = retryTransient(ctx, func() error {
		n, err = s.copy(ctx, after, end)
		return err
	})
	return n, err
}

func (s *source) copy(ctx context.Context, after, end copier.Key) (int64, error) {
	var args []any
	query := s.copyFrom
	if after != nil {
		query = s.copySQL
		args = pick(args, after, s.afterIdx)
	}
	args = pick(args, end, s.upToIdx)
	tx, err := s.e.data.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	ws, err := showWarnings(ctx, tx)
	if err != nil {
		return 0, err
	}
	if err := s.e.checkWarnings(ws); err != nil {
		return 0, fmt.Errorf("copying rows: %w", err)
	}
	return n, tx.Commit()
}
