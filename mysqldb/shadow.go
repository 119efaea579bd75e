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
	}
	return p, nil
}

func (e *Engine) dropLeftovers(ctx context.Context) error {
	var drop []string
	if e.cfg.InitiallyDropShadow {
		drop = append(drop, e.names.shadow, e.names.changelog)
	}
	if e.cfg.InitiallyDropOld {
		drop = append(drop, e.names.old)
	}
	for _, t := range drop {
		exists, err := e.tableExists(ctx, t)
		if err != nil {
			return err
		}
		if !exists {
			continue
		}
		e.log.Warn("dropping table left by an earlier run", zap.String("table", e.qt(t)))
		if _, err := e.meta.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.qt(t)); err != nil {
			return fmt.Errorf("dropping leftover %s: %w", e.qt(t), err)
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
	return nil
}

// chooseKey picks the first usable source key (PRIMARY first) whose
// columns all survive and form a usable unique key of the shadow too.
func (e *Engine) chooseKey() error {
	dstOf := map[string]string{}
	for _, m := range e.mapping {
		dstOf[strings.ToLower(m.src.Name)] = strings.ToLower(m.dst.Name)
	}
	for _, k := range e.src.usableKeys() {
		var want []string
		for _, c := range k.Columns {
			want = append(want, dstOf[strings.ToLower(c)])
		}
		for _, sk := range e.shadow.usableKeys() {
			if len(sk.Columns) != len(want) {
				continue
			}
			same := true
			for i, c := range sk.Columns {
				if strings.ToLower(c) != want[i] {
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
	return refuse("the ALTER leaves no unique key over NOT NULL columns that the table and its new version share; osc needs one to copy and to apply changes: keep the primary key (or a unique key) in the ALTER")
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
