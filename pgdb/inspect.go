package pgdb

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// table is what osc needs to know about a table from the catalog.
type table struct {
	oid         uint32
	name        string
	kind        string // pg_class.relkind
	persistence string // relpersistence: p, u, t
	isPartition bool
	replIdent   string // relreplident: d, n, f, i
	rowSecurity bool
	forceRLS    bool
	owner       string
	columns     []*column // non-dropped, attnum order
	indexes     []*index
}

type column struct {
	name      string
	num       int
	typeOID   uint32
	typ       string // format_type: the type as written in SQL
	generated bool   // attgenerated = 's'
	identity  string // attidentity: "", a (ALWAYS), d (BY DEFAULT)
}

type index struct {
	oid         uint32
	name        string
	primary     bool
	unique      bool
	replIdent   bool // indisreplident
	valid       bool
	partial     bool
	expressions bool
	columns     []string // key columns (no INCLUDE columns)
	constraint  string   // backing constraint's name, "" if none
	conType     string   // p, u, x
	definition  string   // pg_get_indexdef, or pg_get_constraintdef for a constraint
	comment     string
}

func (t *table) column(name string) *column {
	for _, c := range t.columns {
		if c.name == name {
			return c
		}
	}
	return nil
}

// replicated are the columns the change stream carries, in its order.
func (t *table) replicated() []*column {
	var cs []*column
	for _, c := range t.columns {
		if !c.generated {
			cs = append(cs, c)
		}
	}
	return cs
}

var errNoTable = errors.New("no such table")

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// loadTable reads a relation of the configured schema; errNoTable if absent.
func (e *Engine) loadTable(ctx context.Context, db querier, name string) (*table, error) {
	t := &table{name: name}
	err := db.QueryRow(ctx, `
		SELECT c.oid, c.relkind::text, c.relpersistence::text, c.relispartition, c.relreplident::text,
			c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, e.cfg.Schema, name).
		Scan(&t.oid, &t.kind, &t.persistence, &t.isPartition, &t.replIdent, &t.rowSecurity, &t.forceRLS, &t.owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNoTable
	}
	if err != nil {
		return nil, fmt.Errorf("reading the catalog entry of %s: %w", e.qt(name), err)
	}
	rows, err := db.Query(ctx, `
		SELECT attname, attnum, atttypid, format_type(atttypid, atttypmod), attgenerated = 's', attidentity::text
		FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("reading the columns of %s: %w", e.qt(name), err)
	}
	t.columns, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*column, error) {
		c := &column{}
		return c, r.Scan(&c.name, &c.num, &c.typeOID, &c.typ, &c.generated, &c.identity)
	})
	if err != nil {
		return nil, fmt.Errorf("reading the columns of %s: %w", e.qt(name), err)
	}
	rows, err = db.Query(ctx, `
		SELECT i.indexrelid, ic.relname, i.indisprimary, i.indisunique, i.indisreplident,
			i.indisvalid AND i.indisready, i.indpred IS NOT NULL, i.indexprs IS NOT NULL,
			ARRAY(SELECT a.attname FROM unnest(i.indkey[0:i.indnkeyatts-1]) WITH ORDINALITY k(n, o)
				JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)::text[],
			coalesce(con.conname, ''), coalesce(con.contype::text, ''),
			coalesce(pg_get_constraintdef(con.oid), pg_get_indexdef(i.indexrelid)),
			coalesce(obj_description(i.indexrelid, 'pg_class'), '')
		FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
		LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')
		WHERE i.indrelid = $1 ORDER BY ic.relname`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("reading the indexes of %s: %w", e.qt(name), err)
	}
	t.indexes, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*index, error) {
		x := &index{}
		return x, r.Scan(&x.oid, &x.name, &x.primary, &x.unique, &x.replIdent, &x.valid, &x.partial, &x.expressions,
			&x.columns, &x.constraint, &x.conType, &x.definition, &x.comment)
	})
	if err != nil {
		return nil, fmt.Errorf("reading the indexes of %s: %w", e.qt(name), err)
	}
	return t, nil
}

// chunkingKey picks the key osc chunks, applies and verifies by: the
// primary key, or the replica identity index. It must be the replica
// identity (or be covered by a FULL one), so that every UPDATE and DELETE
// in the stream carries its old values.
func (t *table) chunkingKey() (*index, string) {
	var pk, ri *index
	for _, x := range t.indexes {
		if x.primary {
			pk = x
		}
		if x.replIdent {
			ri = x
		}
	}
	switch t.replIdent {
	case "n":
		return nil, "its REPLICA IDENTITY is NOTHING, so the change stream would not say which row an UPDATE or DELETE changed; set REPLICA IDENTITY DEFAULT (with a primary key) or USING INDEX first"
	case "i":
		if ri == nil {
			return nil, "its REPLICA IDENTITY index is missing"
		}
		return ri, ""
	}
	if pk == nil {
		if t.replIdent == "f" {
			return nil, "it has no primary key to copy it by (REPLICA IDENTITY FULL alone is not enough); add a primary key first"
		}
		return nil, "it has no primary key, so once published the application's own UPDATE and DELETE would fail (and osc has no key to copy by); add a primary key or a REPLICA IDENTITY USING INDEX first"
	}
	return pk, ""
}
