package mysqldb

import (
	"database/sql"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/osc-dev/osc/copier"
)

func TestTuplePredicate(t *testing.T) {
	sql, idx := tuplePredicate([]string{"`a`"}, []string{"?"}, ">")
	if sql != "((`a` > ?))" || !reflect.DeepEqual(idx, []int{0}) {
		t.Fatalf("single column: %s %v", sql, idx)
	}
	sql, idx = tuplePredicate([]string{"a", "b", "c"}, []string{"?", "?", "?"}, "<=")
	want := "((a < ?) OR (a = ? AND b < ?) OR (a = ? AND b = ? AND c <= ?))"
	if sql != want || !reflect.DeepEqual(idx, []int{0, 0, 1, 0, 1, 2}) {
		t.Fatalf("three columns:\n got %s %v\nwant %s", sql, idx, want)
	}
	if got := pick(nil, []any{"x", "y", "z"}, idx); !reflect.DeepEqual(got, []any{"x", "x", "y", "x", "y", "z"}) {
		t.Fatalf("pick: %v", got)
	}
}

func TestExpressions(t *testing.T) {
	latin := &column{DataType: "varchar", Charset: "latin1", Collation: "latin1_swedish_ci"}
	utf := &column{DataType: "varchar", Charset: "utf8mb4", Collation: "utf8mb4_unicode_ci"}
	dec := &column{DataType: "decimal", ColumnType: "decimal(65,30) unsigned"}
	num := &column{DataType: "int"}
	for _, tc := range []struct{ got, want string }{
		{valueExpr(latin), "CONVERT(? USING latin1)"},
		{valueExpr(dec), "CAST(? AS decimal(65,30))"},
		{valueExpr(num), "?"},
		{cmpExpr(latin, latin), "CONVERT(? USING latin1) COLLATE latin1_swedish_ci"},
		{cmpExpr(latin, utf), "CONVERT(CONVERT(? USING latin1) USING utf8mb4) COLLATE utf8mb4_unicode_ci"},
		{cmpExpr(num, num), "?"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
}

func TestKeyValue(t *testing.T) {
	cols := []*column{{DataType: "bigint", Unsigned: true}, {DataType: "int"}, {DataType: "varchar"}}
	k, err := scanKey(cols, []sql.RawBytes{[]byte("18446744073709551615"), []byte("-5"), []byte("caf\xe9")})
	if err != nil {
		t.Fatal(err)
	}
	want := copier.Key{uint64(18446744073709551615), int64(-5), []byte("caf\xe9")}
	if !reflect.DeepEqual(k, want) {
		t.Fatalf("got %#v, want %#v", k, want)
	}
}

func TestParseQuotedList(t *testing.T) {
	got := parseQuotedList(`'a','b''c','',' d,e'`)
	if want := []string{"a", "b'c", "", " d,e"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestCheckWarnings(t *testing.T) {
	e := &Engine{shadowKeyName: "PRIMARY"}
	if err := e.checkWarnings([]warning{
		{"Warning", 1062, "Duplicate entry '5' for key 'PRIMARY'"},
		{"Warning", 1062, "Duplicate entry '6' for key '_t_new.PRIMARY'"}, // MySQL 8 form
	}); err != nil {
		t.Fatalf("duplicates on the chunking key must pass: %v", err)
	}
	err := e.checkWarnings([]warning{{"Warning", 1062, "Duplicate entry 'x' for key 'uk_email'"}})
	var c *errConflict
	if !errors.As(err, &c) || !strings.Contains(err.Error(), "uk_email") {
		t.Fatalf("duplicate on another key: %v", err)
	}
	err = e.checkWarnings([]warning{{"Warning", 1265, "Data truncated for column 'name' at row 3"}})
	if err == nil || errors.As(err, &c) || !strings.Contains(err.Error(), "Data truncated") {
		t.Fatalf("truncation: %v", err)
	}
}

func TestSameEquality(t *testing.T) {
	ci := &column{DataType: "varchar", ColumnType: "varchar(20)", Charset: "utf8mb4", Collation: "utf8mb4_general_ci"}
	ciLonger := &column{DataType: "varchar", ColumnType: "varchar(40)", Charset: "utf8mb4", Collation: "utf8mb4_general_ci"}
	bin := &column{DataType: "varchar", ColumnType: "varchar(20)", Charset: "utf8mb4", Collation: "utf8mb4_bin"}
	i32 := &column{DataType: "int", ColumnType: "int(11)"}
	i64 := &column{DataType: "bigint", ColumnType: "bigint(20)"}
	u64 := &column{DataType: "bigint", ColumnType: "bigint(20) unsigned", Unsigned: true}
	b4 := &column{DataType: "binary", ColumnType: "binary(4)"}
	vb4 := &column{DataType: "varbinary", ColumnType: "varbinary(4)"}
	for _, tc := range []struct {
		a, b *column
		want bool
	}{
		{ci, ciLonger, true}, {bin, ci, false}, {i32, i64, true}, {i64, u64, false}, {vb4, b4, false}, {b4, b4, true},
	} {
		if got := sameEquality(tc.a, tc.b); got != tc.want {
			t.Errorf("sameEquality(%s %s, %s %s) = %v", tc.a.ColumnType, tc.a.Collation, tc.b.ColumnType, tc.b.Collation, got)
		}
	}
}

func TestSameEqualityStringTypes(t *testing.T) {
	vc := &column{DataType: "varchar", ColumnType: "varchar(20)", Charset: "utf8mb4", Collation: "utf8mb4_0900_bin"}
	ch := &column{DataType: "char", ColumnType: "char(20)", Charset: "utf8mb4", Collation: "utf8mb4_0900_bin"}
	if sameEquality(vc, ch) {
		t.Fatal("VARCHAR -> CHAR accepted as a chunking key: CHAR pads, NO PAD collations then merge keys")
	}
}

func TestPlainKeyName(t *testing.T) {
	for _, c := range []struct {
		line, name string
		ok         bool
	}{
		{"  KEY `k` (`k`),", "k", true},
		{"  KEY `s pre``fix` (`s`(10)) COMMENT 'prefix index'", "s pre`fix", true},
		{"  KEY `n_v` (`n`,`v` DESC),", "n_v", true},
		{"  UNIQUE KEY `u` (`u`),", "", false},
		{"  FULLTEXT KEY `f` (`c`),", "", false},
		{"  PRIMARY KEY (`id`),", "", false},
		{"  `key` int(11) DEFAULT NULL,", "", false},
		{"  KEY `unterminated", "", false},
	} {
		name, ok := plainKeyName(c.line)
		if name != c.name || ok != c.ok {
			t.Errorf("plainKeyName(%q) = %q, %v; want %q, %v", c.line, name, ok, c.name, c.ok)
		}
	}
}

// sameValue decides which columns an update changed: a change it missed
// would not reach the shadow.
func TestSameValue(t *testing.T) {
	negZero := math.Copysign(0, -1)
	for _, tc := range []struct {
		a, b any
		same bool
	}{
		{int64(1), int64(1), true},
		{int64(1), int64(2), false},
		{nil, nil, true},
		{nil, int64(0), false},
		{"a", "a", true},
		{"a", []byte("a"), false},
		{[]byte("a"), []byte("a"), true},
		{[]byte("a"), []byte("A"), false},
		{[]byte{}, nil, false},
		{0.0, negZero, false},
		{float32(0), float32(negZero), false},
		{1.5, 1.5, true},
	} {
		if got := sameValue(tc.a, tc.b); got != tc.same {
			t.Errorf("sameValue(%#v, %#v) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}
