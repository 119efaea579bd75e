package pgdb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/verify"
)

// lockTx begins a transaction whose lock waits end after timeout, and
// which holds SHARE UPDATE EXCLUSIVE on the table and the shadow. That
// lock waits for an autovacuum or ANALYZE of either (until the deadlock
// check cancels it, a deadlock_timeout later) and keeps new ones away,
// without blocking the application's writes. Otherwise the stronger lock
// the caller takes next would wait for it, and every write would queue
// behind that request meanwhile.
func (e *Engine) lockTx(ctx context.Context, timeout time.Duration) (pgx.Tx, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", timeout.Milliseconds())); err != nil {
		tx.Rollback(ctx)
		return nil, err
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE ONLY "+e.qt(e.names.shadow)+", ONLY "+e.qt(e.src.name)+" IN SHARE UPDATE EXCLUSIVE MODE"); err != nil {
		tx.Rollback(ctx)
		return nil, e.lockErr("waiting for maintenance (autovacuum, ANALYZE) on the table or the shadow", err)
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
	deadline := time.Now().Add(lockTimeout)
	lock, err := e.lockTx(ctx, lockTimeout)
	if err != nil {
		return nil, err
	}
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
	v := &pgView{e: e, row: [2]string{src, dst}}
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
	e   *Engine
	tx  [2]pgx.Tx // the source's side, the shadow's side
	row [2]string // each side's compared row expression
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
		{what: "the table", query: hashQuery(st.src, v.row[0], st.rangeWhere(st.keyList(), c.After != nil, c.End != nil))},
		{what: "the shadow table", query: hashQuery(st.shadow, v.row[1], st.rangeWhere(st.shadowKey, c.After != nil, c.End != nil))},
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

func (v *pgView) Close() error {
	for _, tx := range v.tx {
		if tx != nil {
			tx.Rollback(context.Background())
		}
	}
	return nil
}
