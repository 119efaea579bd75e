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

// A duplicate on a unique key other than the chunking key while applying
// an event is usually transient: the copy reads rows newer than the
// applier has reached, so when a value moves between rows (positions in a
// list swapped, an email handed on) the shadow can hold the newer owner
// while the applier replays the older one. The writer then removes the
// newer owner from the shadow, remembers its key as displaced, and redoes
// the change. Displaced rows are copied again from the source before
// verification and before every cut-over attempt, and the cut-over refuses
// to swap while any is missing. A duplicate that is real stays: the copy
// again collides, and the run stops naming it.

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

// uniqueLookup finds the shadow rows holding given values of one unique
// index other than the chunking key.
type uniqueLookup struct {
	srcIdx []int  // source row positions of the index's columns
	query  string // selects the holders' keys, excluding one key
}

// uniqueLookups covers the shadow's other unique indexes whose columns
// all come from the source; a conflict on any other index stays fatal.
func (e *Engine) uniqueLookups(pos map[*column]int, s *source) []uniqueLookup {
	var out []uniqueLookup
	var sel []string
	for _, m := range e.keyPairs() {
		sel = append(sel, keySelectExpr(m.dst))
	}
	self, _ := s.dst.eq(nil)
	notSelf := "NOT " + self
next:
	for _, ix := range e.shadow.Indexes {
		if !ix.Unique || ix.Name == e.shadowKeyName {
			continue
		}
		u := uniqueLookup{}
		var conds []string
		for _, c := range ix.Columns {
			m := e.pairByTarget(c)
			if m == nil {
				continue next
			}
			u.srcIdx = append(u.srcIdx, pos[m.src])
			conds = append(conds, q(m.dst.Name)+" = "+cmpExpr(m.src, m.dst))
		}
		u.query = "SELECT " + strings.Join(sel, ", ") + " FROM " + e.qt(e.names.shadow) + " WHERE " + strings.Join(conds, " AND ") +
			" AND " + notSelf + " FOR UPDATE"
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

// displace removes the shadow rows, other than the one with key self,
// that hold row's values of a unique index, and records their keys. It
// reports whether it removed any.
func (w *writer) displace(ctx context.Context, tx *sql.Tx, row []any, self copier.Key) (bool, error) {
	var found []copier.Key
	for _, u := range w.lookups {
		args := make([]any, 0, len(u.srcIdx)+len(self))
		hasNull := false
		for _, i := range u.srcIdx {
			hasNull = hasNull || row[i] == nil
			args = append(args, row[i])
		}
		if hasNull {
			continue // NULLs never collide
		}
		keys, err := w.readKeys(ctx, tx, u.query, append(args, self...)...)
		if err != nil {
			return false, fmt.Errorf("looking up the rows holding a unique value: %w", err)
		}
		found = append(found, keys...)
	}
	for _, k := range found {
		where, args := w.src.dst.eq(k)
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+w.e.qt(w.e.names.shadow)+" WHERE "+where, args...); err != nil {
			return false, err
		}
		w.e.displaced.add(k)
	}
	return len(found) > 0, nil
}

func (w *writer) readKeys(ctx context.Context, tx *sql.Tx, query string, args ...any) ([]copier.Key, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []copier.Key
	raw := make([]sql.RawBytes, len(w.src.keyCols))
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		k, err := scanKey(w.src.keyCols, raw)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// Restore copies the displaced rows again from the source, with the
// copy's locking read. A row that collides again returns the conflict,
// for the caller to retry once the applier has caught up.
func (e *Engine) Restore(ctx context.Context) error {
	s := e.newSource()
	pending := e.displaced.list()
	if len(pending) > 0 {
		e.log.Info("copying back rows displaced by transient unique key conflicts", zap.Int("rows", len(pending)))
	}
	for _, d := range pending {
		where, args := s.src.eq(d.key)
		err := e.inTx(ctx, func(tx *sql.Tx) error {
			_, err := s.copyWhere(ctx, tx, where, args)
			return err
		})
		if err != nil {
			return fmt.Errorf("copying again the row with key %s, displaced by a unique key conflict: %w", d.key, err)
		}
		e.displaced.done(d)
	}
	return nil
}
