package pgdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/osc-dev/osc/applier"
	"github.com/osc-dev/osc/replication"
)

// Parameter types: text, text[].
const (
	textOID      = 25
	textArrayOID = 1009
)

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
		for i := 0; i < len(changes); {
			if n := w.updateRun(st, changes[i:]); n > 1 {
				if err := w.queue(ctx, b, st.updateMany(), columnArrays(changes[i:i+n]), repeatOID(textArrayOID, len(st.repl))); err != nil {
					return err
				}
				i += n
				continue
			}
			if err := w.add(ctx, b, st, &changes[i]); err != nil {
				return err
			}
			i++
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
		if err := w.queue(ctx, b, st.deleteRow, key, repeatOID(textOID, len(key))); err != nil {
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
			if err := w.queue(ctx, b, st.moveOnto, append(append([][]byte{}, newKey...), oldKey...), repeatOID(textOID, 2*len(newKey))); err != nil {
				return err
			}
		}
		if u := st.update(present, moved, len(vals)); u != "" {
			if err := w.queue(ctx, b, u, append(vals, oldKey...), append(oids, repeatOID(textOID, len(oldKey))...)); err != nil {
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
				if err := w.queue(ctx, b, st.copyOne, newKey, repeatOID(textOID, len(newKey))); err != nil {
					return err
				}
			}
		}
	default:
		return fmt.Errorf("unknown change %v", c.Op)
	}
	return nil
}

// maxUpdateRun bounds the updates one statement applies.
const maxUpdateRun = 1000

// updateRun is how many changes from the first are updates one statement
// can apply (updateMany): the same key before and after, every column in
// the image, no key twice, so that the rows are independent and the order
// within the statement does not matter. Only where the shadow has no
// unique index or exclusion constraint but the key's: PostgreSQL checks
// those row by row in an order of its own, so values moving between rows
// could collide where the events applied in order would not.
func (w *writer) updateRun(st *statements, cs []replication.Change) int {
	if !w.batchUpdates {
		return 0
	}
	seen := map[string]bool{}
	n := 0
	for ; n < len(cs) && n < maxUpdateRun; n++ {
		c := &cs[n]
		if c.Op != replication.Update {
			break
		}
		oldKey, err := keyValues(st, c.Before)
		if err != nil {
			break
		}
		newKey, err := keyValues(st, c.After)
		if err != nil || !sameKey(oldKey, newKey) || !completeImage(c.After) {
			break
		}
		k := string(bytes.Join(newKey, []byte{0})) // text never holds NUL
		if seen[k] {
			break
		}
		seen[k] = true
	}
	return n
}

func completeImage(row []any) bool {
	for _, v := range row {
		if _, unchanged := v.(replication.Unchanged); unchanged {
			return false
		}
	}
	return true
}

// columnArrays renders the changes' after images as one text[] literal per
// column: every element quoted and escaped, NULL for NULL.
func columnArrays(cs []replication.Change) [][]byte {
	out := make([][]byte, len(cs[0].After))
	for i := range out {
		buf := []byte{'{'}
		for j := range cs {
			if j > 0 {
				buf = append(buf, ',')
			}
			v := cs[j].After[i]
			if v == nil {
				buf = append(buf, "NULL"...)
				continue
			}
			buf = append(buf, '"')
			for _, ch := range textValue(v) {
				if ch == '"' || ch == '\\' {
					buf = append(buf, '\\')
				}
				buf = append(buf, ch)
			}
			buf = append(buf, '"')
		}
		out[i] = append(buf, '}')
	}
	return out
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

// repeatOID is n parameter types, all oid.
func repeatOID(oid uint32, n int) []uint32 {
	oids := make([]uint32, n)
	for i := range oids {
		oids[i] = oid
	}
	return oids
}
