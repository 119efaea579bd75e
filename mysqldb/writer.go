package mysqldb

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/osc-dev/osc/applier"
	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/replication"
)

// maxRowsPerStatement bounds multi-row INSERTs and DELETEs.
const maxRowsPerStatement = 200

// writer applies row images to the shadow. Inserts are INSERT IGNORE (the
// copy may have brought the row already, in the same or a newer state that
// later events reproduce), never REPLACE: REPLACE would silently delete a
// row colliding on another unique key. An update that changes the key is a
// delete of the old key and an insert of the new image, because the new
// key may already be in the shadow from the copy. A duplicate on another
// unique key displaces the row holding it (see displace.go).
type writer struct {
	e         *Engine
	src       *source // the key's columns and predicates
	srcIdx    []int   // per mapped column: its position in the source row image
	keyIdx    []int   // per key column: its position in the source row image
	rowExpr   string  // "(e1, e2, ...)" for one inserted row
	insertSQL string  // up to VALUES
	updateSQL string  // UPDATE ... SET ... WHERE key
	keyEq     string  // "(k1 = ? AND k2 = ?)" against the shadow
}

// Writer returns the applier side of the engine.
func (e *Engine) Writer() applier.Writer {
	w := &writer{e: e, src: e.rows}
	pos := map[*column]int{}
	for i := range e.src.Columns {
		pos[&e.src.Columns[i]] = i
	}
	var dst, vals, sets []string
	for _, m := range e.mapping {
		w.srcIdx = append(w.srcIdx, pos[m.src])
		dst = append(dst, q(m.dst.Name))
		vals = append(vals, valueExpr(m.src))
		sets = append(sets, q(m.dst.Name)+" = "+valueExpr(m.src))
	}
	for _, m := range e.keyPairs() {
		w.keyIdx = append(w.keyIdx, pos[m.src])
	}
	w.keyEq, _ = w.src.dst.eq(nil)
	w.rowExpr = "(" + strings.Join(vals, ", ") + ")"
	w.insertSQL = "INSERT IGNORE INTO " + e.qt(e.names.shadow) + " (" + strings.Join(dst, ", ") + ") VALUES "
	w.updateSQL = "UPDATE " + e.qt(e.names.shadow) + " SET " + strings.Join(sets, ", ") + " WHERE " + w.keyEq
	return w
}

// Apply runs the changes in order in one transaction, merging runs of
// inserts and runs of deletes into multi-row statements.
func (w *writer) Apply(ctx context.Context, changes []replication.Change) error {
	return w.e.inTx(ctx, func(tx *sql.Tx) error { return w.apply(ctx, tx, changes) })
}

func (w *writer) apply(ctx context.Context, tx *sql.Tx, changes []replication.Change) error {
	for i := 0; i < len(changes); {
		c := changes[i]
		if c.Op == replication.Update {
			// One at a time: a chain of key changes (1->2, 2->3) must not
			// be reordered into deletes first and inserts after.
			if err := w.update(ctx, tx, c); err != nil {
				return err
			}
			i++
			continue
		}
		j := i
		for j < len(changes) && j-i < maxRowsPerStatement && changes[j].Op == c.Op {
			j++
		}
		var err error
		if c.Op == replication.Insert {
			err = w.insert(ctx, tx, changes[i:j])
		} else {
			err = w.delete(ctx, tx, changes[i:j])
		}
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}

func (w *writer) update(ctx context.Context, tx *sql.Tx, c replication.Change) error {
	if w.keyChanged(c) {
		one := []replication.Change{c}
		if err := w.delete(ctx, tx, one); err != nil {
			return err
		}
		return w.insert(ctx, tx, one)
	}
	_, err := tx.ExecContext(ctx, w.updateSQL, w.updateArgs(c)...)
	if isDuplicate(err) {
		// Strict mode failed the statement alone; the transaction goes on.
		moved, derr := w.displace(ctx, tx, c.After, w.key(c.Before))
		if derr != nil {
			return derr
		}
		if moved {
			_, err = tx.ExecContext(ctx, w.updateSQL, w.updateArgs(c)...)
		}
	}
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	// Strict mode fails on most lossy values, but some (DECIMAL rounding,
	// trailing spaces cut) are only notes.
	ws, err := showWarnings(ctx, tx)
	if err != nil {
		return err
	}
	if err := w.e.checkWarnings(ws); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	return nil
}

func (w *writer) keyChanged(c replication.Change) bool {
	for _, i := range w.keyIdx {
		if !sameValue(c.Before[i], c.After[i]) {
			return true
		}
	}
	return false
}

func sameValue(a, b any) bool {
	ab, aok := a.([]byte)
	bb, bok := b.([]byte)
	if aok || bok {
		return aok && bok && bytes.Equal(ab, bb)
	}
	return a == b
}

func (w *writer) updateArgs(c replication.Change) []any {
	args := make([]any, 0, len(w.srcIdx)+len(w.keyIdx))
	for _, i := range w.srcIdx {
		args = append(args, c.After[i])
	}
	for _, i := range w.keyIdx {
		args = append(args, c.Before[i])
	}
	return args
}

// insert inserts the after images; rows that collide on another unique key
// displace its holders, and the statement runs once more.
func (w *writer) insert(ctx context.Context, tx *sql.Tx, run []replication.Change) error {
	err := w.insertOnce(ctx, tx, run)
	var c *errConflict
	if !errors.As(err, &c) {
		return err
	}
	moved := false
	for _, c := range run {
		m, derr := w.displace(ctx, tx, c.After, w.key(c.After))
		if derr != nil {
			return derr
		}
		moved = moved || m
	}
	if !moved {
		return err
	}
	return w.insertOnce(ctx, tx, run)
}

func (w *writer) key(row []any) copier.Key {
	k := make(copier.Key, len(w.keyIdx))
	for i, p := range w.keyIdx {
		k[i] = row[p]
	}
	return k
}

func (w *writer) insertOnce(ctx context.Context, tx *sql.Tx, run []replication.Change) error {
	var b strings.Builder
	b.WriteString(w.insertSQL)
	args := make([]any, 0, len(run)*len(w.srcIdx))
	for n, c := range run {
		if n > 0 {
			b.WriteString(", ")
		}
		b.WriteString(w.rowExpr)
		for _, i := range w.srcIdx {
			args = append(args, c.After[i])
		}
	}
	if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	ws, err := showWarnings(ctx, tx)
	if err != nil {
		return err
	}
	if err := w.e.checkWarnings(ws); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	return nil
}

// delete removes the rows with the before images' keys.
func (w *writer) delete(ctx context.Context, tx *sql.Tx, run []replication.Change) error {
	var b strings.Builder
	b.WriteString("DELETE FROM " + w.e.qt(w.e.names.shadow) + " WHERE ")
	args := make([]any, 0, len(run)*len(w.keyIdx))
	for n, c := range run {
		if n > 0 {
			b.WriteString(" OR ")
		}
		b.WriteString(w.keyEq)
		for _, i := range w.keyIdx {
			args = append(args, c.Before[i])
		}
	}
	if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}
