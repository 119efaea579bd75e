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
//  1. A creates the sentry table under the name the original is renamed
//     to (names.swap), and locks the table and the sentry for write, so no
//     write to the table commits;
//  2. the stream is drained up to a barrier written after the lock;
//  3. B issues RENAME TABLE t TO swap, shadow TO t, which queues on A's lock;
//  4. once A sees B waiting, A drops the sentry and unlocks: B's rename is
//     first in the queue and runs before any application write.
//
// If A dies, its locks go but the sentry stays, so B's rename fails on the
// existing name; if B fails, A unlocks. Either way the table is never
// missing and never swapped half-synced.
//
// The server takes a RENAME's metadata locks in name order. The sentry's
// name extends the table's, so it sorts after it: B is waiting on the
// table itself, not on the sentry, when A sees it waiting. With a sentry
// that sorts first, B would wait on the sentry, and after the drop an
// application write already queued on the table could beat B to it and
// commit into the original after the barrier: a lost write.
//
// Everything A does — waiting for the lock, draining, waiting for B — fits
// in lockTimeout, so no application write waits longer than that.
func (e *Engine) Swap(ctx context.Context, lockTimeout time.Duration, drain func(context.Context) error) (err error) {
	deadline := time.Now().Add(lockTimeout)
	a, doneA, err := e.lockConn(ctx, lockTimeout)
	if err != nil {
		return err
	}
	defer doneA()
	b, doneB, err := e.lockConn(ctx, lockTimeout)
	if err != nil {
		return err
	}
	defer doneB()
	var bID int64
	if err := b.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&bID); err != nil {
		return err
	}
	n := e.names
	if _, err := a.ExecContext(ctx, "CREATE TABLE "+e.qt(n.swap)+" (id INT PRIMARY KEY) ENGINE=InnoDB COMMENT='"+sentryComment+"'"); err != nil {
		return fmt.Errorf("creating the cut-over sentry %s: %w", e.qt(n.swap), err)
	}
	// Until the sentry is dropped, a failure unlocks and drops the sentry.
	bg := context.WithoutCancel(ctx)
	defer func() {
		if err == nil {
			return
		}
		a.ExecContext(bg, "UNLOCK TABLES")
		if derr := e.dropSentry(bg); derr != nil {
			e.log.Error("dropping the cut-over sentry failed; drop it by hand once you checked it is empty", zap.String("table", e.qt(n.swap)), zap.Error(derr))
		}
	}()

	if _, err := a.ExecContext(ctx, "LOCK TABLES "+e.qt(n.table)+" WRITE, "+e.qt(n.swap)+" WRITE"); err != nil {
		return fmt.Errorf("locking %s: %w", e.qt(n.table), err)
	}
	lockedAt := time.Now()
	dctx, cancel := context.WithDeadline(ctx, deadline)
	err = drain(dctx)
	cancel()
	if err != nil {
		return fmt.Errorf("draining the change stream under the lock: %w", err)
	}
	if err := e.checkWhole(); err != nil {
		return err
	}

	renamed := make(chan error, 1)
	go func() {
		_, err := b.ExecContext(bg, "RENAME TABLE "+e.qt(n.table)+" TO "+e.qt(n.swap)+", "+e.qt(n.shadow)+" TO "+e.qt(n.table))
		renamed <- err
	}()
	if err := e.waitForRename(ctx, a, bID, deadline, renamed); err != nil {
		// Unlocking with the sentry in place makes a late rename fail.
		a.ExecContext(bg, "UNLOCK TABLES")
		if rerr := <-renamed; rerr == nil {
			return e.finishSwap(bg) // the rename went through after all
		}
		return err
	}
	// From the drop on, B's rename decides the outcome: whatever happens to
	// A (an error, a cancelled run, a lost connection), its lock goes and
	// the rename runs. So wait for B and report what it did.
	_, derr := a.ExecContext(bg, "DROP TABLE "+e.qt(n.swap))
	a.ExecContext(bg, "UNLOCK TABLES")
	held := time.Since(lockedAt)
	rerr := <-renamed
	if rerr != nil {
		// RENAME TABLE is atomic; but a lost connection can hide one that
		// happened.
		if moved, cerr := e.renameHappened(bg); cerr != nil || !moved {
			return errors.Join(fmt.Errorf("renaming the tables: %w", rerr), derr)
		}
	}
	e.log.Info("tables swapped", zap.Duration("lock_held", held))
	return e.finishSwap(bg)
}

// lockConn is a connection whose lock waits end after timeout (rounded up
// to whole seconds, the server's unit). done restores the server's default
// before the connection goes back to the pool.
func (e *Engine) lockConn(ctx context.Context, timeout time.Duration) (c *sql.Conn, done func(), err error) {
	c, err = e.meta.Conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	secs := max(1, int(math.Ceil(timeout.Seconds())))
	if _, err := c.ExecContext(ctx, fmt.Sprintf("SET SESSION lock_wait_timeout = %d", secs)); err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, func() {
		c.ExecContext(context.Background(), "SET SESSION lock_wait_timeout = DEFAULT")
		c.Close()
	}, nil
}

// finishSwap gives the original its documented name. A failure here leaves
// a complete swap, with the original under the sentry's name.
func (e *Engine) finishSwap(ctx context.Context) error {
	if _, err := e.meta.ExecContext(ctx, "RENAME TABLE "+e.qt(e.names.swap)+" TO "+e.qt(e.names.old)); err != nil {
		e.log.Warn("the tables are swapped, but renaming the original to its old-table name failed; it is kept as "+e.qt(e.names.swap),
			zap.Error(err))
	}
	return nil
}

// waitForRename waits until B's RENAME is queued on A's lock.
func (e *Engine) waitForRename(ctx context.Context, a *sql.Conn, bID int64, deadline time.Time, renamed chan error) error {
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
		case <-time.After(2 * time.Millisecond):
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
	swap, err := e.tableExists(ctx, e.names.swap)
	return !shadow && swap, err
}

// dropSentry drops the sentry's name only if it holds osc's sentry, never
// a renamed original.
func (e *Engine) dropSentry(ctx context.Context) error {
	var comment string
	err := e.meta.QueryRowContext(ctx, "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
		e.cfg.Database, e.names.swap).Scan(&comment)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if comment != sentryComment {
		return nil
	}
	_, err = e.meta.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.qt(e.names.swap))
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
