package mysqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
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
// compared values: two CRCs (CRC32 and CRC32C where the server has it,
// else the first 64 bits of MD5, about twice as slow) of the values joined
// by '#', plus a NULL flag per value that can be NULL on either side
// (nullable), so that NULL differs from every value; NOT NULL columns
// need none, and the flags cost a third of the hash. A value holding '#'
// could shift into its neighbour and hash alike, which a copy that moves
// bytes between columns would need to do to go unnoticed.
func hashQuery(table string, exprs []string, nullable []bool, crc32c bool) string {
	var nulls []string
	for i, x := range exprs {
		if nullable[i] {
			nulls = append(nulls, "ISNULL("+x+")")
		}
	}
	row := "CONCAT_WS('#', " + strings.Join(exprs, ", ") + ")"
	if len(nulls) > 0 {
		row = "CONCAT_WS('#', " + strings.Join(exprs, ", ") + ", CONCAT(" + strings.Join(nulls, ", ") + "))"
	}
	hash := "CAST(CONV(LEFT(MD5(" + row + "), 16), 16, 10) AS UNSIGNED)"
	if crc32c {
		hash = "CRC32(" + row + ") << 32 | CRC32C(" + row + ")"
	}
	return "SELECT COUNT(*), COALESCE(BIT_XOR(" + hash + "), 0) FROM " + table
}

// view reads the source and the shadow as they were when the applier was
// parked at a barrier: one consistent-snapshot transaction per side, both
// opened under the same lock, so that the two sides of a chunk are hashed
// at once.
type view struct {
	s     *source
	conns [2]*sql.Conn // the source's side, the shadow's side
	ids   [2]int64     // their server ids, to kill a cancelled checksum
	hash  [2]string
}

// VerifyView blocks writes to the table (LOCK TABLES ... READ), drains
// the stream so the shadow holds every change, opens consistent snapshots
// seeing both tables at that point, then unlocks and releases the applier.
// The lock is held for the drain only, within lockTimeout.
func (e *Engine) VerifyView(ctx context.Context, lockTimeout time.Duration, drain func(context.Context) error, release func()) (_ verify.View, err error) {
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
	v := &view{s: e.rows}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	for i := range v.conns {
		c, err := e.data.Conn(ctx)
		if err != nil {
			return nil, err
		}
		v.conns[i] = c
		if v.ids[i], err = connID(ctx, c); err != nil {
			return nil, err
		}
		for _, stmt := range []string{"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "START TRANSACTION WITH CONSISTENT SNAPSHOT"} {
			if _, err := c.ExecContext(ctx, stmt); err != nil {
				return nil, fmt.Errorf("opening a consistent snapshot: %w", err)
			}
		}
	}
	var src, dst []string
	var nullable []bool
	for _, m := range e.mapping {
		if s, d, ok := verifyExprs(m); ok {
			src, dst = append(src, s), append(dst, d)
			nullable = append(nullable, m.src.Nullable || m.dst.Nullable)
		}
	}
	crc32c := v.conns[0].QueryRowContext(ctx, "SELECT CRC32C('')").Scan(new(int64)) == nil
	v.hash = [2]string{hashQuery(v.s.from, src, nullable, crc32c), hashQuery(e.qt(e.names.shadow), dst, nullable, crc32c)}
	return v, nil
}

func (v *view) Boundary(ctx context.Context, after copier.Key, size int) (copier.Key, bool, error) {
	end, ok, err := v.s.boundary(ctx, v.conns[0], after, nil, size)
	return end, !ok, err
}

func (v *view) Differs(ctx context.Context, c verify.Chunk) (bool, error) {
	var n [2]int64
	var h [2]uint64
	var errs [2]error
	var wg sync.WaitGroup
	for i, key := range []keySide{v.s.src, v.s.dst} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			where, args := key.where(c.After, c.End)
			// A whole-table checksum runs as long as a scan of the table,
			// holding back purge meanwhile: kill it if the run ends.
			if err := v.s.e.killOnCancel(ctx, v.ids[i], func(ctx context.Context) error {
				return v.conns[i].QueryRowContext(ctx, v.hash[i]+" WHERE "+where, args...).Scan(&n[i], &h[i])
			}); err != nil {
				errs[i] = fmt.Errorf("checksumming %s: %w", c, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return false, err
	}
	return n[0] != n[1] || h[0] != h[1], nil
}

func (v *view) Close() error {
	for _, c := range v.conns {
		if c != nil {
			c.ExecContext(context.Background(), "ROLLBACK")
			c.Close()
		}
	}
	return nil
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
