package mysqldb

import (
	"context"
	"fmt"
	"strings"
	"time"

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
	if err := e.limitWorkers(ctx); err != nil {
		return nil, err
	}
	var def string
	if err := e.meta.QueryRowContext(ctx, "SHOW CREATE TABLE "+e.qt(n.shadow)).Scan(new(string), &def); err != nil {
		return nil, fmt.Errorf("reading the shadow's definition: %w", err)
	}
	if !e.cfg.DryRun && !e.cfg.IndexesDuringCopy {
		if err := e.deferIndexes(ctx, def); err != nil {
			return nil, err
		}
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

// deferIndexes drops the shadow's plain secondary indexes (KEY, not
// UNIQUE, FULLTEXT or SPATIAL) and keeps their definitions, as the server
// renders them, for FinishShadow. Inserting the copy's rows into a
// secondary index in key order of another index costs more than building
// it by sorting afterwards (on a 1M-row sysbench table, copying with KEY(k)
// took 9.5 s, without it 5.5 s and the build 1.1 s). Unique indexes stay:
// the copy and the applier rely on them to displace conflicting rows. Only
// InnoDB builds an index online, and an index a foreign key needs cannot
// be dropped, so such shadows keep theirs.
func (e *Engine) deferIndexes(ctx context.Context, def string) error {
	e.deferred = nil
	var engineName string
	var fks int
	err := e.meta.QueryRowContext(ctx, `SELECT ENGINE, (SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS
		WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?`,
		e.cfg.Database, e.names.shadow, e.cfg.Database, e.names.shadow).Scan(&engineName, &fks)
	if err != nil {
		return fmt.Errorf("reading the shadow's storage engine: %w", err)
	}
	if !strings.EqualFold(engineName, "InnoDB") || fks > 0 {
		return nil
	}
	var drops, names []string
	for _, line := range strings.Split(def, "\n") {
		name, ok := plainKeyName(line)
		if !ok {
			continue
		}
		e.deferred = append(e.deferred, strings.TrimSuffix(strings.TrimSpace(line), ","))
		drops = append(drops, "DROP KEY "+q(name))
		names = append(names, name)
	}
	if len(drops) == 0 {
		return nil
	}
	if _, err := e.meta.ExecContext(ctx, "ALTER TABLE "+e.qt(e.names.shadow)+" "+strings.Join(drops, ", ")); err != nil {
		return fmt.Errorf("dropping the shadow's secondary indexes until the copy is done: %w", err)
	}
	e.log.Info("the shadow's secondary indexes are built after the copy", zap.Strings("indexes", names))
	return nil
}

// plainKeyName returns the name of a non-unique index from a line of SHOW
// CREATE TABLE ("  KEY `name` (...)"), undoing the doubled backquotes.
func plainKeyName(line string) (string, bool) {
	rest, ok := strings.CutPrefix(line, "  KEY `")
	if !ok {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(rest); i++ {
		if rest[i] != '`' {
			b.WriteByte(rest[i])
			continue
		}
		if i+1 < len(rest) && rest[i+1] == '`' {
			b.WriteByte('`')
			i++
			continue
		}
		return b.String(), true
	}
	return "", false
}

// FinishShadow builds the secondary indexes deferIndexes dropped, in one
// online ALTER (the applier goes on writing to the shadow meanwhile), in
// their original order, so the shadow ends with the definition the ALTER
// gave it. Transient unique conflicts need nothing here: displacement
// handles them.
func (e *Engine) FinishShadow(ctx context.Context) error {
	if len(e.deferred) == 0 {
		return nil
	}
	adds := make([]string, len(e.deferred))
	for i, d := range e.deferred {
		adds[i] = "ADD " + d
	}
	began := time.Now()
	e.log.Info("building the shadow's secondary indexes", zap.Int("indexes", len(adds)))
	stmt := "ALTER TABLE " + e.qt(e.names.shadow) + " " + strings.Join(adds, ", ") + ", ALGORITHM=INPLACE, LOCK=NONE"
	if err := e.execKillable(ctx, stmt); err != nil {
		return fmt.Errorf("building the shadow's secondary indexes (the original table is untouched; rerun, or keep the indexes during the copy with --indexes-during-copy): %w", err)
	}
	e.deferred = nil
	e.log.Info("secondary indexes built", zap.Duration("took", time.Since(began)))
	return nil
}
