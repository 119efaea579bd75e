package pgdb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/replication"
	"github.com/osc-dev/osc/replication/pgoutput"
)

// StartCapture publishes the table and starts streaming from a new
// temporary logical slot. The publication must exist before the slot:
// pgoutput looks publications up as of each change's position. The slot
// exports its snapshot, which a transaction of osc's holds for the copy:
// the copy reads exactly the transactions committed before the slot's
// consistent point, and the stream carries exactly those committed after
// it, which the applier replays once the copy is done.
func (e *Engine) StartCapture(ctx context.Context) (replication.Stream, error) {
	if _, err := e.pool.Exec(ctx, "CREATE PUBLICATION "+q(e.names.publication)+" FOR TABLE ONLY "+e.qt(e.src.name)); err != nil {
		return nil, fmt.Errorf("creating publication %s: %w", q(e.names.publication), err)
	}
	e.createdPublication = true
	var cols []pgoutput.Column
	for _, c := range e.src.replicated() {
		cols = append(cols, pgoutput.Column{Name: c.name, TypeOID: c.typeOID})
	}
	r, err := pgoutput.Start(ctx, pgoutput.Config{
		Conn:         e.replicationConnString(),
		Slot:         e.names.slot,
		Publication:  e.names.publication,
		Relation:     e.src.oid,
		Columns:      cols,
		MarkerPrefix: e.names.markerPrefix,
		Check:        e.checkSlotWAL,
		Snapshot:     e.holdSnapshot,
		Logger:       e.log.Named("pgoutput"),
	})
	if err != nil {
		e.snap.release(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("starting logical replication from slot %s: %w", e.names.slot, redactErr(err, e.cfg.Password))
	}
	e.reader = r
	e.warnCopyWAL(ctx)
	c, err := e.connect(ctx)
	if err != nil {
		return nil, err
	}
	e.apply = c
	return r, nil
}

// snapshot is the slot's exported snapshot, held for the copy by a
// REPEATABLE READ transaction on a connection of its own. The slot's name
// for it lapses at START_REPLICATION, so the holder exports it again
// under a name of its own, which the copy's transactions import for as
// long as the holder stays open. The holder's xmin holds back vacuum (of
// every table of the database) while it is open: EndCopy releases it as
// soon as the last chunk is copied, and every other exit path too.
type snapshot struct {
	mu    sync.Mutex
	conn  *pgx.Conn
	name  string // the holder's export, for SET TRANSACTION SNAPSHOT
	since time.Time
}

// current is the snapshot's name, or "" once it is released.
func (s *snapshot) current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.name
}

// release ends the holder's transaction and closes its connection; it
// reports how long the snapshot was held, and false if none was.
func (s *snapshot) release(ctx context.Context) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return 0, false
	}
	// The rollback returns once the server has dropped the transaction's
	// xmin; closing alone would leave that to the backend's exit.
	s.conn.Exec(ctx, "ROLLBACK")
	s.conn.Close(ctx)
	s.conn, s.name = nil, ""
	return time.Since(s.since), true
}

// holdSnapshot imports the slot's exported snapshot into a read-only
// REPEATABLE READ transaction that stays open until the copy ends, and
// exports it again for the copy's transactions. It runs before
// START_REPLICATION, while the slot's snapshot is still importable.
func (e *Engine) holdSnapshot(ctx context.Context, slotSnapshot string) error {
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	var name string
	// The holder is idle in its transaction for the whole copy: a
	// database or role setting must not end it.
	_, err = c.Exec(ctx, "SET idle_in_transaction_session_timeout = 0")
	if err == nil {
		_, err = c.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT "+lit(slotSnapshot))
	}
	if err == nil {
		err = c.QueryRow(ctx, "SELECT pg_export_snapshot()").Scan(&name)
	}
	if err != nil {
		c.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("holding the slot's snapshot for the copy: %w", err)
	}
	e.snap.mu.Lock()
	e.snap.conn, e.snap.name, e.snap.since = c, name, time.Now()
	e.snap.mu.Unlock()
	e.log.Info("holding the slot's snapshot for the copy (vacuum cannot remove rows it sees until the copy ends)",
		zap.Uint32("pid", c.PgConn().PID()), zap.String("snapshot", name))
	return nil
}

// copyWALFactor estimates the WAL the copy writes from the size of the
// table and its key index (pgbench_accounts: 236 MB for 128 + 21 MB).
const copyWALFactor = 1.6

// warnCopyWAL warns when the copy alone is likely to make the slot retain
// more WAL than --max-slot-wal-bytes: the stream is not consumed until the
// copy ends, so the slot keeps all WAL written meanwhile, the copy's own
// writes included.
func (e *Engine) warnCopyWAL(ctx context.Context) {
	if e.cfg.MaxSlotWALBytes <= 0 {
		return
	}
	var size int64
	err := e.pool.QueryRow(ctx, `SELECT pg_table_size(c.oid) + coalesce((SELECT pg_relation_size(i.indexrelid) FROM pg_index i
		WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident) ORDER BY i.indisprimary DESC LIMIT 1), 0)
		FROM pg_class c WHERE c.oid = $1`, e.src.oid).Scan(&size)
	estimate := int64(float64(size) * copyWALFactor)
	if err != nil || estimate <= e.cfg.MaxSlotWALBytes {
		return
	}
	e.log.Warn("the copy alone will likely make the slot retain more WAL than --max-slot-wal-bytes, which stops the run: the slot keeps all WAL written until the copy ends, the copy's own included; raise --max-slot-wal-bytes above this estimate plus what the server writes during the copy",
		zap.Int64("copy_wal_estimate_bytes", estimate), zap.Int64("max_slot_wal_bytes", e.cfg.MaxSlotWALBytes))
}

// checkSlotWAL ends the stream when the slot retains more WAL than allowed:
// the server keeps every segment the slot has not confirmed, and a slot
// left far behind can fill the disk.
func (e *Engine) checkSlotWAL(ctx context.Context) error {
	if e.cfg.MaxSlotWALBytes <= 0 {
		return nil
	}
	var retained int64
	err := e.pool.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, e.names.slot).Scan(&retained)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("replication slot %s disappeared", e.names.slot)
	}
	if err != nil {
		e.log.Warn("reading the slot's retained WAL", zap.Error(err))
		return nil
	}
	if retained > e.cfg.MaxSlotWALBytes {
		if e.snap.current() != "" {
			return fmt.Errorf("replication slot %s retains %d bytes of WAL, more than --max-slot-wal-bytes=%d: during the copy the slot keeps all WAL written since the copy began (the copy's own included); raise the limit above the table's size plus what the server writes during the copy, or rerun at a quieter time", e.names.slot, retained, e.cfg.MaxSlotWALBytes)
		}
		return fmt.Errorf("replication slot %s retains %d bytes of WAL, more than --max-slot-wal-bytes=%d: the applier is not keeping up with the write load; rerun at a quieter time or raise the limit", e.names.slot, retained, e.cfg.MaxSlotWALBytes)
	}
	return nil
}

// WriteMarker emits a transactional logical message, decoded in commit
// order after every transaction that committed before it. Its commit
// flushes the WAL (a non-transactional message would wait for the WAL
// writer, up to wal_writer_delay, before the stream could carry it).
func (e *Engine) WriteMarker(ctx context.Context, kind, value string) error {
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = local"); err != nil {
			return err
		}
		var lsn string
		if err := tx.QueryRow(ctx, "SELECT pg_logical_emit_message(true, $1, $2)::text", e.names.markerPrefix, kind+":"+value).Scan(&lsn); err != nil {
			return err
		}
		if l, err := pglogrepl.ParseLSN(lsn); err == nil {
			e.marks.add(uint64(l), time.Now())
		}
		return nil
	})
}

// dropCapture drops the publication and the slot; with sweep, also a slot
// some earlier run left active (the run's advisory lock proves no osc
// uses it).
func (e *Engine) dropCapture(ctx context.Context, sweep bool) error {
	if held, ok := e.snap.release(ctx); ok {
		e.log.Info("released the copy's snapshot", zap.Duration("held", held))
	}
	if e.reader != nil {
		e.reader.Close()
		e.reader = nil
	}
	var errs []error
	if sweep || e.createdPublication {
		var existed bool
		if sweep {
			e.pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)", e.names.publication).Scan(&existed)
		}
		if _, err := e.pool.Exec(ctx, "DROP PUBLICATION IF EXISTS "+q(e.names.publication)); err != nil {
			errs = append(errs, fmt.Errorf("dropping publication %s: %w", q(e.names.publication), err))
		} else if existed {
			e.log.Info("dropped the publication of an earlier run", zap.String("publication", e.names.publication))
		}
	}
	// The slot is temporary and goes with the reader's connection; the
	// server may take a moment to notice the connection is gone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var active bool
		var pid *int32
		err := e.pool.QueryRow(ctx, "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()", e.names.slot).Scan(&active, &pid)
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			errs = append(errs, err)
			break
		}
		if !active {
			if _, err := e.pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", e.names.slot); err != nil {
				errs = append(errs, fmt.Errorf("dropping replication slot %s: %w", e.names.slot, err))
			}
			break
		}
		if time.Now().After(deadline) {
			if sweep && pid != nil {
				e.log.Warn("terminating the backend that holds a leftover slot", zap.String("slot", e.names.slot), zap.Int32("pid", *pid))
				e.pool.Exec(ctx, "SELECT pg_terminate_backend($1)", *pid)
				deadline = time.Now().Add(10 * time.Second)
				sweep = false
				continue
			}
			errs = append(errs, fmt.Errorf("replication slot %s is still in use by backend %v", e.names.slot, pid))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.Join(errs...)
}
