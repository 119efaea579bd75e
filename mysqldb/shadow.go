package mysqldb

import (
	"context"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/engine"
)

// colPair is one column copied from the source to the shadow.
type colPair struct{ src, dst *column }

// CreateShadow creates the shadow as a copy of the table's definition,
// applies the ALTER to it, and works out the column mapping and the key
// shared by both tables.
func (e *Engine) CreateShadow(ctx context.Context, c *alter.Clauses) (*engine.Plan, error) {
	n := e.names
	if err := e.dropLeftovers(ctx); err != nil {
		return nil, err
	}
	if _, err := e.meta.ExecContext(ctx, "CREATE TABLE "+e.qt(n.shadow)+" LIKE "+e.qt(n.table)); err != nil {
		return nil, fmt.Errorf("creating shadow table %s: %w", e.qt(n.shadow), err)
	}
	e.createdShadow = true
	if _, err := e.meta.ExecContext(ctx, "ALTER TABLE "+e.qt(n.shadow)+" "+c.Text); err != nil {
		return nil, &engine.Usage{Reason: fmt.Sprintf("the server rejected the ALTER on the shadow table: %v", err)}
	}
	sh, err := e.loadTable(ctx, n.shadow)
	if err != nil {
		return nil, err
	}
	e.shadow = sh
	if err := e.mapColumns(c); err != nil {
		return nil, err
	}
	if err := e.chooseKey(); err != nil {
		return nil, err
	}
	pos := map[*column]int{}
	for i := range e.src.Columns {
		pos[&e.src.Columns[i]] = i
	}
	e.rows = e.newSource()
	e.uniques = e.uniqueIndexes(pos, e.rows)
	var def string
	if err := e.meta.QueryRowContext(ctx, "SHOW CREATE TABLE "+e.qt(n.shadow)).Scan(new(string), &def); err != nil {
		return nil, fmt.Errorf("reading the shadow's definition: %w", err)
	}
	var est int64
	if err := e.meta.QueryRowContext(ctx, "SELECT COALESCE(TABLE_ROWS, 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
		e.cfg.Database, n.table).Scan(&est); err != nil {
		return nil, err
	}
	p := &engine.Plan{Schema: e.cfg.Database, Table: n.table, Shadow: n.shadow, Old: n.old,
		ShadowDefinition: def, Key: e.key.Columns, KeyName: e.key.Name, RowEstimate: est, Path: "online copy"}
	for _, m := range e.mapping {
		p.Columns = append(p.Columns, engine.ColumnMapping{Source: m.src.Name, Target: m.dst.Name})
		if _, _, ok := verifyExprs(m); !ok {
			p.Unverified = append(p.Unverified, m.dst.Name)
		}
	}
	return p, nil
}

// dropLeftovers drops what the --initially-drop flags allow. A dry run
// drops only osc's scratch tables (it needs the shadow's name), never an
// old table that may hold the only copy of the original data.
func (e *Engine) dropLeftovers(ctx context.Context) error {
	for _, lo := range e.leftovers() {
		exists, err := e.tableExists(ctx, lo.name)
		if err != nil {
			return err
		}
		if !exists || !lo.allowed {
			continue
		}
		if e.cfg.DryRun && lo.flag != "--initially-drop-shadow-table" {
			e.log.Warn("dry run: would drop this table left by an earlier run", zap.String("table", e.qt(lo.name)))
			continue
		}
		e.log.Warn("dropping table left by an earlier run", zap.String("table", e.qt(lo.name)))
		if _, err := e.meta.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.qt(lo.name)); err != nil {
			return fmt.Errorf("dropping leftover %s: %w", e.qt(lo.name), err)
		}
	}
	return nil
}

// mapColumns pairs every stored source column with the shadow column it
// becomes, following renames and leaving out dropped columns. Generated
// columns are computed by the shadow itself.
func (e *Engine) mapColumns(c *alter.Clauses) error {
	e.mapping = nil
	for i := range e.src.Columns {
		s := &e.src.Columns[i]
		target, ok := c.ShadowColumn(s.Name)
		if s.Generated || !ok {
			continue
		}
		d := e.shadow.column(target)
		if d == nil || d.Generated {
			continue
		}
		e.mapping = append(e.mapping, colPair{src: s, dst: d})
	}
	if len(e.mapping) == 0 {
		return refuse("the ALTER leaves no column shared by the table and its new version")
	}
	e.unfilled = map[string]bool{}
	for _, d := range e.shadow.Columns {
		e.unfilled[strings.ToLower(d.Name)] = true
	}
	for _, m := range e.mapping {
		delete(e.unfilled, strings.ToLower(m.dst.Name))
	}
	return nil
}

// chooseKey picks the first usable source key (PRIMARY first) whose
// columns all survive and form a usable unique key of the shadow that
// tells rows apart exactly as the source key does. That last part matters:
// a duplicate on the chunking key is the one warning osc ignores, so a key
// that the ALTER makes coarser (a case-insensitive collation, a shorter
// prefix) would silently merge distinct rows.
func (e *Engine) chooseKey() error {
	pairOf := map[string]colPair{}
	for _, m := range e.mapping {
		pairOf[strings.ToLower(m.src.Name)] = m
	}
	for _, k := range e.src.usableKeys() {
		for _, sk := range e.shadow.usableKeys() {
			if len(sk.Columns) != len(k.Columns) {
				continue
			}
			same := true
			for i, c := range k.Columns {
				m, ok := pairOf[strings.ToLower(c)]
				if !ok || !strings.EqualFold(m.dst.Name, sk.Columns[i]) || k.Prefix[i] != sk.Prefix[i] || !sameEquality(m.src, m.dst) {
					same = false
				}
			}
			if same {
				key := k
				e.key = &key
				e.shadowKeyName = sk.Name
				return nil
			}
		}
	}
	return refuse("the ALTER leaves no unique key over NOT NULL columns that the table and its new version share with the same types, collations and prefixes; osc needs one to copy and to apply changes: keep the primary key (or a unique key) unchanged in the ALTER")
}

var integerTypes = map[string]bool{"tinyint": true, "smallint": true, "mediumint": true, "int": true, "bigint": true}

// sameEquality reports whether two key columns consider the same values
// equal: the same collation and string type for strings of any length
// (CHAR pads, which matters under NO PAD collations), the same signedness
// for integers of any width (values that no longer fit warn, and warnings
// abort), otherwise the same type: BINARY pads, DECIMAL rounds.
func sameEquality(a, b *column) bool {
	switch {
	case a.Collation != b.Collation:
		return false
	case a.Charset != "":
		return a.DataType == b.DataType
	case integerTypes[a.DataType] && integerTypes[b.DataType]:
		return a.Unsigned == b.Unsigned
	}
	return a.ColumnType == b.ColumnType
}

// keyPairs are the column pairs of the chunking key, in key order.
func (e *Engine) keyPairs() []colPair {
	out := make([]colPair, 0, len(e.key.Columns))
	for _, c := range e.key.Columns {
		for _, m := range e.mapping {
			if strings.EqualFold(m.src.Name, c) {
				out = append(out, m)
			}
		}
	}
	return out
}

// FinishShadow has nothing to do: MySQL's shadow has its indexes from the
// start, and transient unique conflicts are handled by displacement.
func (e *Engine) FinishShadow(context.Context) error { return nil }
