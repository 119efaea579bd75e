package mysqldb

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/osc-dev/osc/applier"
	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/replication"
)

// Bounds of one multi-row statement. Rows: multi-row INSERTs, DELETEs and
// UPDATEs. Bytes: the values' size (binary values can double when
// escaped), well under the servers' max_allowed_packet (16 MiB at least
// on MariaDB 10.2+ and MySQL 5.7+). Branches: a multi-row UPDATE's CASE
// branches (rows times columns set); the server searches a CASE's
// branches in turn for every row, so its cost per row grows with them.
const (
	maxRowsPerStatement  = 200
	maxBytesPerStatement = 4 << 20
	maxCaseBranches      = 1000
)

// writer applies row images to the shadow. Inserts are INSERT IGNORE (the
// copy may have brought the row already, in the same or a newer state that
// later events reproduce), never REPLACE: REPLACE would silently delete a
// row colliding on another unique key. An update that changes the key is a
// delete of the old key and an insert of the new image, because the new
// key may already be in the shadow from the copy. A duplicate on another
// unique key displaces the row holding it (see displace.go).
//
// Updates that keep their key are UPDATEs, as one row at a time would be:
// a row the copy has not brought yet is left alone (the copy will read it
// as it is then, no older than the event). Several of them become one
// UPDATE that sets each column by a CASE over the key (updateStatement).
//
// A batch is applied in segments of distinct keys (see segment) where the
// chunking key is the shadow's only unique index, and otherwise in stream
// order, merging runs of inserts, of deletes and of updates that keep
// their keys.
type writer struct {
	e         *Engine
	src       *source // the key's columns and predicates
	srcIdx    []int   // per mapped column: its position in the source row image
	keyIdx    []int   // per key column: its position in the source row image
	rowExpr   string  // "(e1, e2, ...)" for one inserted row
	insertSQL string  // up to VALUES
	updateSQL string  // UPDATE ... SET ... WHERE key
	keyEq     string  // "(k1 = ? AND k2 = ?)" against the shadow

	// Multi-row UPDATEs.
	sets       []setColumn // the mapped columns outside the key
	updateHead string      // "UPDATE shadow SET "
	// caseKey is the key column when the key is one integer column: the
	// statement then uses CASE key WHEN ... and key IN (...), cheaper for
	// the server than a predicate per branch.
	caseKey    string
	caseKeyArg string // its placeholder
	updateMax  int    // rows per multi-row UPDATE
	// txOpts: READ COMMITTED when the chunking key is the shadow's only
	// unique index (see Apply); nil keeps the server's default.
	txOpts *sql.TxOptions
	// regroup: apply batches by segments (see segment), when the chunking
	// key is the shadow's only unique index.
	regroup bool
}

// setColumn is a column a multi-row UPDATE sets.
type setColumn struct {
	name string // quoted, in the shadow
	expr string // the value's placeholder
	idx  int    // the value's position in the source row image
}

// Writer returns the applier side of the engine.
func (e *Engine) Writer() applier.Writer {
	w := &writer{e: e, src: e.rows}
	pos := map[*column]int{}
	for i := range e.src.Columns {
		pos[&e.src.Columns[i]] = i
	}
	inKey := map[*column]bool{}
	for _, m := range e.keyPairs() {
		w.keyIdx = append(w.keyIdx, pos[m.src])
		inKey[m.src] = true
	}
	var dst, vals, sets []string
	for _, m := range e.mapping {
		w.srcIdx = append(w.srcIdx, pos[m.src])
		dst = append(dst, q(m.dst.Name))
		vals = append(vals, valueExpr(m.src))
		sets = append(sets, q(m.dst.Name)+" = "+valueExpr(m.src))
		if !inKey[m.src] {
			w.sets = append(w.sets, setColumn{name: q(m.dst.Name), expr: valueExpr(m.src), idx: pos[m.src]})
		}
	}
	w.keyEq, _ = w.src.dst.eq(nil)
	w.rowExpr = "(" + strings.Join(vals, ", ") + ")"
	w.insertSQL = "INSERT IGNORE INTO " + e.qt(e.names.shadow) + " (" + strings.Join(dst, ", ") + ") VALUES "
	w.updateSQL = "UPDATE " + e.qt(e.names.shadow) + " SET " + strings.Join(sets, ", ") + " WHERE " + w.keyEq
	w.updateHead = "UPDATE " + e.qt(e.names.shadow) + " SET "
	if kp := e.keyPairs(); len(kp) == 1 && integerTypes[kp[0].src.DataType] {
		w.caseKey, w.caseKeyArg = w.src.dst.cols[0], w.src.dst.exprs[0]
	}
	w.updateMax = maxRowsPerStatement
	if len(w.sets) > 0 {
		w.updateMax = max(1, min(maxRowsPerStatement, maxCaseBranches/len(w.sets)))
	}
	if w.onlyKeyUnique() {
		w.txOpts = &sql.TxOptions{Isolation: sql.LevelReadCommitted}
		w.regroup = true
	}
	return w
}

// onlyKeyUnique reports whether the chunking key is the shadow's only
// unique index.
func (w *writer) onlyKeyUnique() bool {
	for _, ix := range w.e.shadow.Indexes {
		if ix.Unique && ix.Name != w.e.shadowKeyName {
			return false
		}
	}
	return true
}

// Apply applies the changes in one transaction, with the effect of
// applying them one at a time in order: by segments (see segment) where
// the chunking key is the shadow's only unique index, otherwise in stream
// order with runs of inserts, of deletes and of updates that keep their
// keys merged into multi-row statements.
//
// The transaction is READ COMMITTED when the chunking key is the shadow's
// only unique index. The applier's writes need no gap locks: every
// statement finds its rows by the full key, and rows the copy has not
// brought yet are the copy's to bring (its locking read sees the newest
// state; an UPDATE that skips a row a copy chunk inserted and has not
// committed yet leaves that chunk's state, which is no older than the
// event). Under REPEATABLE READ, an UPDATE or DELETE of a key not in the
// shadow yet locks the gap it falls in, which on a shadow filled in key
// order is the whole uncopied range: the copy's chunks then wait for the
// applier's transaction, and deadlock with it as soon as the applier's
// next statement waits for a chunk (a row it copied, or the AUTO-INC lock
// an INSERT ... SELECT holds to its end). Under a 500 tx/s load that was
// about 20 deadlocks a second, the applier's transaction the victim each
// time. Displacement (another unique index) relies on the gap locks of its
// locking reads to keep a value it freed from being taken before its
// write is redone, so with other unique indexes the server's default
// level stays.
func (w *writer) Apply(ctx context.Context, changes []replication.Change) error {
	return retryTransient(ctx, func() error {
		tx, err := w.e.data.BeginTx(ctx, w.txOpts)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := w.apply(ctx, tx, changes); err != nil {
			return err
		}
		return tx.Commit()
	})
}

func (w *writer) apply(ctx context.Context, tx *sql.Tx, changes []replication.Change) error {
	if w.regroup {
		var s segment
		for i := 0; i < len(changes); {
			j := w.collectSegment(&s, changes, i)
			if err := w.applySegment(ctx, tx, changes[i:j], &s); err != nil {
				return err
			}
			i = j
		}
		return nil
	}
	var run updateRun
	for i := 0; i < len(changes); {
		c := changes[i]
		if c.Op == replication.Update {
			if w.keyChanged(c) {
				// Alone and in place: a chain of key changes (1->2, 2->3)
				// must not be reordered into deletes first and inserts
				// after.
				if err := w.moveKey(ctx, tx, c); err != nil {
					return err
				}
				i++
				continue
			}
			j := w.collectUpdates(&run, changes, i)
			if err := w.updateRows(ctx, tx, changes[i:j], run.latest, w.sets); err != nil {
				return err
			}
			i = j
			continue
		}
		j, size := i, 0
		for j < len(changes) && j-i < maxRowsPerStatement && changes[j].Op == c.Op {
			if size += rowBytes(image(changes[j])); size > maxBytesPerStatement && j > i {
				break
			}
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

// image is the row image a change writes (the before image of a delete).
func image(c replication.Change) []any {
	if c.Op == replication.Delete {
		return c.Before
	}
	return c.After
}

// A segment is a stretch of changes in which no key is touched twice,
// but by updates that keep it. Where the chunking key is the shadow's only
// unique index, changes to different keys touch different rows and
// cannot collide, so a segment's order does not matter: it is applied as
// its deletes (including the old keys of key changes), its updates and its
// inserts (including the new images of key changes), each in multi-row
// statements. A key touched again (say an insert after its delete) starts
// the next segment, so every key's changes keep their order. Fewer
// statements matter beyond round trips: while the copy runs, each INSERT
// waits for the table's AUTO-INC lock, which the copy's INSERT ... SELECT
// holds to its end.
//
// Updates of a key already updated in the segment replace its image. That
// is exact: within the segment the row's key does not change and no row
// comes or goes with that key, so the row is present or absent for every
// image alike, and each image sets every mapped column: the older images
// would be overwritten in the same transaction.
type segment struct {
	slot    map[any]int // key -> its update's index in upd.latest, or -1
	dels    []replication.Change
	inserts []replication.Change
	upd     updateRun
}

// collectSegment gathers the segment starting at changes[i] into s and
// returns where it ends.
func (w *writer) collectSegment(s *segment, changes []replication.Change, i int) int {
	if s.slot == nil {
		s.slot = make(map[any]int)
	}
	clear(s.slot)
	s.dels, s.inserts, s.upd.latest = s.dels[:0], s.inserts[:0], s.upd.latest[:0]
	j := i
	for ; j < len(changes); j++ {
		c := changes[j]
		switch {
		case c.Op == replication.Update && !w.keyChanged(c):
			k := w.runKey(&s.upd, c.Before)
			n, ok := s.slot[k]
			if ok && n < 0 {
				return j
			}
			if ok {
				s.upd.latest[n] = j - i
				continue
			}
			s.slot[k] = len(s.upd.latest)
			s.upd.latest = append(s.upd.latest, j-i)
		case c.Op == replication.Update: // a key change
			old, nu := w.runKey(&s.upd, c.Before), w.runKey(&s.upd, c.After)
			_, oldSeen := s.slot[old]
			_, newSeen := s.slot[nu]
			if oldSeen || newSeen {
				return j
			}
			s.slot[old], s.slot[nu] = -1, -1
			s.dels = append(s.dels, c)
			s.inserts = append(s.inserts, c)
		default:
			row := c.After
			if c.Op == replication.Delete {
				row = c.Before
			}
			k := w.runKey(&s.upd, row)
			if _, seen := s.slot[k]; seen {
				return j
			}
			s.slot[k] = -1
			if c.Op == replication.Delete {
				s.dels = append(s.dels, c)
			} else {
				s.inserts = append(s.inserts, c)
			}
		}
	}
	return j
}

// applySegment applies a segment collected by collectSegment.
func (w *writer) applySegment(ctx context.Context, tx *sql.Tx, seg []replication.Change, s *segment) error {
	for _, part := range splitRows(s.dels, func(c replication.Change) []any { return c.Before }) {
		if err := w.delete(ctx, tx, part); err != nil {
			return err
		}
	}
	var sets []setColumn
	if len(s.upd.latest) > 0 {
		sets = w.changedSets(seg)
	}
	for latest := s.upd.latest; len(latest) > 0; {
		n, size := 0, 0
		for n < len(latest) && n < w.updateMax {
			if size += rowBytes(seg[latest[n]].After); size > maxBytesPerStatement && n > 0 {
				break
			}
			n++
		}
		if err := w.updateRows(ctx, tx, seg, latest[:n], sets); err != nil {
			return err
		}
		latest = latest[n:]
	}
	for _, part := range splitRows(s.inserts, func(c replication.Change) []any { return c.After }) {
		if err := w.insert(ctx, tx, part); err != nil {
			return err
		}
	}
	return nil
}

// splitRows cuts changes into statements' worth of rows.
func splitRows(changes []replication.Change, img func(replication.Change) []any) [][]replication.Change {
	var out [][]replication.Change
	for len(changes) > 0 {
		n, size := 0, 0
		for n < len(changes) && n < maxRowsPerStatement {
			if size += rowBytes(img(changes[n])); size > maxBytesPerStatement && n > 0 {
				break
			}
			n++
		}
		out = append(out, changes[:n])
		changes = changes[n:]
	}
	return out
}

// updateRun is a run of updates that keep their keys, distinct keys.
type updateRun struct {
	seen   map[any]int // key -> index in latest
	latest []int       // per key, in order of first appearance: the position of its (newest) image
	buf    []byte
}

// collectUpdates gathers the run of updates that keep their keys starting
// at changes[i] (in stream order, where other unique indexes exist), up to
// the statement's bounds in rows and bytes, and returns where it ends;
// r.latest holds positions relative to i. A key seen again ends the run
// rather than replacing its image: an application moves a unique value
// between rows through a free one (a -> free, b -> a's, a -> b's), and
// skipping a step would collide where the stream does not. Keys being
// distinct, the statement's order between rows does not matter but for
// those unique indexes: it can fail on a duplicate that the stream's order
// avoids, and the run is then applied one update at a time (updateRows).
func (w *writer) collectUpdates(r *updateRun, changes []replication.Change, i int) int {
	if r.seen == nil {
		r.seen = make(map[any]int)
	}
	clear(r.seen)
	r.latest = r.latest[:0]
	size := 0
	j := i
	for ; j < len(changes); j++ {
		c := changes[j]
		if c.Op != replication.Update || w.keyChanged(c) {
			break
		}
		k := w.runKey(r, c.Before)
		if _, ok := r.seen[k]; ok {
			break
		}
		size += rowBytes(c.After)
		if len(r.latest) == w.updateMax || (size > maxBytesPerStatement && len(r.latest) > 0) {
			break
		}
		r.seen[k] = len(r.latest)
		r.latest = append(r.latest, j-i)
	}
	return j
}

// runKey is a comparable value standing for the key of row.
func (w *writer) runKey(r *updateRun, row []any) any {
	if len(w.keyIdx) == 1 {
		switch v := row[w.keyIdx[0]].(type) {
		case []byte:
			return string(v)
		case int64, uint64, string:
			return v
		}
	}
	r.buf = r.buf[:0]
	for _, i := range w.keyIdx {
		r.buf = appendKeyPart(r.buf, row[i])
	}
	return string(r.buf)
}

// appendKeyPart appends an unambiguous encoding of one key value.
func appendKeyPart(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, 'n')
	case int64:
		return binary.BigEndian.AppendUint64(append(b, 'i'), uint64(x))
	case uint64:
		return binary.BigEndian.AppendUint64(append(b, 'u'), x)
	case float64:
		return binary.BigEndian.AppendUint64(append(b, 'f'), math.Float64bits(x))
	case string:
		return append(binary.AppendUvarint(append(b, 's'), uint64(len(x))), x...)
	case []byte:
		return append(binary.AppendUvarint(append(b, 'b'), uint64(len(x))), x...)
	}
	s := fmt.Sprintf("%T:%v", v, v)
	return append(binary.AppendUvarint(append(b, 'x'), uint64(len(s))), s...)
}

// rowBytes estimates the size of a row image's values in a statement.
func rowBytes(row []any) int {
	n := 0
	for _, v := range row {
		switch x := v.(type) {
		case string:
			n += len(x)
		case []byte:
			n += len(x)
		default:
			n += 8
		}
	}
	return n
}

// updateRows applies the updates changes[latest[...]], which keep their
// keys and have distinct keys, as one multi-row UPDATE of the columns
// sets. A duplicate on
// another unique index fails the statement alone (strict mode); they are
// then applied one at a time, in order, which resolves conflicts by
// displacement as an update always did.
func (w *writer) updateRows(ctx context.Context, tx *sql.Tx, changes []replication.Change, latest []int, sets []setColumn) error {
	if len(w.sets) == 0 {
		return nil // only key columns are copied: the rows stay as they are
	}
	if len(latest) == 1 {
		return w.update(ctx, tx, changes[latest[0]])
	}
	if len(sets) == 0 {
		return nil
	}
	query, args := w.updateStatement(changes, latest, sets)
	_, err := tx.ExecContext(ctx, query, args...)
	if isDuplicate(err) {
		for _, p := range latest {
			if err := w.update(ctx, tx, changes[p]); err != nil {
				return err
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	return w.e.statementWarnings(ctx, tx, "update")
}

// updateStatement renders the UPDATE of the rows run[latest[...]]: each
// column set by a CASE over the key, the rows picked by their keys.
func (w *writer) updateStatement(run []replication.Change, latest []int, sets []setColumn) (string, []any) {
	var b strings.Builder
	b.Grow(len(w.updateHead) + len(latest)*(len(sets)+1)*(len(w.keyEq)+32))
	args := make([]any, 0, len(latest)*(len(sets)+1)*(len(w.keyIdx)+1))
	b.WriteString(w.updateHead)
	for n, col := range sets {
		if n > 0 {
			b.WriteString(", ")
		}
		b.WriteString(col.name)
		if w.caseKey != "" {
			b.WriteString(" = CASE ")
			b.WriteString(w.caseKey)
		} else {
			b.WriteString(" = CASE")
		}
		for _, p := range latest {
			c := run[p]
			b.WriteString(" WHEN ")
			if w.caseKey != "" {
				b.WriteString(w.caseKeyArg)
			} else {
				b.WriteString(w.keyEq)
			}
			b.WriteString(" THEN ")
			b.WriteString(col.expr)
			args = w.appendKey(args, c.Before)
			args = append(args, c.After[col.idx])
		}
		b.WriteString(" END")
	}
	b.WriteString(" WHERE ")
	if w.caseKey != "" {
		b.WriteString(w.caseKey)
		b.WriteString(" IN (")
		for n, p := range latest {
			if n > 0 {
				b.WriteString(", ")
			}
			b.WriteString(w.caseKeyArg)
			args = w.appendKey(args, run[p].Before)
		}
		b.WriteString(")")
	} else {
		for n, p := range latest {
			if n > 0 {
				b.WriteString(" OR ")
			}
			b.WriteString(w.keyEq)
			args = w.appendKey(args, run[p].Before)
		}
	}
	return b.String(), args
}

// changedSets is the columns outside the key that an update among changes
// (those that keep their keys) changes; a segment's multi-row UPDATEs set
// only those. Setting the others costs the server a CASE over the
// statement's rows for each row: on the benchmark's table, 50,000 updates
// of k in statements of 200 rows took 1.35 s setting every column, 0.75 s
// setting k. A row the copy brought in a newer state than the update's
// then holds a mix of states until the applier passes the copy's read
// (docs/correctness.md, section 3), which only segments can afford: there
// the chunking key is the only unique index, so no mix can collide. Runs
// in stream order set every column.
func (w *writer) changedSets(changes []replication.Change) []setColumn {
	changed := make([]bool, len(w.sets))
	n := 0
	for _, c := range changes {
		if c.Op != replication.Update || w.keyChanged(c) {
			continue
		}
		for i, col := range w.sets {
			if !changed[i] && !sameValue(c.Before[col.idx], c.After[col.idx]) {
				changed[i] = true
				n++
			}
		}
		if n == len(w.sets) {
			return w.sets
		}
	}
	out := make([]setColumn, 0, n)
	for i, col := range w.sets {
		if changed[i] {
			out = append(out, col)
		}
	}
	return out
}

func (w *writer) appendKey(args []any, row []any) []any {
	for _, i := range w.keyIdx {
		args = append(args, row[i])
	}
	return args
}

// moveKey applies an update that changes the key: a delete of the old key
// and an insert of the new image.
func (w *writer) moveKey(ctx context.Context, tx *sql.Tx, c replication.Change) error {
	one := []replication.Change{c}
	if err := w.delete(ctx, tx, one); err != nil {
		return err
	}
	return w.insert(ctx, tx, one)
}

// update applies one update that keeps its key.
func (w *writer) update(ctx context.Context, tx *sql.Tx, c replication.Change) error {
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
	return w.e.statementWarnings(ctx, tx, "update")
}

func (w *writer) keyChanged(c replication.Change) bool {
	for _, i := range w.keyIdx {
		if !sameValue(c.Before[i], c.After[i]) {
			return true
		}
	}
	return false
}

// sameValue reports whether two values of a row image are the same
// value, bit for bit: -0 and 0 are different floats to the server.
func sameValue(a, b any) bool {
	switch x := a.(type) {
	case []byte:
		y, ok := b.([]byte)
		return ok && bytes.Equal(x, y)
	case float64:
		y, ok := b.(float64)
		return ok && math.Float64bits(x) == math.Float64bits(y)
	case float32:
		y, ok := b.(float32)
		return ok && math.Float32bits(x) == math.Float32bits(y)
	}
	return a == b
}

func (w *writer) updateArgs(c replication.Change) []any {
	args := make([]any, 0, len(w.srcIdx)+len(w.keyIdx))
	for _, i := range w.srcIdx {
		args = append(args, c.After[i])
	}
	return w.appendKey(args, c.Before)
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
	b.Grow(len(w.insertSQL) + len(run)*(len(w.rowExpr)+2))
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
	return w.e.statementWarnings(ctx, tx, "insert")
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
		args = w.appendKey(args, c.Before)
	}
	if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}
