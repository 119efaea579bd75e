package pgdb

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/engine"
)

// deferredIndex is a shadow index dropped after the ALTER and built again
// by FinishShadow, once the rows are in.
type deferredIndex struct {
	name       string
	constraint bool   // built with ALTER TABLE ... ADD CONSTRAINT
	definition string // constraint definition, or the whole CREATE INDEX
}

func (d deferredIndex) sql(shadow string) string {
	if d.constraint {
		return "ALTER TABLE " + shadow + " ADD CONSTRAINT " + q(d.name) + " " + d.definition
	}
	return d.definition
}

// indexName is the name an original index has on the shadow (kind "n")
// or, after cut-over, on the old table (kind "o"): deterministic, unique
// per original name, within 63 bytes.
func indexName(kind, orig string) string {
	h := fnv.New32a()
	h.Write([]byte(orig))
	s := fmt.Sprintf("_osc%s%08x_%s", kind, h.Sum32(), orig)
	if len(s) <= 63 {
		return s
	}
	cut := 63
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut]
}

// CreateShadow creates the shadow table with the original's columns,
// defaults, constraints and indexes, applies the clauses to it, and drops
// again every index but the key's (FinishShadow builds them after the
// copy). It all happens in one transaction: a dry run rolls it back and
// leaves nothing behind.
func (e *Engine) CreateShadow(ctx context.Context, c *alter.Clauses) (plan *engine.Plan, err error) {
	e.clauses = c
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil || e.cfg.DryRun {
			tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if err := e.createShadow(ctx, tx); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, "ALTER TABLE "+e.qt(e.names.shadow)+" "+c.Text); err != nil {
		return nil, &engine.Usage{Reason: fmt.Sprintf("the server rejected the ALTER on the shadow table: %s%s; nothing was changed", pgMessage(err), alterHint(err))}
	}
	if e.shadow, err = e.loadTable(ctx, tx, e.names.shadow); err != nil {
		return nil, err
	}
	if err := e.mapColumns(); err != nil {
		return nil, err
	}
	if err := e.checkDependentsOfChanged(ctx, tx); err != nil {
		return nil, err
	}
	keyIdx, err := e.shadowKey()
	if err != nil {
		return nil, err
	}
	if err := e.deferIndexes(ctx, tx, keyIdx); err != nil {
		return nil, err
	}
	plan = e.plan(ctx, tx)
	if !e.cfg.DryRun {
		if err := tx.Commit(ctx); err != nil {
			return nil, fmt.Errorf("creating the shadow table: %w", err)
		}
		e.createdShadow = true
		e.sql = newStatements(e)
	}
	return plan, nil
}

// createShadow creates the shadow with LIKE (everything but indexes, which
// get osc's names) and the original's storage settings.
func (e *Engine) createShadow(ctx context.Context, tx pgx.Tx) error {
	var opts, space string
	err := tx.QueryRow(ctx, `SELECT coalesce(array_to_string(c.reloptions, ', '), ''), coalesce(quote_ident(ts.spcname), '')
		FROM pg_class c LEFT JOIN pg_tablespace ts ON ts.oid = c.reltablespace WHERE c.oid = $1`, e.src.oid).Scan(&opts, &space)
	if err != nil {
		return err
	}
	stmt := "CREATE TABLE " + e.qt(e.names.shadow) + " (LIKE " + e.qt(e.src.name) + " INCLUDING ALL EXCLUDING INDEXES)"
	if opts != "" {
		stmt += " WITH (" + opts + ")"
	}
	if space != "" {
		stmt += " TABLESPACE " + space
	}
	if _, err := tx.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("creating the shadow table %s: %w", e.qt(e.names.shadow), err)
	}
	if _, err := tx.Exec(ctx, "COMMENT ON TABLE "+e.qt(e.names.shadow)+" IS "+lit(e.shadowComment())); err != nil {
		return err
	}
	for _, x := range e.src.indexes {
		if !x.valid {
			e.log.Warn("skipping an invalid index (a failed CREATE INDEX CONCURRENTLY?)", zap.String("index", x.name))
			continue
		}
		stmt, err := e.shadowIndexSQL(ctx, tx, x)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("creating index %s on the shadow table: %w", q(x.name), err)
		}
		if x.comment != "" {
			if _, err := tx.Exec(ctx, "COMMENT ON INDEX "+e.qt(indexName("n", x.name))+" IS "+lit(x.comment)); err != nil {
				return err
			}
		}
	}
	return nil
}

// shadowIndexSQL rewrites an original index's definition for the shadow.
func (e *Engine) shadowIndexSQL(ctx context.Context, tx pgx.Tx, x *index) (string, error) {
	name := indexName("n", x.name)
	if x.constraint != "" {
		return "ALTER TABLE " + e.qt(e.names.shadow) + " ADD CONSTRAINT " + q(name) + " " + x.definition, nil
	}
	// pg_get_indexdef prints "CREATE [UNIQUE] INDEX name ON [ONLY] table
	// USING ..."; replace exactly the head the server printed.
	var qi, qtab string
	if err := tx.QueryRow(ctx, "SELECT quote_ident($1), quote_ident($2) || '.' || quote_ident($3)", x.name, e.cfg.Schema, e.src.name).Scan(&qi, &qtab); err != nil {
		return "", err
	}
	for _, unique := range []string{"", "UNIQUE "} {
		for _, only := range []string{"", "ONLY "} {
			head := "CREATE " + unique + "INDEX " + qi + " ON " + only + qtab + " USING "
			if strings.HasPrefix(x.definition, head) {
				return "CREATE " + unique + "INDEX " + q(name) + " ON " + e.qt(e.names.shadow) + " USING " + x.definition[len(head):], nil
			}
		}
	}
	return "", fmt.Errorf("cannot read the definition of index %s: %q", q(x.name), x.definition)
}

// mapColumns pairs each source column with its shadow column. Generated
// columns are computed by the shadow, never copied.
func (e *Engine) mapColumns() error {
	e.mapping = nil
	for _, sc := range e.src.columns {
		name, ok := e.clauses.ShadowColumn(sc.name)
		if !ok {
			continue
		}
		dc := e.shadow.column(name)
		if dc == nil {
			return fmt.Errorf("the shadow table has no column %s for the table's column %s", q(name), q(sc.name))
		}
		if sc.generated || dc.generated {
			continue
		}
		e.mapping = append(e.mapping, colPair{src: sc, dst: dc, expr: usingExpr(e.clauses, sc.name)})
	}
	if len(e.mapping) == 0 {
		return &engine.Usage{Reason: "the ALTER leaves no column of the table to copy"}
	}
	return nil
}

func (e *Engine) pairFor(c *column) *colPair {
	for i := range e.mapping {
		if e.mapping[i].src == c {
			return &e.mapping[i]
		}
	}
	return nil
}

// shadowKey finds the chunking key in the shadow: a primary key or a
// unique, total, non-expression index on the key's columns, unchanged
// apart from integer widths (a changed type or collation would compare
// rows differently, and merge or split them).
func (e *Engine) shadowKey() (*index, error) {
	srcKey, _ := e.src.chunkingKey()
	e.key = nil
	var want []string
	for _, name := range srcKey.columns {
		c := e.src.column(name)
		p := e.pairFor(c)
		if p == nil {
			return nil, &engine.Refusal{Reason: fmt.Sprintf("the ALTER drops or recomputes column %s of the key %s, which osc copies and applies changes by; change the key in a separate migration", q(name), q(srcKey.name))}
		}
		if _, using := e.clauses.Using[name]; using || !sameKeyType(c.typ, p.dst.typ) {
			return nil, &engine.Refusal{Reason: fmt.Sprintf("the ALTER changes the type of key column %s (%s to %s), which would change how osc matches rows; change it in a separate migration", q(name), c.typ, p.dst.typ)}
		}
		e.key = append(e.key, c)
		want = append(want, p.dst.name)
	}
	for _, x := range e.shadow.indexes {
		if x.unique && !x.partial && !x.expressions && strings.Join(x.columns, "\x00") == strings.Join(want, "\x00") && (x.primary || x.constraint != "") {
			return x, nil
		}
	}
	return nil, &engine.Refusal{Reason: fmt.Sprintf("the ALTER drops the key %s, which osc copies and applies changes by; keep it, or change the key in a separate migration", q(srcKey.name))}
}

var integerTypes = map[string]bool{"smallint": true, "integer": true, "bigint": true}

func sameKeyType(a, b string) bool { return a == b || integerTypes[a] && integerTypes[b] }

// deferIndexes drops the shadow's indexes but the key's, remembering
// their definitions for FinishShadow. An index something else depends on
// (a foreign key the ALTER adds) stays.
func (e *Engine) deferIndexes(ctx context.Context, tx pgx.Tx, keep *index) error {
	e.deferred = nil
	for _, x := range e.shadow.indexes {
		if x == keep {
			continue
		}
		d := deferredIndex{name: x.name, constraint: x.constraint != "", definition: x.definition}
		drop := "DROP INDEX " + e.qt(x.name)
		if d.constraint {
			d.name = x.constraint
			drop = "ALTER TABLE " + e.qt(e.names.shadow) + " DROP CONSTRAINT " + q(x.constraint)
		}
		if _, err := tx.Exec(ctx, "SAVEPOINT defer_index"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, drop); err != nil {
			if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT defer_index"); rerr != nil {
				return rerr
			}
			e.log.Info("building an index before the copy, since other objects depend on it", zap.String("index", x.name), zap.String("reason", pgMessage(err)))
			continue
		}
		e.deferred = append(e.deferred, d)
	}
	return nil
}

// FinishShadow builds the deferred indexes. The applier waits meanwhile
// (the build locks the shadow against writes), and the copy is complete
// and caught up, so the shadow holds exactly the table's rows as of the
// stream's position: a unique index fails only over duplicates the table
// really holds.
func (e *Engine) FinishShadow(ctx context.Context) error {
	for _, d := range e.deferred {
		if _, err := e.pool.Exec(ctx, d.sql(e.qt(e.names.shadow))); err != nil {
			return e.explainIndexFailure(ctx, d, err)
		}
		if x := e.origIndex(d.name); x != nil && x.comment != "" {
			if _, err := e.pool.Exec(ctx, "COMMENT ON INDEX "+e.qt(d.name)+" IS "+lit(x.comment)); err != nil {
				return err
			}
		}
	}
	return nil
}

// origIndex is the original index a shadow index was made from.
func (e *Engine) origIndex(shadowName string) *index {
	for _, x := range e.src.indexes {
		if indexName("n", x.name) == shadowName {
			return x
		}
	}
	return nil
}

// explainIndexFailure turns a failed unique or exclusion index build into
// an error naming the rows' keys.
func (e *Engine) explainIndexFailure(ctx context.Context, d deferredIndex, err error) error {
	msg := fmt.Sprintf("building index %s on the shadow table: %s", q(d.name), pgMessage(err))
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "23P01") {
		msg = fmt.Sprintf("the table's rows violate the ALTER's unique or exclusion constraint %s: %s", q(d.name), pgMessage(err))
		if keys := e.duplicateKeys(ctx, d.name); keys != "" {
			msg += "; rows (key) holding the same values: " + keys
		}
		msg += "; no row was changed or dropped: fix the data or the ALTER and rerun"
	}
	return errors.New(msg)
}

// duplicateKeys lists keys of rows sharing values of a unique index the
// ALTER defines over plain columns, best effort.
func (e *Engine) duplicateKeys(ctx context.Context, name string) string {
	var cols []string
	for _, x := range e.shadow.indexes {
		if x.name == name || x.constraint == name {
			if x.expressions || x.partial {
				return ""
			}
			cols = x.columns
		}
	}
	if len(cols) == 0 {
		return ""
	}
	var qc, key []string
	for _, c := range cols {
		qc = append(qc, q(c))
	}
	for _, k := range e.key {
		key = append(key, q(e.pairFor(k).dst.name)+"::text")
	}
	list := strings.Join(qc, ", ")
	stmt := "SELECT concat_ws(',', " + strings.Join(key, ", ") + ") FROM ONLY " + e.qt(e.names.shadow) +
		" WHERE (" + list + ") IN (SELECT " + list + " FROM ONLY " + e.qt(e.names.shadow) + " GROUP BY " + list +
		" HAVING count(*) > 1) ORDER BY 1 LIMIT 10"
	rows, err := e.pool.Query(ctx, stmt)
	if err != nil {
		return ""
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return ""
	}
	for i := range keys {
		keys[i] = "(" + keys[i] + ")"
	}
	return strings.Join(keys, " ")
}

// plan describes the shadow as the server built it.
func (e *Engine) plan(ctx context.Context, tx pgx.Tx) *engine.Plan {
	p := &engine.Plan{
		Schema: e.cfg.Schema, Table: e.src.name, Shadow: e.names.shadow, Old: e.names.old,
		Path: "online copy (logical replication)",
	}
	srcKey, _ := e.src.chunkingKey()
	p.KeyName = srcKey.name
	for _, k := range e.key {
		p.Key = append(p.Key, k.name)
	}
	for _, m := range e.mapping {
		p.Columns = append(p.Columns, engine.ColumnMapping{Source: m.src.name, Target: m.dst.name})
	}
	var est float64
	tx.QueryRow(ctx, "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = $1", e.src.oid).Scan(&est)
	p.RowEstimate = int64(est)
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE %s (\n", e.qt(e.src.name))
	rows, err := tx.Query(ctx, `SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod),
			CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END ||
			CASE WHEN a.attidentity = 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
				WHEN a.attidentity = 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY'
				WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
				WHEN d.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, e.shadow.oid)
	if err == nil {
		var lines []string
		for rows.Next() {
			var n, t, x string
			if rows.Scan(&n, &t, &x) == nil {
				lines = append(lines, "  "+n+" "+t+x)
			}
		}
		rows.Close()
		crows, err := tx.Query(ctx, `SELECT quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint
			WHERE conrelid = $1 AND contype NOT IN ('p', 'u', 'x') ORDER BY conname`, e.shadow.oid)
		if err == nil {
			for crows.Next() {
				var n, d string
				if crows.Scan(&n, &d) == nil {
					lines = append(lines, "  CONSTRAINT "+n+" "+d)
				}
			}
			crows.Close()
		}
		b.WriteString(strings.Join(lines, ",\n"))
	}
	b.WriteString("\n);\n")
	for _, x := range e.shadow.indexes {
		name := x.name
		if o := e.origIndex(name); o != nil {
			name = o.name
		}
		if x.constraint != "" {
			fmt.Fprintf(&b, "ALTER TABLE %s ADD CONSTRAINT %s %s;\n", e.qt(e.src.name), q(name), x.definition)
		} else {
			fmt.Fprintf(&b, "-- index %s: %s;\n", q(name), x.definition)
		}
	}
	p.ShadowDefinition = b.String()
	return p
}

// pgMessage is the server's message with its detail and hint.
func pgMessage(err error) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err.Error()
	}
	s := pe.Message
	if pe.Detail != "" {
		s += " (" + pe.Detail + ")"
	}
	if pe.Hint != "" {
		s += " (hint: " + pe.Hint + ")"
	}
	return s
}

// alterHint explains failures caused by the shadow's own index names.
func alterHint(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42704" && strings.Contains(pe.Message, "constraint") {
		return "; osc's shadow table names the original's primary key, unique and exclusion constraints differently, so the ALTER cannot refer to them by name: drop such a constraint with a plain ALTER TABLE instead"
	}
	return ""
}
