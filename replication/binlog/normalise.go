package binlog

import (
	"fmt"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// convFunc turns one non-NULL value decoded by go-mysql into its normalised
// form (int64, uint64, float64, string or []byte).
type convFunc func(v any) (any, error)

// normaliser fixes the values of one table's row images using the table's
// own definition (cfg.Columns), never the binlog's optional row metadata:
// MariaDB logs none by default, so unsigned integers arrive as signed Go
// integers, ENUM/SET as ordinals/bitmasks and BINARY(n) without its
// trailing zero bytes.
type normaliser struct {
	cols []Column
	conv []convFunc
}

func newNormaliser(cols []Column) (*normaliser, error) {
	n := &normaliser{cols: cols, conv: make([]convFunc, len(cols))}
	for i, c := range cols {
		f, err := converterFor(c)
		if err != nil {
			return nil, err
		}
		n.conv[i] = f
	}
	return n, nil
}

// row normalises a full row image in place and returns it. The image must
// have exactly one value per column of the table.
func (n *normaliser) row(vals []any) ([]any, error) {
	if len(vals) != len(n.conv) {
		return nil, fmt.Errorf("row image has %d columns, the table has %d", len(vals), len(n.conv))
	}
	for i, v := range vals {
		if v == nil {
			continue
		}
		out, err := n.conv[i](v)
		if err != nil {
			c := n.cols[i]
			return nil, fmt.Errorf("column `%s` (%s): %w", c.Name, c.DataType, err)
		}
		vals[i] = out
	}
	return vals, nil
}

func unexpected(v any) error {
	return fmt.Errorf("unexpected binlog value %v of Go type %T", v, v)
}

// converterFor returns the converter of one column, chosen once from its
// definition.
func converterFor(c Column) (convFunc, error) {
	switch strings.ToLower(c.DataType) {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint":
		if c.Unsigned {
			return unsignedConv(intMask(c.DataType)), nil
		}
		return signedConv, nil
	case "year":
		return signedConv, nil
	case "bit":
		return bitConv, nil
	case "enum":
		return enumConv(c.Values), nil
	case "set":
		if len(c.Values) > 64 {
			return nil, fmt.Errorf("column `%s`: SET with %d members (at most 64)", c.Name, len(c.Values))
		}
		return setConv(c.Values), nil
	case "float", "double", "real", "double precision":
		return floatConv, nil
	case "decimal", "numeric", "dec", "fixed",
		"date", "datetime", "timestamp", "time":
		return exactStringConv, nil
	case "char", "varchar", "tinytext", "text", "mediumtext", "longtext":
		return textConv, nil
	case "json":
		return jsonConv, nil
	case "binary":
		return binaryConv(c.Length), nil
	case "inet6", "uuid":
		// MariaDB's fixed 16-byte types lose trailing zero bytes like BINARY.
		return binaryConv(16), nil
	case "inet4":
		return binaryConv(4), nil
	case "varbinary", "tinyblob", "blob", "mediumblob", "longblob",
		"geometry", "point", "linestring", "polygon", "multipoint",
		"multilinestring", "multipolygon", "geometrycollection", "geomcollection":
		return bytesConv, nil
	}
	// Types osc does not know by name: pass the
	// decoded value through as long as it is one of the neutral Go types.
	return genericConv, nil
}

func intMask(dataType string) uint64 {
	switch strings.ToLower(dataType) {
	case "tinyint":
		return 0xFF
	case "smallint":
		return 0xFFFF
	case "mediumint":
		return 0xFFFFFF
	case "int", "integer":
		return 0xFFFFFFFF
	}
	return ^uint64(0)
}

// asInt64 returns a signed Go integer widened to int64.
func asInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case int:
		return int64(x), true
	}
	return 0, false
}

// asUint64 returns an unsigned Go integer widened to uint64.
func asUint64(v any) (uint64, bool) {
	switch x := v.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case uint:
		return uint64(x), true
	}
	return 0, false
}

func signedConv(v any) (any, error) {
	if i, ok := asInt64(v); ok {
		return i, nil
	}
	if u, ok := asUint64(v); ok && u <= 1<<63-1 {
		return int64(u), nil
	}
	return nil, unexpected(v)
}

// unsignedConv reinterprets the two's complement of a signed value (no row
// metadata: go-mysql decodes every integer as signed, MEDIUMINT
// sign-extended from 24 bits) as the column's unsigned width. Values
// already decoded as unsigned (servers that log signedness) pass through.
func unsignedConv(mask uint64) convFunc {
	return func(v any) (any, error) {
		if i, ok := asInt64(v); ok {
			return uint64(i) & mask, nil
		}
		if u, ok := asUint64(v); ok {
			return u, nil
		}
		return nil, unexpected(v)
	}
}

func bitConv(v any) (any, error) {
	if i, ok := asInt64(v); ok {
		return uint64(i), nil
	}
	if u, ok := asUint64(v); ok {
		return u, nil
	}
	return nil, unexpected(v)
}

func enumConv(members []string) convFunc {
	return func(v any) (any, error) {
		i, ok := asInt64(v)
		if !ok {
			if s, isStr := v.(string); isStr {
				return s, nil
			}
			return nil, unexpected(v)
		}
		if i == 0 {
			// The error value '' that a permissive sql_mode stores for an
			// unknown member. No statement writes index 0 without a
			// warning, and it would land on a real '' member if there is
			// one: stop rather than change the value.
			return nil, fmt.Errorf("ENUM holds the error value (index 0, stored under a permissive sql_mode), which osc cannot write back exactly; fix the row (UPDATE it to a member) and rerun")
		}
		if i < 0 || i > int64(len(members)) {
			return nil, fmt.Errorf("ENUM ordinal %d out of range (%d members)", i, len(members))
		}
		return members[i-1], nil
	}
}

func setConv(members []string) convFunc {
	var valid uint64
	if len(members) == 64 {
		valid = ^uint64(0)
	} else {
		valid = 1<<uint(len(members)) - 1
	}
	return func(v any) (any, error) {
		var bits uint64
		if i, ok := asInt64(v); ok {
			bits = uint64(i)
		} else if u, ok := asUint64(v); ok {
			bits = u
		} else if s, ok := v.(string); ok {
			return s, nil
		} else {
			return nil, unexpected(v)
		}
		if bits&^valid != 0 {
			return nil, fmt.Errorf("SET bitmask %#x has bits beyond its %d members", bits, len(members))
		}
		if bits == 0 {
			return "", nil
		}
		var b strings.Builder
		for j, m := range members {
			if bits&(1<<uint(j)) == 0 {
				continue
			}
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(m)
		}
		return b.String(), nil
	}
}

func floatConv(v any) (any, error) {
	switch x := v.(type) {
	case float32:
		return float64(x), nil
	case float64:
		return x, nil
	}
	return nil, unexpected(v)
}

// exactStringConv keeps go-mysql's exact text of DECIMAL and temporal
// values (ParseTime and UseDecimal are off).
func exactStringConv(v any) (any, error) {
	if s, ok := v.(string); ok {
		return s, nil
	}
	return nil, unexpected(v)
}

// textConv returns character data as a string holding the raw bytes in the
// column's charset (no transcoding). go-mysql decodes CHAR/VARCHAR as string
// and the TEXT family (and MariaDB's JSON, a LONGTEXT) as []byte.
func textConv(v any) (any, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case []byte:
		return string(x), nil
	}
	return nil, unexpected(v)
}

// jsonConv handles MySQL's native JSON, which go-mysql renders as text
// (RenderJSONAsMySQLText). An empty binary document, which MySQL reads as
// the JSON null literal, arrives as an empty []byte. (MariaDB's JSON is a
// LONGTEXT, reported as "longtext" by information_schema.)
func jsonConv(v any) (any, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case []byte:
		if len(x) == 0 {
			return "null", nil
		}
		return string(x), nil
	}
	return nil, unexpected(v)
}

func bytesConv(v any) (any, error) {
	switch x := v.(type) {
	case []byte:
		return x, nil
	case string:
		return []byte(x), nil
	}
	return nil, unexpected(v)
}

// binaryConv restores the trailing 0x00 bytes of BINARY(n), which the
// binlog strips.
func binaryConv(n int) convFunc {
	return func(v any) (any, error) {
		var src string
		switch x := v.(type) {
		case string:
			src = x
		case []byte:
			src = string(x)
		default:
			return nil, unexpected(v)
		}
		size := max(n, len(src))
		b := make([]byte, size)
		copy(b, src)
		return b, nil
	}
}

func genericConv(v any) (any, error) {
	switch x := v.(type) {
	case string, []byte, float64, int64, uint64:
		return x, nil
	case float32:
		return float64(x), nil
	}
	if i, ok := asInt64(v); ok {
		return i, nil
	}
	if u, ok := asUint64(v); ok {
		return u, nil
	}
	return nil, unexpected(v)
}

// binlogTypes lists, per information_schema DATA_TYPE, the column types a
// table map may carry for it (the real type for MYSQL_TYPE_STRING columns).
// It catches a table whose definition no longer matches cfg.Columns even
// when the column count did not change.
var binlogTypes = map[string][]byte{
	"tinyint":    {mysql.MYSQL_TYPE_TINY},
	"smallint":   {mysql.MYSQL_TYPE_SHORT},
	"mediumint":  {mysql.MYSQL_TYPE_INT24},
	"int":        {mysql.MYSQL_TYPE_LONG},
	"integer":    {mysql.MYSQL_TYPE_LONG},
	"bigint":     {mysql.MYSQL_TYPE_LONGLONG},
	"decimal":    {mysql.MYSQL_TYPE_NEWDECIMAL, mysql.MYSQL_TYPE_DECIMAL},
	"numeric":    {mysql.MYSQL_TYPE_NEWDECIMAL, mysql.MYSQL_TYPE_DECIMAL},
	"float":      {mysql.MYSQL_TYPE_FLOAT},
	"double":     {mysql.MYSQL_TYPE_DOUBLE},
	"real":       {mysql.MYSQL_TYPE_DOUBLE},
	"bit":        {mysql.MYSQL_TYPE_BIT},
	"enum":       {mysql.MYSQL_TYPE_ENUM},
	"set":        {mysql.MYSQL_TYPE_SET},
	"char":       {mysql.MYSQL_TYPE_STRING},
	"binary":     {mysql.MYSQL_TYPE_STRING},
	"varchar":    {mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING},
	"varbinary":  {mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING},
	"tinytext":   {mysql.MYSQL_TYPE_BLOB},
	"text":       {mysql.MYSQL_TYPE_BLOB},
	"mediumtext": {mysql.MYSQL_TYPE_BLOB},
	"longtext":   {mysql.MYSQL_TYPE_BLOB},
	"tinyblob":   {mysql.MYSQL_TYPE_BLOB},
	"blob":       {mysql.MYSQL_TYPE_BLOB},
	"mediumblob": {mysql.MYSQL_TYPE_BLOB},
	"longblob":   {mysql.MYSQL_TYPE_BLOB},
	"json":       {mysql.MYSQL_TYPE_JSON, mysql.MYSQL_TYPE_BLOB},
	"date":       {mysql.MYSQL_TYPE_DATE, mysql.MYSQL_TYPE_NEWDATE},
	"datetime":   {mysql.MYSQL_TYPE_DATETIME2, mysql.MYSQL_TYPE_DATETIME},
	"timestamp":  {mysql.MYSQL_TYPE_TIMESTAMP2, mysql.MYSQL_TYPE_TIMESTAMP},
	"time":       {mysql.MYSQL_TYPE_TIME2, mysql.MYSQL_TYPE_TIME},
	"year":       {mysql.MYSQL_TYPE_YEAR},
}

// realType returns a table-map column's type, resolving ENUM/SET/CHAR
// that the binlog logs as MYSQL_TYPE_STRING with the real type in the
// metadata's high byte.
func realType(tp byte, meta uint16) byte {
	if tp == mysql.MYSQL_TYPE_STRING && meta >= 256 {
		b0 := byte(meta >> 8)
		if b0&0x30 != 0x30 {
			// CHAR longer than 255 bytes: the high bits hold part of the length.
			return b0 | 0x30
		}
		return b0
	}
	return tp
}

// checkColumnTypes reports the first column whose binlog type does not fit
// its definition in cfg.Columns. Types osc does not list are not checked.
func checkColumnTypes(cols []Column, types []byte, meta []uint16) error {
	for i, c := range cols {
		if i >= len(types) || i >= len(meta) {
			break
		}
		want, ok := binlogTypes[strings.ToLower(c.DataType)]
		if !ok {
			continue
		}
		got := realType(types[i], meta[i])
		match := false
		for _, w := range want {
			if got == w {
				match = true
				break
			}
		}
		if !match {
			return fmt.Errorf("column %d `%s` is %s in the table definition but has binlog type %d", i+1, c.Name, c.DataType, got)
		}
	}
	return nil
}
