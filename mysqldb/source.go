package mysqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strings"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/copier"
)

// keySide is the chunking key on one table (the source or the shadow),
// for range predicates over keys read from the source.
type keySide struct {
	cols  []string // quoted column names
	exprs []string // placeholders comparable with each column
}

// as qualifies the columns with a table alias, for joins.
func (k keySide) as(alias string) keySide {
	cols := make([]string, len(k.cols))
	for i, c := range k.cols {
		cols[i] = alias + "." + c
	}
	return keySide{cols: cols, exprs: k.exprs}
}

// eq is the predicate key = k.
func (k keySide) eq(key copier.Key) (string, []any) {
	conds := make([]string, len(k.cols))
	for i := range k.cols {
		conds[i] = k.cols[i] + " = " + k.exprs[i]
	}
	return "(" + strings.Join(conds, " AND ") + ")", append([]any(nil), key...)
}

// where is the predicate after < key <= end; a nil bound is left out.
func (k keySide) where(after, end copier.Key) (string, []any) {
	var conds []string
	var args []any
	if after != nil {
		p, idx := tuplePredicate(k.cols, k.exprs, ">")
		conds = append(conds, p)
		args = pick(args, after, idx)
	}
	if end != nil {
		p, idx := tuplePredicate(k.cols, k.exprs, "<=")
		conds = append(conds, p)
		args = pick(args, end, idx)
	}
	if len(conds) == 0 {
		return "TRUE", nil
	}
	return strings.Join(conds, " AND "), args
}

// source implements copier.Source with locking-read INSERT ... SELECT
// chunks: the shared locks wait for writers in flight, so a chunk never
// copies a row older than an event the stream already holds.
type source struct {
	e        *Engine
	keyCols  []*column
	src, dst keySide
	from     string // the source, forced onto the key's index
	keyList  string // key columns to read, see keySelectExpr
	asc      string
	desc     string
	insert   string // INSERT IGNORE INTO shadow (...) SELECT ... FROM source
	// maxWorkers is 1 when chunks serialize on the shadow's AUTO-INC lock
	// (see limitWorkers), else 0: no limit.
	maxWorkers int
}

// MaxWorkers implements copier.WorkerLimit.
func (s *source) MaxWorkers() int {
	if s.maxWorkers == 0 {
		return math.MaxInt
	}
	return s.maxWorkers
}

// limitWorkers copies one chunk at a time when the shadow has an
// AUTO_INCREMENT column and innodb_autoinc_lock_mode is below 2 (MariaDB's
// default, and MySQL's before 8.0): every INSERT ... SELECT then holds the
// table's AUTO-INC lock to its end, so a second worker only waits, and
// the applier's inserts wait behind both.
func (e *Engine) limitWorkers(ctx context.Context) error {
	var mode, autoinc int
	err := e.meta.QueryRowContext(ctx, `SELECT @@innodb_autoinc_lock_mode, (SELECT COUNT(*) FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND EXTRA LIKE '%auto_increment%')`, e.cfg.Database, e.names.shadow).Scan(&mode, &autoinc)
	if err != nil {
		return fmt.Errorf("reading innodb_autoinc_lock_mode: %w", err)
	}
	if autoinc > 0 && mode < 2 {
		e.rows.maxWorkers = 1
		e.log.Info("chunks are copied one at a time: with innodb_autoinc_lock_mode < 2, each INSERT ... SELECT into a table with an AUTO_INCREMENT column holds a table lock", zap.Int("innodb_autoinc_lock_mode", mode))
	}
	return nil
}

// Source returns the chunk operations for the table.
func (e *Engine) Source() copier.Source { return e.rows }

func (e *Engine) newSource() *source {
	s := &source{e: e}
	var sel, asc, desc []string
	for _, m := range e.keyPairs() {
		s.keyCols = append(s.keyCols, m.src)
		s.src.cols = append(s.src.cols, q(m.src.Name))
		s.src.exprs = append(s.src.exprs, cmpExpr(m.src, m.src))
		s.dst.cols = append(s.dst.cols, q(m.dst.Name))
		s.dst.exprs = append(s.dst.exprs, cmpExpr(m.src, m.dst))
		sel = append(sel, keySelectExpr(m.src, q(m.src.Name)))
		asc = append(asc, q(m.src.Name))
		desc = append(desc, q(m.src.Name)+" DESC")
	}
	s.from = e.qt(e.names.table) + " FORCE INDEX (" + q(e.key.Name) + ")"
	s.keyList = strings.Join(sel, ", ")
	s.asc, s.desc = strings.Join(asc, ", "), strings.Join(desc, ", ")
	var dst, src []string
	for _, m := range e.mapping {
		dst = append(dst, q(m.dst.Name))
		src = append(src, q(m.src.Name))
	}
	s.insert = "INSERT IGNORE INTO " + e.qt(e.names.shadow) + " (" + strings.Join(dst, ", ") + ") SELECT " + strings.Join(src, ", ") + " FROM " + s.from
	return s
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func (s *source) readKey(ctx context.Context, db querier, query string, args ...any) (copier.Key, bool, error) {
	raw := make([]sql.RawBytes, len(s.keyCols))
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	rows, err := db.QueryContext(ctx, query, args...)
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

// boundary reads the key `size` rows after `after`, up to upTo.
func (s *source) boundary(ctx context.Context, db querier, after, upTo copier.Key, size int) (copier.Key, bool, error) {
	where, args := s.src.where(after, upTo)
	return s.readKey(ctx, db, "SELECT "+s.keyList+" FROM "+s.from+" WHERE "+where+" ORDER BY "+s.asc+" LIMIT 1 OFFSET ?", append(args, size-1)...)
}

func (s *source) Max(ctx context.Context) (copier.Key, bool, error) {
	return s.readKey(ctx, s.e.data, "SELECT "+s.keyList+" FROM "+s.from+" ORDER BY "+s.desc+" LIMIT 1")
}

func (s *source) Boundary(ctx context.Context, after copier.Key, size int, max copier.Key) (copier.Key, bool, error) {
	end, ok, err := s.boundary(ctx, s.e.data, after, max, size)
	if err != nil || !ok {
		return max, true, err
	}
	return end, false, nil
}

func (s *source) Copy(ctx context.Context, after, end copier.Key) (n int64, err error) {
	err = s.e.inTx(ctx, func(tx *sql.Tx) error {
		n, err = s.copyKeys(ctx, tx, func(k keySide) (string, []any) { return k.where(after, end) })
		return err
	})
	return n, err
}

// inTx runs fn in a transaction on the data connections, again if the
// server rolled it back for a deadlock or a lock wait timeout: the copy's
// locking reads and the applier compete with the application for row locks.
func (e *Engine) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	return retryTransient(ctx, func() error {
		tx, err := e.data.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := fn(tx); err != nil {
			return err
		}
		return tx.Commit()
	})
}

// keyPick selects source rows by a predicate on the key, rendered for a
// given key side.
type keyPick func(keySide) (string, []any)

// copyKeys copies the source rows pick selects. Rows read from the source
// are the newest owners of their unique values: older holders in the
// shadow are displaced (displace.go) and the copy runs once more.
func (s *source) copyKeys(ctx context.Context, tx *sql.Tx, pick keyPick) (int64, error) {
	where, args := pick(s.src)
	n, err := s.copyWhere(ctx, tx, where, args)
	var c *errConflict
	if !errors.As(err, &c) {
		return n, err
	}
	moved, derr := s.e.displaceForKeys(ctx, tx, s, pick)
	if derr != nil {
		return 0, derr
	}
	if !moved {
		return 0, err // a unique index osc cannot judge (over new columns)
	}
	m, err := s.copyWhere(ctx, tx, where, args)
	return n + m, err
}

// copyWhere copies the source rows matching where (a predicate on the
// source's key) with a locking read.
func (s *source) copyWhere(ctx context.Context, tx *sql.Tx, where string, args []any) (int64, error) {
	res, err := tx.ExecContext(ctx, s.insert+" WHERE "+where+" LOCK IN SHARE MODE", args...)
	if err != nil {
		return 0, err
	}
	if err := s.e.statementWarnings(ctx, tx, "copying rows"); err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// SnapshotCopy is false: chunks read the latest rows under shared locks,
// concurrently with the applier.
func (e *Engine) SnapshotCopy() bool { return false }

// EndCopy has nothing to release.
func (e *Engine) EndCopy(context.Context) error { return nil }
