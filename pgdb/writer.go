package pgdb

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/osc-dev/osc/applier"
	"github.com/osc-dev/osc/replication"
)

const textOID = 25

// Writer applies changes on the applier's own connection. The applier
// starts once the snapshot copy is done, from the slot's consistent point,
// so each change finds the shadow as the table was just before it: an
// insert's key is free, an update's or delete's row is there. The paths
// for a row missing or already present serve the rows a verification
// repair copied again from the table's latest state while the applier
// ran (Repair), which may be ahead of the stream.
func (e *Engine) Writer() applier.Writer { return (*writer)(e) }

type writer Engine

// Apply sends a batch's statements in one pipeline, which the server runs
// as one implicit transaction: all of it applies, or none. Values travel
// as text with their column's type OID, as the stream delivered them.
func (w *writer) Apply(ctx context.Context, changes []replication.Change) error {
	st := w.sql
	err := retryDeadlock(ctx, func() error {
		b := &pgconn.Batch{}
		for i := range changes {
			if err := w.add(ctx, b, st, &changes[i]); err != nil {
				return err
			}
		}
		_, err := w.apply.PgConn().ExecBatch(ctx, b).ReadAll()
		return err
	})
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "23P01" || pe.Code == "23514" || pe.Code == "23502") {
			return fmt.Errorf("a write of the application does not fit the new definition: %s; the run stops, no row was changed", pgMessage(err))
		}
		return err
	}
	return nil
}

// queue adds a statement to the batch as a prepared statement, prepared on
// the applier's connection the first time its text is seen: a statement's
// parameters' types are fixed by its text, and the server then parses and
// plans each shape once rather than once per row change.
func (w *writer) queue(ctx context.Context, b *pgconn.Batch, sql string, vals [][]byte, oids []uint32) error {
	name, ok := w.prepared[sql]
	if !ok {
		name = fmt.Sprintf("osc_apply_%d", len(w.prepared))
		if _, err := w.apply.PgConn().Prepare(ctx, name, sql, oids); err != nil {
			return fmt.Errorf("preparing %q: %w", sql, err)
		}
		if w.prepared == nil {
			w.prepared = map[string]string{}
		}
		w.prepared[sql] = name
	}
	b.ExecPrepared(name, vals, nil, nil)
	return nil
}

func (w *writer) add(ctx context.Context, b *pgconn.Batch, st *statements, c *replication.Change) error {
	switch c.Op {
	case replication.Insert:
		vals, oids := rowParams(st, c.After, nil)
		if err := w.queue(ctx, b, st.insertRow, vals, oids); err != nil {
			return err
		}
	case replication.Delete:
		key, err := keyValues(st, c.Before)
		if err != nil {
			return err
		}
		if err := w.queue(ctx, b, st.deleteRow, key, textOIDs(len(key))); err != nil {
			return err
		}
	case replication.Update:
		oldKey, err := keyValues(st, c.Before)
		if err != nil {
			return err
		}
		newKey, err := keyValues(st, c.After)
		if err != nil {
			return err
		}
		moved := !sameKey(oldKey, newKey)
		present := make([]bool, len(c.After))
		complete := true
		for i, v := range c.After {
			_, unchanged := v.(replication.Unchanged)
			present[i] = !unchanged
			complete = complete && !unchanged
		}
		vals, oids := rowParams(st, c.After, present)
		if moved {
			// A repair may have copied the row at the new key ahead of
			// this change: it goes when the old row is there to move onto
			// it. (Replayed in order, the new key is free.)
			if err := w.queue(ctx, b, st.moveOnto, append(append([][]byte{}, newKey...), oldKey...), textOIDs(2*len(newKey))); err != nil {
				return err
			}
		}
		if u := st.update(present, moved, len(vals)); u != "" {
			if err := w.queue(ctx, b, u, append(vals, oldKey...), append(oids, textOIDs(len(oldKey))...)); err != nil {
				return err
			}
		}
		if moved {
			// If the old row was not in the shadow (a repair copied its
			// range after the row had left it), the new one must come
			// from here; otherwise these find it moved and do nothing.
			if complete {
				all, allOIDs := rowParams(st, c.After, nil)
				if err := w.queue(ctx, b, st.insertRow, all, allOIDs); err != nil {
					return err
				}
			} else {
				if err := w.queue(ctx, b, st.copyOne, newKey, textOIDs(len(newKey))); err != nil {
					return err
				}
			}
		}
	default:
		return fmt.Errorf("unknown change %v", c.Op)
	}
	return nil
}

// rowParams returns the text values and type OIDs of a row's columns that
// are present (all when present is nil).
func rowParams(st *statements, row []any, present []bool) ([][]byte, []uint32) {
	vals := make([][]byte, 0, len(row))
	oids := make([]uint32, 0, len(row))
	for i, v := range row {
		if present != nil && !present[i] {
			continue
		}
		vals = append(vals, textValue(v))
		oids = append(oids, st.repl[i].typeOID)
	}
	return vals, oids
}

func textValue(v any) []byte {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return []byte(x)
	case []byte:
		return x
	}
	return []byte(fmt.Sprint(v))
}

// keyValues picks the key's values out of a row image.
func keyValues(st *statements, row []any) ([][]byte, error) {
	vals := make([][]byte, len(st.keyCols))
	for i, k := range st.keyNames {
		v := row[st.replPos[k]]
		if _, ok := v.(replication.Unchanged); ok || v == nil {
			return nil, fmt.Errorf("the change stream carried no value for key column %s", q(k))
		}
		vals[i] = textValue(v)
	}
	return vals, nil
}

func sameKey(a, b [][]byte) bool {
	for i := range a {
		if string(a[i]) != string(b[i]) {
			return false
		}
	}
	return true
}

func textOIDs(n int) []uint32 {
	oids := make([]uint32, n)
	for i := range oids {
		oids[i] = textOID
	}
	return oids
}
