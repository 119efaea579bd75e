package pgdb

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/verify"
)

// lockTx begins a transaction which holds SHARE UPDATE EXCLUSIVE on the
// table and the shadow, and whose later lock waits end after timeout.
// That lock waits for an autovacuum or ANALYZE of either and keeps new ones
// away, without blocking the application's reads and writes. Otherwise the
// stronger lock the caller takes next would wait for it, and every write
// would queue behind that request meanwhile. An autovacuum in the way is
// cancelled by the deadlock check, a deadlock_timeout after the wait
// begins, so this wait lasts up to twice deadlock_timeout even when the
// timeout is shorter: with both at 1s, the wait timed out as the
// autovacuum of a freshly copied shadow was being cancelled, and the
// attempt was lost.
func (e *Engine) lockTx(ctx context.Context, timeout time.Duration) (pgx.Tx, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', greatest($1, 2 * setting::bigint)::text, true)
		FROM pg_settings WHERE name = 'deadlock_timeout'`, timeout.Milliseconds()); err != nil {
		tx.Rollback(ctx)
		return nil, err
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE ONLY "+e.qt(e.names.shadow)+", ONLY "+e.qt(e.src.name)+" IN SHARE UPDATE EXCLUSIVE MODE"); err != nil {
		tx.Rollback(ctx)
		return nil, e.lockErr("waiting for maintenance (autovacuum, ANALYZE) on the table or the shadow", err)
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", timeout.Milliseconds())); err != nil {
		tx.Rollback(ctx)
		return nil, err
	}
	return tx, nil
}

// isLockTimeout reports a lock wait that ended at lock_timeout.
func isLockTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}

// lockErr says that a lock was not granted in time, which the cut-over
// policy retries.
func (e *Engine) lockErr(what string, err error) error {
	if isLockTimeout(err) {
		return fmt.Errorf("%s: lock not granted within the lock timeout (a long transaction holds the table?): %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// VerifyView blocks writes to the table (SHARE lock, which waits for
// in-flight writers), drains the stream so that the shadow holds every
// change, and takes a REPEATABLE READ snapshot on another connection
// seeing both tables at that point; then it unlocks and lets the applier
// go on. The lock is held for the drain only, within lockTimeout.
func (e *Engine) VerifyView(ctx context.Context, lockTimeout time.Duration, drain func(context.Context) error, release func()) (verify.View, error) {
	defer release()
	lock, err := e.lockTx(ctx, lockTimeout)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(lockTimeout)
	defer lock.Rollback(context.WithoutCancel(ctx))
	if _, err := lock.Exec(ctx, "LOCK TABLE ONLY "+e.qt(e.src.name)+" IN SHARE MODE"); err != nil {
		return nil, e.lockErr("locking the table for a consistent view", err)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	err = drain(dctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("draining the change stream for a consistent view: %w", err)
	}
	// One snapshot per side, both taken while the table is still locked,
	// so that the two sides of a chunk are hashed at once.
	st := e.sql
	src, dst := st.verifyExprs()
	v := &pgView{e: e, hash: [2]string{src, dst}}
	for i := range v.tx {
		tx, err := e.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err == nil {
			// The first query takes the snapshot.
			_, err = tx.Exec(ctx, "SELECT 1")
		}
		if err != nil {
			if tx != nil {
				tx.Rollback(ctx)
			}
			v.Close()
			return nil, err
		}
		v.tx[i] = tx
	}
	return v, nil
}

type pgView struct {
	e    *Engine
	tx   [2]pgx.Tx // the source's side, the shadow's side
	hash [2]string // each side's row hash expression
}

func (v *pgView) Boundary(ctx context.Context, after copier.Key, size int) (copier.Key, bool, error) {
	st := v.e.sql
	args := append(keyArgs(after), size-1)
	k, err := scanKey(v.tx[0].QueryRow(ctx, fmt.Sprintf("SELECT %s FROM ONLY %s WHERE %s ORDER BY %s LIMIT 1 OFFSET $%d",
		st.keyText(), st.src, st.rangeWhere(st.keyList(), after != nil, false), st.keyOrder(false), len(args)), args...), len(st.keyCols))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, true, nil
	}
	return k, false, err
}

func (v *pgView) Differs(ctx context.Context, c verify.Chunk) (bool, error) {
	st := v.e.sql
	args := keyArgs(c.After, c.End)
	sides := [2]struct {
		what, query string
		n           int64
		h           string
		err         error
	}{
		{what: "the table", query: hashQuery(st.src, v.hash[0], st.rangeWhere(st.keyList(), c.After != nil, c.End != nil))},
		{what: "the shadow table", query: hashQuery(st.shadow, v.hash[1], st.rangeWhere(st.shadowKey, c.After != nil, c.End != nil))},
	}
	var wg sync.WaitGroup
	for i := range sides {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &sides[i]
			if err := v.tx[i].QueryRow(ctx, s.query, args...).Scan(&s.n, &s.h); err != nil {
				s.err = fmt.Errorf("checksumming %s: %w", s.what, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(sides[0].err, sides[1].err); err != nil {
		return false, err
	}
	return sides[0].n != sides[1].n || sides[0].h != sides[1].h, nil
}

type bucket struct {
	n int64
	h string
}

// Sweep finds the chunks that differ when the key is one integer column:
// it hashes each side in one scan, grouped into buckets of consecutive key
// values (key >> shift); a range query per chunk walks the index, and for
// chunks of 10,000 pgbench rows cost about 2.5 times what a scan does per
// row. Both sides bucket by the same
// function of the key, and bucket b holds exactly the keys from b<<shift
// to (b<<shift)|mask, so a bucket that differs is repaired as that range.
// The shift makes about rows/size buckets over the table's key span,
// whatever the keys' density.
func (v *pgView) Sweep(ctx context.Context, size int) ([]verify.Chunk, int, bool, error) {
	st := v.e.sql
	if len(st.keyCols) != 1 || !integerTypes[st.keyTypes[0]] {
		return nil, 0, false, nil
	}
	var lo, hi *int64
	var est float64
	err := v.tx[0].QueryRow(ctx, "SELECT min("+st.keyCols[0]+")::int8, max("+st.keyCols[0]+")::int8, "+
		"(SELECT reltuples FROM pg_class WHERE oid = $1::regclass) FROM ONLY "+st.src, st.src).Scan(&lo, &hi, &est)
	if err != nil {
		return nil, 0, false, fmt.Errorf("reading the table's key range: %w", err)
	}
	if lo == nil || est < 1 {
		// An empty or never analyzed table: the chunked comparison needs
		// no row count.
		return nil, 0, false, nil
	}
	shift := sweepShift(*lo, *hi, est, size)
	keys := [2]string{st.keyCols[0], st.shadowKey}
	tables := [2]string{st.src, st.shadow}
	var sides [2]map[int64]bucket
	var errs [2]error
	var wg sync.WaitGroup
	for i := range sides {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sides[i], errs[i] = v.sweepSide(ctx, i, fmt.Sprintf("SELECT %s::int8 >> %d, count(*), coalesce(sum(%s), 0)::text FROM ONLY %s GROUP BY 1",
				keys[i], shift, v.hash[i], tables[i]))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return nil, 0, false, err
	}
	all := map[int64]bool{}
	for _, side := range sides {
		for b := range side {
			all[b] = true
		}
	}
	var differ []verify.Chunk
	for _, b := range slices.Sorted(maps.Keys(all)) {
		if sides[0][b] != sides[1][b] {
			differ = append(differ, bucketChunk(b, shift))
		}
	}
	return differ, len(all), true, nil
}

// sweepShift is the bucket width as a power of two: at least the key span
// over the wanted number of buckets, at most 2^62.
func sweepShift(lo, hi int64, rows float64, size int) uint {
	buckets := uint64(max(1, rows/float64(max(size, 1))))
	span := uint64(hi) - uint64(lo) + 1 // wraps to 0 for the whole int8 range
	width := span / buckets
	if span%buckets != 0 {
		width++
	}
	if span == 0 {
		width = 1 << 62
	}
	return uint(min(bits.Len64(width-1), 62))
}

// bucketChunk is the key range (After, End] of bucket b.
func bucketChunk(b int64, shift uint) verify.Chunk {
	first := b << shift
	c := verify.Chunk{End: copier.Key{strconv.FormatInt(first|(1<<shift-1), 10)}}
	if first != math.MinInt64 {
		c.After = copier.Key{strconv.FormatInt(first-1, 10)}
	}
	return c
}

func (v *pgView) sweepSide(ctx context.Context, side int, query string) (map[int64]bucket, error) {
	// Without statistics on the bucket expression the planner expects a
	// group per row and sorts them, spilling to disk (0.9 s for 1M pgbench
	// rows), where hashing a few hundred groups takes 0.2 s.
	if _, err := v.tx[side].Exec(ctx, "SET LOCAL enable_sort = off"); err != nil {
		return nil, err
	}
	rows, err := v.tx[side].Query(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("checksumming %s: %w", [2]string{"the table", "the shadow table"}[side], err)
	}
	defer rows.Close()
	out := map[int64]bucket{}
	for rows.Next() {
		var b int64
		var x bucket
		if err := rows.Scan(&b, &x.n, &x.h); err != nil {
			return nil, err
		}
		out[b] = x
	}
	return out, rows.Err()
}

func (v *pgView) Close() error {
	for _, tx := range v.tx {
		if tx != nil {
			tx.Rollback(context.Background())
		}
	}
	return nil
}
