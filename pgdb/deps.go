package pgdb

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/osc-dev/osc/engine"
)

// dependents are objects bound to the table by OID that osc cannot carry
// over to the new table at cut-over; each one is a reason to refuse.
type dependents struct{ blockers []string }

func (d *dependents) refusal() error {
	if len(d.blockers) == 0 {
		return nil
	}
	return &engine.Refusal{Reason: "objects bound to the table that osc cannot rebuild at cut-over: " + strings.Join(d.blockers, "; ")}
}

// loadDependents finds what would keep pointing at the original table
// after the swap. Views, foreign keys, triggers, policies, sequences,
// grants and publications are rebuilt by the cut-over; these are not.
func (e *Engine) loadDependents(ctx context.Context) (*dependents, error) {
	rows, err := e.pool.Query(ctx, `
		SELECT 'materialized view ' || v.oid::regclass::text || ' (recreate it after the migration)'
		FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
		WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1 AND v.relkind = 'm'
		UNION
		SELECT 'rule ' || quote_ident(rulename) || ' (drop it, migrate, create it again)'
		FROM pg_rewrite WHERE ev_class = $1
		UNION
		SELECT 'column ' || quote_ident(a.attname) || ' of ' || a.attrelid::regclass::text || ' has the table''s row type'
		FROM pg_attribute a JOIN pg_class c ON c.oid = $1
		WHERE a.atttypid = c.reltype AND NOT a.attisdropped AND a.attrelid <> $1
		UNION
		SELECT 'function ' || p.oid::regprocedure::text || ' takes or returns the table''s row type'
		FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid JOIN pg_class c ON c.oid = $1
		WHERE d.classid = 'pg_proc'::regclass AND d.refobjid = c.reltype
		ORDER BY 1`, e.src.oid)
	if err != nil {
		return nil, fmt.Errorf("reading objects that depend on the table: %w", err)
	}
	blockers, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reading objects that depend on the table: %w", err)
	}
	return &dependents{blockers: blockers}, nil
}

// checkDependentsOfChanged refuses an ALTER that drops a column a view,
// policy, trigger or foreign key uses, or changes the type of a column a
// view uses when other views depend on that view: the cut-over could not
// rebuild them on the new table.
func (e *Engine) checkDependentsOfChanged(ctx context.Context, tx pgx.Tx) error {
	var dropped, retyped []int
	for _, c := range e.src.columns {
		p := e.pairFor(c)
		name, kept := e.clauses.ShadowColumn(c.name)
		switch {
		case !kept:
			dropped = append(dropped, c.num)
		case p != nil && (p.dst.typ != c.typ || p.expr != q(c.name)):
			retyped = append(retyped, c.num)
		case p == nil && e.shadow.column(name) == nil:
			dropped = append(dropped, c.num)
		}
	}
	if len(dropped)+len(retyped) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `
		SELECT DISTINCT CASE
			WHEN d.classid = 'pg_rewrite'::regclass THEN
				(SELECT 'view ' || r.ev_class::regclass::text FROM pg_rewrite r WHERE r.oid = d.objid AND r.ev_class <> $1
					AND (d.refobjsubid = ANY($2) OR EXISTS (SELECT FROM pg_depend d2 JOIN pg_rewrite r2 ON r2.oid = d2.objid
						WHERE d2.classid = 'pg_rewrite'::regclass AND d2.refobjid = r.ev_class AND r2.ev_class <> r.ev_class)))
			WHEN NOT d.refobjsubid = ANY($2) THEN NULL
			WHEN d.classid = 'pg_policy'::regclass THEN
				(SELECT 'policy ' || quote_ident(polname) FROM pg_policy WHERE oid = d.objid)
			WHEN d.classid = 'pg_trigger'::regclass THEN
				(SELECT 'trigger ' || quote_ident(tgname) FROM pg_trigger WHERE oid = d.objid AND NOT tgisinternal)
			WHEN d.classid = 'pg_constraint'::regclass THEN
				(SELECT 'foreign key ' || quote_ident(conname) || ' of ' || conrelid::regclass::text FROM pg_constraint WHERE oid = d.objid AND contype = 'f')
			END
		FROM pg_depend d
		WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1 AND d.refobjsubid = ANY($2 || $3)`,
		e.src.oid, dropped, retyped)
	if err != nil {
		return fmt.Errorf("reading objects that use the changed columns: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[*string])
	if err != nil {
		return fmt.Errorf("reading objects that use the changed columns: %w", err)
	}
	var users []string
	for _, f := range found {
		if f != nil {
			users = append(users, *f)
		}
	}
	if len(users) == 0 {
		return nil
	}
	return &engine.Refusal{Reason: "the ALTER drops or changes the type of columns that other objects use, which osc could not rebuild on the new table at cut-over: " +
		strings.Join(users, ", ") + "; drop them first and create them again after the migration"}
}
