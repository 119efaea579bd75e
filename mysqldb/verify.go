package mysqldb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/verify"
)

// verifyExprs returns how to render a mapped column for comparison on each
// side, when the ALTER keeps its values' text: the same definition, an
// integer of another width, or a string in another charset or collation
// (compared in utf8mb4). Other type changes (a DECIMAL scale, a BINARY
// length) legitimately change the text and are not compared.
func verifyExprs(m colPair) (src, dst string, ok bool) {
	s, d := q(m.src.Name), q(m.dst.Name)
	switch {
	case m.src.ColumnType == m.dst.ColumnType && m.src.Collation == m.dst.Collation:
		return s, d, true
	case integerTypes[m.src.DataType] && integerTypes[m.dst.DataType]:
		return s, d, true
	case m.src.Charset != "" && m.dst.Charset != "" && m.src.DataType == m.dst.DataType:
		return "CONVERT(" + s + " USING utf8mb4)", "CONVERT(" + d + " USING utf8mb4)", true
	}
	return "", "", false
}

// hashQuery counts a side's rows and folds a 64-bit hash of each row's
// compared values. Each value is length-prefixed so that no two rows
// render alike, and NULL is distinct from every value.
func hashQuery(table string, exprs []string) string {
	parts := make([]string, len(exprs))
	for i, x := range exprs {
		parts[i] = "IFNULL(CONCAT(LENGTH(" + x + "), ':', " + x + "), 'N')"
	}
	row := "CONCAT(" + strings.Join(parts, ", ',', ") + ")"
	return "SELECT COUNT(*), COALESCE(BIT_XOR(CAST(CONV(LEFT(MD5(" + row + "), 16), 16, 10) AS UNSIGNED)), 0) FROM " + table
}

// view is a consistent-snapshot transaction that reads the source and the
// shadow as they were when the applier was parked at a barrier.
type view struct {
	s                *source
	conn             *sql.Conn
	srcHash, dstHash string
}

// VerifyView blocks writes to the table (LOCK TABLES ... READ), drains
// the stream so the shadow holds every change, opens a consistent snapshot
// seeing both tables at that point, then unlocks and releases the applier.
// The lock is held for the drain only, within lockTimeout.
func (e *Engine) VerifyView(ctx context.Context, lockTimeout time.Duration, drain func(context.Context) error, release func()) (verify.View, error) {
	defer release()
	deadline := time.Now().Add(lockTimeout)
	a, done, err := e.lockConn(ctx, lockTimeout)
	if err != nil {
		return nil, err
	}
	defer done()
	if _, err := a.ExecContext(ctx, "LOCK TABLES "+e.qt(e.names.table)+" READ"); err != nil {
		return nil, fmt.Errorf("locking %s for a consistent view: %w", e.qt(e.names.table), err)
	}
	// Unlock before the connection goes back to the pool, on every path.
	defer a.ExecContext(context.WithoutCancel(ctx), "UNLOCK TABLES")
	dctx, cancel := context.WithDeadline(ctx, deadline)
	err = drain(dctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("draining the change stream for a consistent view: %w", err)
	}
	if err := e.checkWhole(); err != nil {
		return nil, err
	}
	c, err := e.data.Conn(ctx)
	if err != nil {
		return nil, err
	}
	for _, stmt := range []string{"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "START TRANSACTION WITH CONSISTENT SNAPSHOT"} {
		if _, err := c.ExecContext(ctx, stmt); err != nil {
			c.Close()
			return nil, fmt.Errorf("opening a consistent snapshot: %w", err)
		}
	}
	v := &view{s: e.rows, conn: c}
	var src, dst []string
	for _, m := range e.mapping {
		if s, d, ok := verifyExprs(m); ok {
			src, dst = append(src, s), append(dst, d)
		}
	}
	v.srcHash = hashQuery(v.s.from, src)
	v.dstHash = hashQuery(e.qt(e.names.shadow), dst)
	return v, nil
}

func (v *view) Boundary(ctx context.Context, after copier.Key, size int) (copier.Key, bool, error) {
	end, ok, err := v.s.boundary(ctx, v.conn, after, nil, size)
	return end, !ok, err
}

func (v *view) Differs(ctx context.Context, c verify.Chunk) (bool, error) {
	var n [2]int64
	var h [2]uint64
	for i, side := range []struct {
		query string
		key   keySide
	}{{v.srcHash, v.s.src}, {v.dstHash, v.s.dst}} {
		where, args := side.key.where(c.After, c.End)
		if err := v.conn.QueryRowContext(ctx, side.query+" WHERE "+where, args...).Scan(&n[i], &h[i]); err != nil {
			return false, fmt.Errorf("checksumming %s: %w", c, err)
		}
	}
	return n[0] != n[1] || h[0] != h[1], nil
}

func (v *view) Close() error {
	v.conn.ExecContext(context.Background(), "ROLLBACK")
	return v.conn.Close()
}

// Repair replaces the shadow's rows in the chunk with a fresh locking copy
// from the source. Like the copy, it may read rows newer than the applier
// has reached; later events bring them along.
func (e *Engine) Repair(ctx context.Context, c verify.Chunk) error {
	s := e.rows
	return e.inTx(ctx, func(tx *sql.Tx) error {
		where, args := s.dst.where(c.After, c.End)
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+e.qt(e.names.shadow)+" WHERE "+where, args...); err != nil {
			return err
		}
		_, err := s.copyKeys(ctx, tx, func(k keySide) (string, []any) { return k.where(c.After, c.End) })
		return err
	})
}
