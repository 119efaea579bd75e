package mysqldb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/copier"
)

// A duplicate on a unique key other than the chunking key is usually
// transient. The copy reads rows newer than the applier has reached (and
// repair and copy-back read the present too), so when a value moves
// between rows (positions in a list swapped, a value handed on from a
// deleted row) the row being written and the shadow's holder of the value
// can be from different moments. On every path (copy, repair, copy-back,
// applier) the row being written wins: the holder is displaced — removed
// from the shadow, its key remembered — and the write is redone. Displaced
// rows are copied back from the source as they are then, before
// verification and before every cut-over attempt, and the cut-over refuses
// to swap while any is missing.
//
// A duplicate is real only when the source holds the value in both rows
// now, in the new definition's terms (its collation decides what is
// equal); then the run stops naming both. Unique indexes over columns that
// do not come from the source (new or generated ones) cannot be judged:
// a duplicate there stops the run with the server's own message.

// displacedSet holds the keys of displaced rows. Each entry has a
// generation so that a row displaced again while it was being copied back
// is not forgotten.
type displacedSet struct {
	mu   sync.Mutex
	gen  uint64
	keys map[string]displacedKey
}

type displacedKey struct {
	key copier.Key
	gen uint64
}

func (d *displacedSet) add(k copier.Key) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.keys == nil {
		d.keys = map[string]displacedKey{}
	}
	d.gen++
	d.keys[k.String()] = displacedKey{k, d.gen}
}

func (d *displacedSet) list() []displacedKey {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]displacedKey, 0, len(d.keys))
	for _, k := range d.keys {
		out = append(out, k)
	}
	return out
}

// done forgets k unless it was displaced again since list.
func (d *displacedSet) done(k displacedKey) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if cur, ok := d.keys[k.key.String()]; ok && cur.gen == k.gen {
		delete(d.keys, k.key.String())
	}
}

func (d *displacedSet) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.keys)
}

// uniqueIndex is a unique index of the shadow, other than the chunking
// key, whose columns all come from the source. Conflicts on other unique
// indexes (over new columns) cannot be judged and stop the run.
type uniqueIndex struct {
	name   string
	cols   string // its columns, for messages
	srcIdx []int  // the columns' positions in source row images
	// byValues selects the holders of given values, except one key: the
	// holder's key and values.
	byValues string
	// byKeys selects, for source rows picked by key, the shadow rows of
	// other keys holding their values: holder key, source key, values.
	byKeys string
	// owners counts, of two source rows, those holding a shadow row's
	// values now.
	owners string
}

// holder is a shadow row holding values that a write needs.
type holder struct {
	key, incoming copier.Key
	values        string
}

func (e *Engine) uniqueIndexes(pos map[*column]int, s *source) []uniqueIndex {
	var holderKey, srcKey, keysEq []string
	for i, m := range e.keyPairs() {
		holderKey = append(holderKey, keySelectExpr(m.dst, "dst."+q(m.dst.Name)))
		srcKey = append(srcKey, keySelectExpr(m.src, "src."+q(m.src.Name)))
		keysEq = append(keysEq, "dst."+s.dst.cols[i]+" = src."+s.src.cols[i])
	}
	holderEq, _ := s.dst.as("dst").eq(nil)
	srcEq, _ := s.src.as("src").eq(nil)
	var out []uniqueIndex
next:
	for _, ix := range e.shadow.Indexes {
		if !ix.Unique || ix.Name == e.shadowKeyName {
			continue
		}
		u := uniqueIndex{name: ix.Name}
		var byVal, join, text, names []string
		for _, c := range ix.Columns {
			m := e.pairByTarget(c)
			if m == nil {
				continue next
			}
			u.srcIdx = append(u.srcIdx, pos[m.src])
			names = append(names, q(m.dst.Name))
			byVal = append(byVal, "dst."+q(m.dst.Name)+" = "+cmpExpr(m.src, m.dst))
			join = append(join, "dst."+q(m.dst.Name)+" = "+asTarget("src."+q(m.src.Name), m.dst))
			text = append(text, "dst."+q(m.dst.Name))
		}
		u.cols = strings.Join(names, ", ")
		shadow := e.qt(e.names.shadow) + " AS dst"
		values := "CONCAT_WS(', ', " + strings.Join(text, ", ") + ")"
		u.byValues = "SELECT " + strings.Join(holderKey, ", ") + ", " + values + " FROM " + shadow +
			" WHERE " + strings.Join(byVal, " AND ") + " AND NOT " + holderEq + " FOR UPDATE"
		u.byKeys = "SELECT " + strings.Join(holderKey, ", ") + ", " + strings.Join(srcKey, ", ") + ", " + values +
			" FROM " + e.qt(e.names.table) + " AS src FORCE INDEX (" + q(e.key.Name) + ") JOIN " + shadow + " ON " + strings.Join(join, " AND ") +
			" AND NOT (" + strings.Join(keysEq, " AND ") + ") WHERE %s LOCK IN SHARE MODE"
		u.owners = "SELECT COUNT(*) FROM " + e.qt(e.names.table) + " AS src JOIN " + shadow + " ON " + holderEq +
			" WHERE (" + srcEq + " OR " + srcEq + ") AND " + strings.Join(join, " AND ") + " LOCK IN SHARE MODE"
		out = append(out, u)
	}
	return out
}

func (e *Engine) pairByTarget(name string) *colPair {
	for i := range e.mapping {
		if strings.EqualFold(e.mapping[i].dst.Name, name) {
			return &e.mapping[i]
		}
	}
	return nil
}

// displaceHolders removes holders from the shadow and records their keys,
// unless the source holds the value in both rows: that duplicate is real.
func (e *Engine) displaceHolders(ctx context.Context, tx *sql.Tx, u uniqueIndex, hs []holder, s *source) error {
	for _, h := range hs {
		var owners int
		args := append(append(append([]any{}, h.key...), h.key...), h.incoming...)
		if err := tx.QueryRowContext(ctx, u.owners, args...).Scan(&owners); err != nil {
			return fmt.Errorf("checking the owners of a unique value: %w", err)
		}
		if owners > 1 {
			return fmt.Errorf("duplicate values for the unique key %s of the new definition: the rows with keys %s and %s both hold (%s) = (%s); fix the data or the ALTER",
				q(u.name), h.key, h.incoming, u.cols, h.values)
		}
		where, wargs := s.dst.eq(h.key)
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+e.qt(e.names.shadow)+" WHERE "+where, wargs...); err != nil {
			return err
		}
		e.displaced.add(h.key)
	}
	return nil
}

// displaceForKeys displaces the holders of the unique values of the
// source rows pick selects. It reports whether it displaced any.
func (e *Engine) displaceForKeys(ctx context.Context, tx *sql.Tx, s *source, pick keyPick) (bool, error) {
	where, args := pick(s.src.as("src"))
	moved := false
	for _, u := range e.uniques {
		hs, err := e.readHolders(ctx, tx, s, fmt.Sprintf(u.byKeys, where), true, args...)
		if err != nil {
			return false, err
		}
		if err := e.displaceHolders(ctx, tx, u, hs, s); err != nil {
			return false, err
		}
		moved = moved || len(hs) > 0
	}
	return moved, nil
}

// displace displaces the holders of row's unique values, row being a
// source row image with key self. It reports whether it displaced any.
func (w *writer) displace(ctx context.Context, tx *sql.Tx, row []any, self copier.Key) (bool, error) {
	moved := false
	for _, u := range w.e.uniques {
		args := make([]any, 0, len(u.srcIdx)+len(self))
		hasNull := false
		for _, i := range u.srcIdx {
			hasNull = hasNull || row[i] == nil
			args = append(args, row[i])
		}
		if hasNull {
			continue // NULLs never collide
		}
		hs, err := w.e.readHolders(ctx, tx, w.src, u.byValues, false, append(args, self...)...)
		if err != nil {
			return false, err
		}
		for i := range hs {
			hs[i].incoming = self
		}
		if err := w.e.displaceHolders(ctx, tx, u, hs, w.src); err != nil {
			return false, err
		}
		moved = moved || len(hs) > 0
	}
	return moved, nil
}

// readHolders reads holder keys (and, withIncoming, the incoming source
// keys) followed by the values as text.
func (e *Engine) readHolders(ctx context.Context, tx *sql.Tx, s *source, query string, withIncoming bool, args ...any) ([]holder, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("looking up the holders of unique values: %w", err)
	}
	defer rows.Close()
	n := len(s.keyCols)
	width := n + 1
	if withIncoming {
		width += n
	}
	raw := make([]sql.RawBytes, width)
	dest := make([]any, width)
	for i := range raw {
		dest[i] = &raw[i]
	}
	var out []holder
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		var h holder
		if h.key, err = scanKey(s.keyCols, raw[:n]); err != nil {
			return nil, err
		}
		if withIncoming {
			if h.incoming, err = scanKey(s.keyCols, raw[n:2*n]); err != nil {
				return nil, err
			}
		}
		h.values = string(raw[width-1])
		out = append(out, h)
	}
	return out, rows.Err()
}

// checkWhole fails while a displaced row is missing from the shadow. Under
// a lock with the stream drained nothing more can be displaced, so the
// caller's next attempt, which copies them back first, can succeed.
func (e *Engine) checkWhole() error {
	if n := e.displaced.len(); n > 0 {
		return fmt.Errorf("%d row(s) displaced by unique key conflicts are not copied back yet", n)
	}
	return nil
}

// Restore copies the displaced rows again from the source, as they are
// now, and returns how many were pending. Copying one back may displace
// others, which the next call restores.
func (e *Engine) Restore(ctx context.Context) (int, error) {
	s := e.rows
	pending := e.displaced.list()
	if len(pending) > 0 {
		e.log.Info("copying back rows displaced by transient unique key conflicts", zap.Int("rows", len(pending)))
	}
	for _, d := range pending {
		err := e.inTx(ctx, func(tx *sql.Tx) error {
			_, err := s.copyKeys(ctx, tx, func(k keySide) (string, []any) { return k.eq(d.key) })
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("copying back the row with key %s, displaced by a unique key conflict: %w", d.key, err)
		}
		e.displaced.done(d)
	}
	return len(pending), nil
}
