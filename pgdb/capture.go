package pgdb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/replication"
	"github.com/osc-dev/osc/replication/pgoutput"
)

// StartCapture publishes the table and starts streaming from a new
// temporary logical slot. The publication must exist before the slot:
// pgoutput looks publications up as of each change's position. Every
// write committed after the slot's consistent point reaches the applier;
// the copy starts later and sees everything committed before it.
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
		Logger:       e.log.Named("pgoutput"),
	})
	if err != nil {
		return nil, fmt.Errorf("starting logical replication from slot %s: %w", e.names.slot, redactErr(err, e.cfg.Password))
	}
	e.reader = r
	c, err := e.connect(ctx)
	if err != nil {
		return nil, err
	}
	e.apply = c
	return r, nil
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
