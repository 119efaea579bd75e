package binlog

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
)

func TestNormaliseColumn(t *testing.T) {
	enum := Column{Name: "e", DataType: "enum", Values: []string{"a", "b", "c"}}
	set := Column{Name: "s", DataType: "set", Values: []string{"x", "y", "z"}}
	set64 := Column{Name: "s", DataType: "set", Values: make([]string, 64)}
	for i := range set64.Values {
		set64.Values[i] = fmt.Sprintf("m%d", i)
	}
	u := func(dt string) Column { return Column{Name: "u", DataType: dt, Unsigned: true} }
	s := func(dt string) Column { return Column{Name: "s", DataType: dt} }

	tests := []struct {
		name string
		col  Column
		in   any
		want any
	}{
		// Unsigned integers arrive as signed Go integers without row metadata.
		{"tinyint unsigned max", u("tinyint"), int8(-1), uint64(255)},
		{"tinyint unsigned 128", u("tinyint"), int8(-128), uint64(128)},
		{"tinyint unsigned small", u("tinyint"), int8(7), uint64(7)},
		{"smallint unsigned max", u("smallint"), int16(-1), uint64(65535)},
		{"mediumint unsigned max", u("mediumint"), int32(-1), uint64(16777215)},
		{"mediumint unsigned 2^23", u("mediumint"), int32(-8388608), uint64(8388608)},
		{"int unsigned max", u("int"), int32(-1), uint64(4294967295)},
		{"integer unsigned max", u("integer"), int32(-1), uint64(4294967295)},
		{"bigint unsigned max", u("bigint"), int64(-1), uint64(18446744073709551615)},
		{"bigint unsigned 2^63", u("bigint"), int64(-1 << 63), uint64(1 << 63)},
		{"bigint unsigned zero", u("bigint"), int64(0), uint64(0)},
		// Servers logging signedness (binlog_row_metadata>=MINIMAL) give unsigned Go ints.
		{"tinyint unsigned with metadata", u("tinyint"), uint8(255), uint64(255)},
		{"smallint unsigned with metadata", u("smallint"), uint16(65535), uint64(65535)},
		{"mediumint unsigned with metadata", u("mediumint"), uint32(16777215), uint64(16777215)},
		{"int unsigned with metadata", u("int"), uint32(4294967295), uint64(4294967295)},
		{"bigint unsigned with metadata", u("bigint"), uint64(18446744073709551615), uint64(18446744073709551615)},
		// Signed integers.
		{"tinyint min", s("tinyint"), int8(-128), int64(-128)},
		{"smallint min", s("smallint"), int16(-32768), int64(-32768)},
		{"mediumint min", s("mediumint"), int32(-8388608), int64(-8388608)},
		{"int min", s("int"), int32(-2147483648), int64(-2147483648)},
		{"bigint min", s("bigint"), int64(-1 << 63), int64(-1 << 63)},
		{"bigint max", s("bigint"), int64(1<<63 - 1), int64(1<<63 - 1)},
		// YEAR arrives as Go int.
		{"year", s("year"), int(2024), int64(2024)},
		{"year zero", s("year"), int(0), int64(0)},
		// ENUM ordinals, 1-based; 0 is the invalid value ''.
		{"enum 1", enum, int64(1), "a"},
		{"enum 2", enum, int64(2), "b"},
		{"enum 3", enum, int64(3), "c"},
		// SET bitmasks, members in definition order.
		{"set empty", set, int64(0), ""},
		{"set one", set, int64(2), "y"},
		{"set two", set, int64(5), "x,z"},
		{"set all", set, int64(7), "x,y,z"},
		{"set 64th member", set64, int64(-1 << 63), "m63"},
		// BINARY(n): trailing zero bytes restored.
		{"binary padded", Column{Name: "b", DataType: "binary", Length: 4}, "\x01\x02", []byte{1, 2, 0, 0}},
		{"binary full", Column{Name: "b", DataType: "binary", Length: 4}, "\x01\x02\x03\x04", []byte{1, 2, 3, 4}},
		{"binary empty", Column{Name: "b", DataType: "binary", Length: 3}, "", []byte{0, 0, 0}},
		{"binary inner zero", Column{Name: "b", DataType: "binary", Length: 4}, "\x00\x01", []byte{0, 1, 0, 0}},
		// BIT.
		{"bit8", s("bit"), int64(0xA5), uint64(0xA5)},
		{"bit64 high", s("bit"), int64(-1), uint64(18446744073709551615)},
		// Exact strings.
		{"decimal", s("decimal"), "-12345.678900000000000000000000000000", "-12345.678900000000000000000000000000"},
		{"date zero", s("date"), "0000-00-00", "0000-00-00"},
		{"datetime zero", s("datetime"), "0000-00-00 00:00:00", "0000-00-00 00:00:00"},
		{"datetime6", s("datetime"), "2024-01-02 03:04:05.123456", "2024-01-02 03:04:05.123456"},
		{"timestamp6", s("timestamp"), "2024-01-02 03:04:05.000001", "2024-01-02 03:04:05.000001"},
		{"time", s("time"), "-838:59:59.000", "-838:59:59.000"},
		// Floats.
		{"float", s("float"), float32(1.5), float64(1.5)},
		{"float inexact", s("float"), float32(0.1), float64(float32(0.1))},
		{"double", s("double"), float64(0.1), float64(0.1)},
		// Character data: raw bytes in the column's charset, as string.
		{"varchar latin1", s("varchar"), "caf\xe9", "caf\xe9"},
		{"varchar utf8mb4", s("varchar"), "😀", "😀"},
		{"char", s("char"), "ab", "ab"},
		{"text from bytes", s("text"), []byte("caf\xe9"), "caf\xe9"},
		{"longtext", s("longtext"), []byte("x"), "x"},
		{"json mariadb (longtext)", s("longtext"), []byte(`{"a": 1}`), `{"a": 1}`},
		{"json mysql", s("json"), `{"a": 1}`, `{"a": 1}`},
		{"json mysql empty document", s("json"), []byte{}, "null"},
		// Binary data as []byte.
		{"blob", s("blob"), []byte{0, 1, 2}, []byte{0, 1, 2}},
		{"varbinary from string", s("varbinary"), "\x00\x01", []byte{0, 1}},
		{"mediumblob", s("mediumblob"), []byte{}, []byte{}},
		// Unknown types pass neutral values through.
		{"unknown string", s("whatever"), "\x00\x01", "\x00\x01"},
		{"inet6 padded", s("inet6"), "\x20\x01\x0d\xb8", []byte("\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")},
		{"uuid of zeros", s("uuid"), "", make([]byte, 16)},
		{"inet4 padded", s("inet4"), "\x0a", []byte{10, 0, 0, 0}},
		{"unknown int", s("whatever"), int32(-3), int64(-3)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := newNormaliser([]Column{tc.col})
			if err != nil {
				t.Fatal(err)
			}
			got, err := n.row([]any{tc.in})
			if err != nil {
				t.Fatal(err)
			}
			if !equalValue(got[0], tc.want) {
				t.Fatalf("got %#v (%T), want %#v (%T)", got[0], got[0], tc.want, tc.want)
			}
		})
	}
}

func TestNormaliseNil(t *testing.T) {
	cols := []Column{
		{Name: "a", DataType: "int", Unsigned: true},
		{Name: "b", DataType: "enum", Values: []string{"x"}},
		{Name: "c", DataType: "binary", Length: 4},
		{Name: "d", DataType: "varchar"},
	}
	n, err := newNormaliser(cols)
	if err != nil {
		t.Fatal(err)
	}
	got, err := n.row([]any{nil, nil, nil, nil})
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != nil {
			t.Errorf("column %d: got %#v, want nil", i, v)
		}
	}
}

func TestNormaliseRow(t *testing.T) {
	cols := []Column{
		{Name: "id", DataType: "bigint", Unsigned: true},
		{Name: "e", DataType: "enum", Values: []string{"a", "b"}},
		{Name: "v", DataType: "varchar"},
	}
	n, err := newNormaliser(cols)
	if err != nil {
		t.Fatal(err)
	}
	got, err := n.row([]any{int64(-1), int64(2), "x"})
	if err != nil {
		t.Fatal(err)
	}
	want := []any{uint64(18446744073709551615), "b", "x"}
	for i := range want {
		if !equalValue(got[i], want[i]) {
			t.Errorf("column %d: got %#v, want %#v", i, got[i], want[i])
		}
	}
	if _, err := n.row([]any{int64(1)}); err == nil {
		t.Error("short row image: no error")
	}
}

func TestNormaliseErrors(t *testing.T) {
	tests := []struct {
		name string
		col  Column
		in   any
	}{
		{"enum out of range", Column{Name: "e", DataType: "enum", Values: []string{"a"}}, int64(2)},
		{"enum error value", Column{Name: "e", DataType: "enum", Values: []string{"", "a"}}, int64(0)},
		{"enum negative", Column{Name: "e", DataType: "enum", Values: []string{"a"}}, int64(-1)},
		{"set extra bits", Column{Name: "s", DataType: "set", Values: []string{"a", "b"}}, int64(4)},
		{"int from string", Column{Name: "i", DataType: "int"}, "1"},
		{"unsigned from float", Column{Name: "i", DataType: "int", Unsigned: true}, float64(1)},
		{"decimal not string", Column{Name: "d", DataType: "decimal"}, float64(1)},
		{"datetime parsed", Column{Name: "d", DataType: "datetime"}, struct{}{}},
		{"float from string", Column{Name: "f", DataType: "float"}, "1"},
		{"text from int", Column{Name: "t", DataType: "text"}, int64(1)},
		{"unknown type", Column{Name: "x", DataType: "whatever"}, struct{}{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := newNormaliser([]Column{tc.col})
			if err != nil {
				t.Fatal(err)
			}
			_, err = n.row([]any{tc.in})
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), "`"+tc.col.Name+"`") {
				t.Errorf("error %q does not name the column", err)
			}
		})
	}
	if _, err := newNormaliser([]Column{{Name: "s", DataType: "set", Values: make([]string, 65)}}); err == nil {
		t.Error("SET with 65 members: no error")
	}
}

func TestCheckColumnTypes(t *testing.T) {
	cols := []Column{
		{Name: "id", DataType: "int"},
		{Name: "e", DataType: "enum"},
		{Name: "c", DataType: "char"},
		{Name: "j", DataType: "json"},
		{Name: "x", DataType: "inet6"},
	}
	types := []byte{mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_STRING, mysql.MYSQL_TYPE_STRING, mysql.MYSQL_TYPE_BLOB, mysql.MYSQL_TYPE_STRING}
	meta := []uint16{0, uint16(mysql.MYSQL_TYPE_ENUM)<<8 | 1, uint16(mysql.MYSQL_TYPE_STRING)<<8 | 40, 4, uint16(mysql.MYSQL_TYPE_STRING)<<8 | 16}
	if err := checkColumnTypes(cols, types, meta); err != nil {
		t.Fatal(err)
	}
	// CHAR longer than 255 bytes keeps part of its length in the type byte.
	long := uint16(mysql.MYSQL_TYPE_STRING^0x10)<<8 | 0xFC // 1020 bytes
	if err := checkColumnTypes(cols[2:3], types[2:3], []uint16{long}); err != nil {
		t.Fatal(err)
	}
	// The column became a BIGINT.
	types[0] = mysql.MYSQL_TYPE_LONGLONG
	if err := checkColumnTypes(cols, types, meta); err == nil {
		t.Fatal("BIGINT for an INT column: no error")
	}
	types[0] = mysql.MYSQL_TYPE_LONG
	// The ENUM became a SET.
	meta[1] = uint16(mysql.MYSQL_TYPE_SET)<<8 | 1
	if err := checkColumnTypes(cols, types, meta); err == nil {
		t.Fatal("SET for an ENUM column: no error")
	}
}

func TestTruncateAndFirstWord(t *testing.T) {
	if got := truncate("héllo", 2); got != "h..." {
		t.Errorf("truncate split a rune: %q", got)
	}
	if got := truncate("abc", 5); got != "abc" {
		t.Errorf("truncate: %q", got)
	}
	for in, want := range map[string]string{
		"BEGIN":                    "BEGIN",
		"commit":                   "COMMIT",
		"COMMIT /* x */":           "COMMIT",
		"XA COMMIT 'x'":            "XA",
		"ALTER TABLE t ADD c int":  "ALTER",
		"":                         "",
		"/* app */ UPDATE t SET":   "UPDATE",
		"-- x\n# y\nDELETE FROM t": "DELETE",
		"/* unterminated":          "",
	} {
		if got := firstWord(in); got != want {
			t.Errorf("firstWord(%q) = %q, want %q", in, got, want)
		}
	}
}

// equalValue compares normalised values exactly, including their Go type.
func equalValue(a, b any) bool {
	if ab, ok := a.([]byte); ok {
		bb, ok := b.([]byte)
		return ok && bytes.Equal(ab, bb) && (ab == nil) == (bb == nil)
	}
	return a == b
}
