package mysqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/osc-dev/osc/replication/binlog"
)

type column struct {
	Name       string
	DataType   string // information_schema DATA_TYPE, lower case
	ColumnType string // full type, e.g. "int(10) unsigned"
	Charset    string // "" for non-string types
	Collation  string
	Nullable   bool
	Unsigned   bool
	Generated  bool
}

type index struct {
	Name    string
	Unique  bool
	Columns []string
	Prefix  []int // per column: the prefix length, 0 for the whole value
}

type table struct {
	Name    string
	Columns []column
	Indexes []index // PRIMARY first
}

func (t *table) column(name string) *column {
	for i := range t.Columns {
		if strings.EqualFold(t.Columns[i].Name, name) {
			return &t.Columns[i]
		}
	}
	return nil
}

// errNoTable is returned by loadTable when the table does not exist.
var errNoTable = errors.New("no such table")

// loadTable reads a base table's columns and indexes.
func (e *Engine) loadTable(ctx context.Context, name string) (*table, error) {
	var kind string
	err := e.meta.QueryRowContext(ctx,
		"SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
		e.cfg.Database, name).Scan(&kind)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoTable
	}
	if err != nil {
		return nil, fmt.Errorf("looking up table %s: %w", e.qt(name), err)
	}
	if kind != "BASE TABLE" {
		return nil, fmt.Errorf("%s is a %s, not a base table", e.qt(name), strings.ToLower(kind))
	}
	t := &table{Name: name}
	rows, err := e.meta.QueryContext(ctx, `SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE,
		COALESCE(CHARACTER_SET_NAME, ''), COALESCE(COLLATION_NAME, ''), IS_NULLABLE = 'YES',
		EXTRA LIKE '%GENERATED%'
		FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`,
		e.cfg.Database, name)
	if err != nil {
		return nil, fmt.Errorf("reading columns of %s: %w", e.qt(name), err)
	}
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.Name, &c.DataType, &c.ColumnType, &c.Charset, &c.Collation, &c.Nullable, &c.Generated); err != nil {
			rows.Close()
			return nil, err
		}
		c.Unsigned = strings.Contains(strings.ToLower(c.ColumnType), "unsigned")
		t.Columns = append(t.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = e.meta.QueryContext(ctx, `SELECT INDEX_NAME, NON_UNIQUE = 0, COLUMN_NAME, COALESCE(SUB_PART, 0)
		FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
		ORDER BY INDEX_NAME <> 'PRIMARY', INDEX_NAME, SEQ_IN_INDEX`, e.cfg.Database, name)
	if err != nil {
		return nil, fmt.Errorf("reading indexes of %s: %w", e.qt(name), err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, col string
		var unique bool
		var prefix int
		if err := rows.Scan(&name, &unique, &col, &prefix); err != nil {
			return nil, err
		}
		if n := len(t.Indexes); n == 0 || t.Indexes[n-1].Name != name {
			t.Indexes = append(t.Indexes, index{Name: name, Unique: unique})
		}
		ix := &t.Indexes[len(t.Indexes)-1]
		ix.Columns = append(ix.Columns, col)
		ix.Prefix = append(ix.Prefix, prefix)
	}
	return t, rows.Err()
}

// usableKeys are the unique indexes whose columns are all NOT NULL, stored
// (not generated) and compared exactly (not FLOAT/DOUBLE, whose text form
// does not round-trip): they identify a row, so they can chunk the copy
// and address rows in the applier. PRIMARY comes first.
func (t *table) usableKeys() []index {
	var out []index
	for _, ix := range t.Indexes {
		if !ix.Unique {
			continue
		}
		ok := true
		for _, c := range ix.Columns {
			col := t.column(c)
			if col == nil || col.Nullable || col.Generated || col.DataType == "float" || col.DataType == "double" {
				ok = false
			}
		}
		if ok {
			out = append(out, ix)
		}
	}
	return out
}

var (
	enumRe   = regexp.MustCompile(`^(?i)(enum|set)\((.*)\)`)
	binaryRe = regexp.MustCompile(`^(?i)binary\((\d+)\)`)
)

// binlogColumns describes the source columns to the binlog reader, which
// needs the schema to undo what the binlog loses (signedness, ENUM/SET
// members, BINARY padding).
func (t *table) binlogColumns() []binlog.Column {
	out := make([]binlog.Column, len(t.Columns))
	for i, c := range t.Columns {
		bc := binlog.Column{Name: c.Name, DataType: c.DataType, Unsigned: c.Unsigned}
		if m := enumRe.FindStringSubmatch(c.ColumnType); m != nil {
			bc.Values = parseQuotedList(m[2])
		}
		if m := binaryRe.FindStringSubmatch(c.ColumnType); m != nil {
			bc.Length, _ = strconv.Atoi(m[1])
		}
		out[i] = bc
	}
	return out
}

// parseQuotedList parses the member list of an ENUM/SET column type as
// information_schema shows it: 'a','b”c' (quotes doubled inside).
func parseQuotedList(s string) []string {
	var out []string
	var cur strings.Builder
	in := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case !in && ch == '\'':
			in = true
		case in && ch == '\'' && i+1 < len(s) && s[i+1] == '\'':
			cur.WriteByte('\'')
			i++
		case in && ch == '\'':
			in = false
			out = append(out, cur.String())
			cur.Reset()
		case in:
			cur.WriteByte(ch)
		}
	}
	return out
}
