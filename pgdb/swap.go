package pgdb

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/cutover"
)

// Swap is one cut-over attempt, in one transaction: lock the table
// against everything (waiting at most lockTimeout), drain the stream to a
// fence, rename both tables and rebuild on the new table what binds to the
// original by OID. Any failure rolls all of it back: the original stays
// in place, unchanged. Foreign keys are added NOT VALID and validated, and
// the table analyzed, after the commit.
func (e *Engine) Swap(ctx context.Context, lockTimeout time.Duration, drain func(context.Context) error) error {
	tx, err := e.lockTx(ctx, lockTimeout)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(lockTimeout)
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "LOCK TABLE ONLY "+e.qt(e.src.name)+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		return e.lockErr("locking the table for the cut-over", err)
	}
	locked := time.Now()
	if err := e.checkUnchanged(ctx, tx); err != nil {
		return cutover.Permanent(err)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	err = drain(dctx)
	cancel()
	if err != nil {
		return fmt.Errorf("draining the change stream at cut-over: %w", err)
	}
	r, err := e.rebuildPlan(ctx, tx)
	if err != nil {
		return fmt.Errorf("reading what to rebuild on the new table: %w", err)
	}
	for _, st := range r.during {
		if err := st.run(ctx, tx); err != nil {
			err = e.lockErr(fmt.Sprintf("cut-over statement %q", st.sql), err)
			if !isLockTimeout(err) {
				// Another attempt would fail the same way.
				err = cutover.Permanent(fmt.Errorf("%w; the original table is in place with all its dependents: fix the cause (or drop the dependent object) and rerun", err))
			}
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing the cut-over: %w", err)
	}
	e.log.Info("tables swapped", zap.Duration("locked", time.Since(locked)), zap.Int("statements", len(r.during)))
	for _, stmt := range r.after {
		if _, err := e.pool.Exec(ctx, stmt); err != nil {
			e.log.Warn("after the cut-over: a statement failed; run it by hand", zap.String("sql", stmt), zap.String("error", pgMessage(err)))
		}
	}
	return nil
}

// checkUnchanged compares, under the cut-over lock, the table's columns
// and indexes with those the run started from. The stream reports DDL only
// with the next row change, so DDL not followed by a write would otherwise
// go unnoticed and be undone by the swap.
func (e *Engine) checkUnchanged(ctx context.Context, tx querier) error {
	now, err := e.loadTable(ctx, tx, e.src.name)
	if err != nil {
		return fmt.Errorf("reading the table's definition at cut-over: %w", err)
	}
	sig := func(t *table) string {
		var b strings.Builder
		for _, c := range t.columns {
			fmt.Fprintf(&b, "%s %s %v %s;", c.name, c.typ, c.generated, c.identity)
		}
		for _, x := range t.indexes {
			fmt.Fprintf(&b, "%s %s;", x.name, x.definition)
		}
		return b.String()
	}
	if now.oid != e.src.oid || sig(now) != sig(e.src) {
		return errDefinitionChanged
	}
	def, err := e.definitionSig(ctx, tx, now.oid)
	if err != nil {
		return fmt.Errorf("reading the table's definition at cut-over: %w", err)
	}
	if def != e.srcDef {
		return errDefinitionChanged
	}
	return nil
}

// definitionSig prints what else the shadow took from the table when it
// was created and the cut-over does not carry over: each column's NOT
// NULL, default and collation, and the constraints but foreign keys (which
// the cut-over rebuilds from the catalog).
func (e *Engine) definitionSig(ctx context.Context, db querier, oid uint32) (string, error) {
	var sig string
	err := db.QueryRow(ctx, `SELECT concat_ws(E'\n',
		(SELECT string_agg(quote_ident(a.attname) || ' ' || a.attnotnull::text || ' ' || a.attcollation::text
				|| coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), ''), E'\n' ORDER BY a.attnum)
			FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
			WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped),
		(SELECT string_agg(quote_ident(conname) || ' ' || pg_get_constraintdef(oid), E'\n' ORDER BY conname)
			FROM pg_constraint WHERE conrelid = $1 AND contype <> 'f'))`, oid).Scan(&sig)
	return sig, err
}

var errDefinitionChanged = errors.New("the table's definition changed during the run (DDL by someone else): osc stops rather than swap in a table built from the old definition; rerun the migration")

// rebuild is the cut-over's SQL: during runs in the swap transaction,
// after once it committed.
type rebuild struct {
	during []step
	after  []string
}

// step is a statement; when it fails and has a fallback, the fallback's
// statements run instead.
type step struct {
	sql      string
	fallback []string
}

func (st step) run(ctx context.Context, tx pgx.Tx) error {
	if st.fallback == nil {
		_, err := tx.Exec(ctx, st.sql)
		return err
	}
	if _, err := tx.Exec(ctx, "SAVEPOINT osc_step"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, st.sql); err == nil {
		return nil
	}
	if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT osc_step"); err != nil {
		return err
	}
	for _, f := range st.fallback {
		if _, err := tx.Exec(ctx, f); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	return nil
}

func (r *rebuild) add(s ...string) {
	for _, x := range s {
		r.during = append(r.during, step{sql: x})
	}
}

// rebuildPlan reads, under the cut-over lock, what binds to the original
// table by OID and writes the statements that carry it over. Definitions
// are read before the renames, so with the empty search_path they name
// the table as schema.table, which after the renames is the new table.
func (e *Engine) rebuildPlan(ctx context.Context, tx pgx.Tx) (*rebuild, error) {
	r := &rebuild{}
	schema, table, shadow, old := q(e.cfg.Schema), e.qt(e.src.name), e.qt(e.names.shadow), e.qt(e.names.old)
	oldOID := e.src.oid
	var newOID uint32
	if err := tx.QueryRow(ctx, "SELECT $1::regclass::oid", shadow).Scan(&newOID); err != nil {
		return nil, err
	}
	// What the definitions below reference must be read first.
	views, err := collect(ctx, tx, `
		SELECT DISTINCT v.oid::regclass::text, pg_get_viewdef(v.oid), coalesce(array_to_string(v.reloptions, ', '), ''),
			quote_ident(pg_get_userbyid(v.relowner)), v.oid::text
		FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid JOIN pg_class v ON v.oid = rw.ev_class
		WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1 AND v.relkind = 'v' AND v.oid <> $1`, 5, oldOID)
	if err != nil {
		return nil, err
	}
	recreate := map[string][]string{} // view → statements rebuilding it from scratch
	for _, v := range views {
		if recreate[v[0]], err = e.recreateView(ctx, tx, v); err != nil {
			return nil, err
		}
	}
	ownFKs, err := collect(ctx, tx, `SELECT quote_ident(conname), pg_get_constraintdef(oid), convalidated::text
		FROM pg_constraint WHERE conrelid = $1 AND contype = 'f' ORDER BY conname`, 3, oldOID)
	if err != nil {
		return nil, err
	}
	childFKs, err := collect(ctx, tx, `SELECT quote_ident(conname), conrelid::regclass::text, pg_get_constraintdef(oid), convalidated::text
		FROM pg_constraint WHERE confrelid = $1 AND conrelid <> $1 AND contype = 'f' ORDER BY 2, 1`, 4, oldOID)
	if err != nil {
		return nil, err
	}
	triggers, err := collect(ctx, tx, `SELECT quote_ident(tgname), pg_get_triggerdef(oid), tgenabled::text
		FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY tgname`, 3, oldOID)
	if err != nil {
		return nil, err
	}
	policies, err := collect(ctx, tx, `SELECT quote_ident(polname), CASE WHEN polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
			CASE polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
			array_to_string(ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END FROM unnest(polroles) r), ', '),
			coalesce(pg_get_expr(polqual, polrelid), ''), coalesce(pg_get_expr(polwithcheck, polrelid), '')
		FROM pg_policy WHERE polrelid = $1 ORDER BY polname`, 6, oldOID)
	if err != nil {
		return nil, err
	}
	grants, err := collect(ctx, tx, `SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
			a.privilege_type, a.is_grantable::text
		FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1`, 3, oldOID)
	if err != nil {
		return nil, err
	}
	colGrants, err := collect(ctx, tx, `SELECT at.attname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
			a.privilege_type, a.is_grantable::text
		FROM pg_attribute at, aclexplode(at.attacl) a WHERE at.attrelid = $1 AND at.attacl IS NOT NULL AND NOT at.attisdropped`, 4, oldOID)
	if err != nil {
		return nil, err
	}
	pubs, err := collect(ctx, tx, `SELECT quote_ident(p.pubname), coalesce(pg_get_expr(pr.prqual, pr.prrelid), ''),
			coalesce(array_to_string(ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = pr.prrelid AND attnum = ANY(pr.prattrs)), ','), '')
		FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = $1 AND p.pubname <> $2`, 3, oldOID, e.names.publication)
	if err != nil {
		return nil, err
	}
	seqs, err := collect(ctx, tx, `SELECT s.oid::regclass::text, quote_ident(s.relname), a.attname, d.deptype::text
		FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
		JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
		WHERE d.classid = 'pg_class'::regclass AND d.refobjid = $1 AND d.deptype IN ('a', 'i')`, 4, oldOID)
	if err != nil {
		return nil, err
	}
	newSeqs, err := collect(ctx, tx, `SELECT s.oid::regclass::text, a.attname
		FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
		JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
		WHERE d.classid = 'pg_class'::regclass AND d.refobjid = $1 AND d.deptype = 'i'`, 2, newOID)
	if err != nil {
		return nil, err
	}
	var comment *string
	var replIdent string
	if err := tx.QueryRow(ctx, "SELECT obj_description($1, 'pg_class'), relreplident::text FROM pg_class WHERE oid = $1", oldOID).Scan(&comment, &replIdent); err != nil {
		return nil, err
	}
	newIndexes, err := collect(ctx, tx, `SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1`, 1, newOID)
	if err != nil {
		return nil, err
	}

	// The renames.
	r.add("ALTER TABLE "+table+" RENAME TO "+q(e.names.old),
		"ALTER TABLE "+shadow+" RENAME TO "+q(e.src.name))
	onNew := map[string]bool{}
	for _, x := range newIndexes {
		onNew[x[0]] = true
	}
	indexNames := map[string]string{} // original name → name on the new table
	for _, x := range e.src.indexes {
		r.add("ALTER INDEX " + schema + "." + q(x.name) + " RENAME TO " + q(indexName("o", x.name)))
		if n := indexName("n", x.name); onNew[n] {
			indexNames[x.name] = n
		}
	}
	for orig, n := range indexNames {
		r.add("ALTER INDEX " + schema + "." + q(n) + " RENAME TO " + q(orig))
	}
	// The shadow's ALWAYS identity columns were BY DEFAULT for the applier.
	for _, c := range e.shadow.columns {
		if c.identity == "a" {
			r.add("ALTER TABLE " + table + " ALTER COLUMN " + q(c.name) + " SET GENERATED ALWAYS")
		}
	}
	// The owner first: it also hands the new table's identity sequences
	// to the owner, and a serial's sequence can only be linked to a table
	// of its own owner.
	r.add("ALTER TABLE " + table + " OWNER TO " + q(e.src.owner))
	// Sequences: a serial's sequence is shared and changes owner; an
	// identity column's own sequence continues where the original's is.
	for _, s := range seqs {
		seq, seqName, col, dep := s[0], s[1], s[2], s[3]
		dst, ok := e.clauses.ShadowColumn(col)
		if !ok {
			continue
		}
		if dep == "a" {
			r.add("ALTER SEQUENCE " + seq + " OWNED BY " + table + "." + q(dst))
			continue
		}
		for _, n := range newSeqs {
			if n[1] == dst {
				r.add("SELECT setval(" + lit(n[0]) + "::regclass, last_value, is_called) FROM " + seq)
				// The new sequence is the table owner's (from the owner
				// change above) with default privileges: give it the
				// original's, as nextval and currval check them.
				grants, err := collect(ctx, tx, `SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
						a.privilege_type, a.is_grantable::text
					FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1::text::regclass`, 3, seq)
				if err != nil {
					return nil, err
				}
				if len(grants) > 0 {
					r.add("REVOKE ALL ON SEQUENCE " + n[0] + " FROM " + q(e.src.owner))
				}
				for _, g := range grants {
					r.add("GRANT " + g[1] + " ON SEQUENCE " + n[0] + " TO " + g[0] + grantOption(g[2]))
				}
				r.add("ALTER SEQUENCE "+seq+" RENAME TO "+q(derived(unquoteSimple(seqName), "_old")),
					"ALTER SEQUENCE "+n[0]+" RENAME TO "+seqName)
			}
		}
	}
	// Foreign keys: the table's own move from the old table to the new one
	// (the old one's would go on acting on the parents' writes); the
	// children's are pointed at the new table.
	for _, fk := range ownFKs {
		r.add("ALTER TABLE "+old+" DROP CONSTRAINT "+fk[0],
			"ALTER TABLE "+table+" ADD CONSTRAINT "+fk[0]+" "+notValid(fk[1]))
		if fk[2] == "true" {
			r.after = append(r.after, "ALTER TABLE "+table+" VALIDATE CONSTRAINT "+fk[0])
		}
	}
	for _, fk := range childFKs {
		r.add("ALTER TABLE " + fk[1] + " DROP CONSTRAINT " + fk[0] + ", ADD CONSTRAINT " + fk[0] + " " + notValid(fk[2]))
		if fk[3] == "true" {
			r.after = append(r.after, "ALTER TABLE "+fk[1]+" VALIDATE CONSTRAINT "+fk[0])
		}
	}
	// Views keep their OID, owner, grants and dependents when replaced.
	// A view whose columns change type cannot be replaced: it is dropped
	// and created again, with its owner, grants and comments (a view that
	// other views use cannot be dropped, and stops the cut-over).
	for _, v := range views {
		r.during = append(r.during, step{sql: "CREATE OR REPLACE VIEW " + v[0] + viewBody(v[2], v[1]), fallback: recreate[v[0]]})
	}
	for _, t := range triggers {
		r.add(t[1])
		switch t[2] {
		case "D":
			r.add("ALTER TABLE " + table + " DISABLE TRIGGER " + t[0])
		case "R":
			r.add("ALTER TABLE " + table + " ENABLE REPLICA TRIGGER " + t[0])
		case "A":
			r.add("ALTER TABLE " + table + " ENABLE ALWAYS TRIGGER " + t[0])
		}
	}
	// Privileges, exactly as they were.
	if len(grants) > 0 {
		r.add("REVOKE ALL ON TABLE " + table + " FROM " + q(e.src.owner))
	}
	for _, g := range grants {
		r.add("GRANT " + g[1] + " ON TABLE " + table + " TO " + g[0] + grantOption(g[2]))
	}
	for _, g := range colGrants {
		if dst, ok := e.clauses.ShadowColumn(g[0]); ok {
			r.add("GRANT " + g[2] + " (" + q(dst) + ") ON TABLE " + table + " TO " + g[1] + grantOption(g[3]))
		}
	}
	if e.src.rowSecurity {
		r.add("ALTER TABLE " + table + " ENABLE ROW LEVEL SECURITY")
	}
	if e.src.forceRLS {
		r.add("ALTER TABLE " + table + " FORCE ROW LEVEL SECURITY")
	}
	for _, p := range policies {
		s := "CREATE POLICY " + p[0] + " ON " + table + " AS " + p[1] + " FOR " + p[2] + " TO " + p[3]
		if p[4] != "" {
			s += " USING (" + p[4] + ")"
		}
		if p[5] != "" {
			s += " WITH CHECK (" + p[5] + ")"
		}
		r.add(s)
	}
	if comment != nil {
		r.add("COMMENT ON TABLE " + table + " IS " + lit(*comment))
	} else {
		r.add("COMMENT ON TABLE " + table + " IS NULL")
	}
	switch replIdent {
	case "f":
		r.add("ALTER TABLE " + table + " REPLICA IDENTITY FULL")
	case "i":
		for _, x := range e.src.indexes {
			if x.replIdent && indexNames[x.name] != "" {
				r.add("ALTER TABLE " + table + " REPLICA IDENTITY USING INDEX " + q(x.name))
			}
		}
	}
	for _, p := range pubs {
		s := "ALTER PUBLICATION " + p[0] + " ADD TABLE ONLY " + table
		if p[2] != "" {
			var cols []string
			for _, c := range strings.Split(p[2], ",") {
				if dst, ok := e.clauses.ShadowColumn(c); ok {
					cols = append(cols, q(dst))
				}
			}
			s += " (" + strings.Join(cols, ", ") + ")"
		}
		if p[1] != "" {
			s += " WHERE (" + p[1] + ")"
		}
		r.add(s, "ALTER PUBLICATION "+p[0]+" DROP TABLE ONLY "+old)
	}
	r.after = append(r.after, "ANALYZE "+table)
	return r, nil
}

func viewBody(options, def string) string {
	with := ""
	if options != "" {
		with = " WITH (" + options + ")"
	}
	return with + " AS " + strings.TrimSuffix(strings.TrimSpace(def), ";")
}

// recreateView returns the statements that drop a view and create it
// again as it was: definition, options, owner, grants, comments.
func (e *Engine) recreateView(ctx context.Context, tx pgx.Tx, v []string) ([]string, error) {
	name, def, opts, owner, oid := v[0], v[1], v[2], v[3], v[4]
	stmts := []string{"DROP VIEW " + name, "CREATE VIEW " + name + viewBody(opts, def), "ALTER VIEW " + name + " OWNER TO " + owner}
	grants, err := collect(ctx, tx, `SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
			a.privilege_type, a.is_grantable::text
		FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1::oid`, 3, oid)
	if err != nil {
		return nil, err
	}
	if len(grants) > 0 {
		stmts = append(stmts, "REVOKE ALL ON TABLE "+name+" FROM "+owner)
	}
	for _, g := range grants {
		stmts = append(stmts, "GRANT "+g[1]+" ON TABLE "+name+" TO "+g[0]+grantOption(g[2]))
	}
	comments, err := collect(ctx, tx, `SELECT coalesce(quote_ident(a.attname), ''), d.description
		FROM pg_description d LEFT JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid AND d.objsubid > 0
		WHERE d.objoid = $1::oid AND d.classoid = 'pg_class'::regclass`, 2, oid)
	if err != nil {
		return nil, err
	}
	for _, c := range comments {
		if c[0] == "" {
			stmts = append(stmts, "COMMENT ON VIEW "+name+" IS "+lit(c[1]))
		} else {
			stmts = append(stmts, "COMMENT ON COLUMN "+name+"."+c[0]+" IS "+lit(c[1]))
		}
	}
	return stmts, nil
}

func grantOption(grantable string) string {
	if grantable == "true" {
		return " WITH GRANT OPTION"
	}
	return ""
}

// unquoteSimple undoes quote_ident for a name.
func unquoteSimple(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
	}
	return s
}

// collect reads rows of n text columns.
func collect(ctx context.Context, db querier, query string, n int, args ...any) ([][]string, error) {
	rows, err := db.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) ([]string, error) {
		vals := make([]string, n)
		ptrs := make([]any, n)
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		return vals, row.Scan(ptrs...)
	})
}

// Cleanup drops what the run created: the change stream's slot and
// publication always, the shadow unless it became the table, the old
// table unless kept.
func (e *Engine) Cleanup(ctx context.Context, swapped, keepOld bool) error {
	var errs []error
	if err := e.dropCapture(ctx, false); err != nil {
		errs = append(errs, err)
	}
	if e.createdShadow && !swapped {
		if _, err := e.pool.Exec(ctx, "DROP TABLE IF EXISTS "+e.qt(e.names.shadow)); err != nil {
			errs = append(errs, fmt.Errorf("dropping the shadow table %s: %w", e.qt(e.names.shadow), err))
		}
	}
	if swapped && !keepOld {
		if _, err := e.pool.Exec(ctx, "DROP TABLE "+e.qt(e.names.old)); err != nil {
			errs = append(errs, fmt.Errorf("dropping the old table %s (the migration itself succeeded): %s", e.qt(e.names.old), pgMessage(err)))
		}
	}
	return errors.Join(errs...)
}

// notValid adds NOT VALID to a constraint definition that lacks it.
func notValid(def string) string {
	if strings.HasSuffix(def, " NOT VALID") {
		return def
	}
	return def + " NOT VALID"
}
