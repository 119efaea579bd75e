package mysqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap"
)

const sentryComment = "osc cut-over sentry"

// Swap is one cut-over attempt with the two-connection sentry algorithm,
// because MariaDB refuses RENAME TABLE under LOCK TABLES:
//
//  1. A creates the sentry table under the old table's name and locks the
//     table and the sentry for write, so no write to the table commits;
//  2. the stream is drained up to a barrier written after the lock;
//  3. B issues RENAME TABLE t TO old, shadow TO t, which queues on A's lock;
//  4. once A sees B waiting, A drops the sentry and unlocks: B's rename is
//     first in the queue and runs before any application write.
//
// If A dies, its locks go but the sentry stays, so B's rename fails on the
// existing name; if B fails, A unlocks. Either way the table is never
// missing and never swapped half-synced. Every wait is bounded by
// lock_wait_timeout on both sessions.
func (e *Engine) Swap(ctx context.Context, lockTimeout time.Duration, drain func(context.Context) error) (err error) {
	secs := max(1, int(math.Ceil(lockTimeout.Seconds())))
	a, err := e.meta.Conn(ctx)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := e.meta.Conn(ctx)
	if err != nil {
		return err
	}
	defer b.Close()
	for _, c := range []*sql.Conn{a, b} {
		if _, err := c.ExecContext(ctx, fmt.Sprintf("SET SESSION lock_wait_timeout = %d", secs)); err != nil {
			return err
		}
	}
	var bID int64
	if err := b.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&bID); err != nil {
		return err
	}
	n := e.names
	if _, err := a.ExecContext(ctx, "CREATE TABLE "+e.qt(n.old)+" (id INT PRIMARY KEY) ENGINE=InnoDB COMMENT='"+sentryComment+"'"); err != nil {
		return fmt.Errorf("creating the cut-over sentry %s: %w", e.qt(n.old), err)
	}
	// On any failure below: unlock, then drop the sentry if it is still ours.
	bg := context.WithoutCancel(ctx)
	locked := false
	defer func() {
		if err == nil {
			return
		}
		if locked {
			a.ExecContext(bg, "UNLOCK TABLES")
		}
		if derr := e.dropSentry(bg); derr != nil {
			e.log.Error("dropping the cut-over sentry failed; drop it by hand once you checked it is empty", zap.String("table", e.qt(n.old)), zap.Error(derr))
		}
	}()

	if _, err := a.ExecContext(ctx, "LOCK TABLES "+e.qt(n.table)+" WRITE, "+e.qt(n.old)+" WRITE"); err != nil {
		return fmt.Errorf("locking %s: %w", e.qt(n.table), err)
	}
	locked = true
	lockedAt := time.Now()
	dctx, cancel := context.WithTimeout(ctx, lockTimeout)
	err = drain(dctx)
	cancel()
	if err != nil {
		return fmt.Errorf("draining the change stream under the lock: %w", err)
	}

	renamed := make(chan error, 1)
	go func() {
		_, err := b.ExecContext(bg, "RENAME TABLE "+e.qt(n.table)+" TO "+e.qt(n.old)+", "+e.qt(n.shadow)+" TO "+e.qt(n.table))
		renamed <- err
	}()
	if err := e.waitForRename(ctx, a, bID, lockTimeout-time.Since(lockedAt), renamed); err != nil {
		// Unlocking with the sentry in place makes a late rename fail.
		a.ExecContext(bg, "UNLOCK TABLES")
		locked = false
		if rerr := <-renamed; rerr == nil {
			return nil // the rename went through after all
		}
		return err
	}
	if _, err := a.ExecContext(ctx, "DROP TABLE "+e.qt(n.old)); err != nil {
		return fmt.Errorf("dropping the sentry under the lock: %w", err)
	}
	if _, err := a.ExecContext(ctx, "UNLOCK TABLES"); err != nil {
		return fmt.Errorf("unlocking: %w", err)
	}
	locked = false
	e.log.Info("table locked for cut-over", zap.Duration("held", time.Since(lockedAt)))
	if err := <-renamed; err != nil {
		// RENAME TABLE is atomic: if it failed, nothing moved; but a lost
		// connection can hide a rename that happened.
		if moved, cerr := e.renameHappened(bg); cerr == nil && moved {
			return nil
		}
		return fmt.Errorf("renaming the tables: %w", err)
	}
	return nil
}

// waitForRename waits until B's RENAME is queued on A's lock.
func (e *Engine) waitForRename(ctx context.Context, a *sql.Conn, bID int64, budget time.Duration, renamed chan error) error {
	deadline := time.Now().Add(budget)
	for time.Now().Before(deadline) {
		select {
		case err := <-renamed:
			renamed <- err // hand it back to the caller
			if err == nil {
				return errors.New("the rename finished while the table was locked, which should be impossible")
			}
			return fmt.Errorf("renaming the tables: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		var waiting int
		err := a.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.PROCESSLIST
			WHERE ID = ? AND STATE LIKE '%metadata lock%' AND INFO LIKE 'RENAME%'`, bID).Scan(&waiting)
		if err != nil {
			return err
		}
		if waiting > 0 {
			return nil
		}
	}
	return fmt.Errorf("the rename did not queue within the lock timeout")
}

func (e *Engine) renameHappened(ctx context.Context) (bool, error) {
	shadow, err := e.tableExists(ctx, e.names.shadow)
	if err != nil {
		return false, err
	}
	old, err := e.tableExists(ctx, e.names.old)
	return !shadow && old, err
}

// dropSentry drops the old-table name only if it holds osc's sentry, never
// a renamed original.
func (e *Engine) dropSentry(ctx context.Context) error {
	var comment string
	err := e.meta.QueryRowContext(ctx, "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
		e.cfg.Database, e.names.old).Scan(&comment)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if comment != sentryComment {
		return nil
	}
	_, err = e.meta.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.qt(e.names.old))
	return err
}

// Cleanup drops what the run created. After a swap the shadow is the
// table; before it, the shadow is dropped and the original was never
// touched.
func (e *Engine) Cleanup(ctx context.Context, swapped, keepOld bool) error {
	if e.reader != nil {
		e.reader.Close()
		e.reader = nil
	}
	var errs []error
	drop := func(name string) {
		if _, err := e.meta.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.qt(name)); err != nil {
			errs = append(errs, fmt.Errorf("dropping %s: %w", e.qt(name), err))
		}
	}
	if swapped {
		if !keepOld {
			drop(e.names.old)
		}
	} else {
		if err := e.dropSentry(ctx); err != nil {
			errs = append(errs, err)
		}
		if e.createdShadow {
			drop(e.names.shadow)
		}
	}
	if e.createdChangelog {
		drop(e.names.changelog)
	}
	return errors.Join(errs...)
}
