package alter

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

var validCases = []struct {
	name string
	d    Dialect
	in   string
	text string // expected Text; "" means same as in
}{
	{"multi clause", MySQL, "ADD COLUMN x INT NOT NULL DEFAULT 0, ADD INDEX (x)", ""},
	{"trailing semicolon stripped", MySQL, "  ADD COLUMN x INT ;  \n", "ADD COLUMN x INT"},
	{"trailing semicolon then comment", MySQL, "ADD COLUMN x INT; -- done", "ADD COLUMN x INT"},
	{"leading and trailing comments dropped", MySQL, "/* c */ ADD COLUMN x INT -- note", "ADD COLUMN x INT"},
	{"string with ; , )", MySQL, "ADD COLUMN s VARCHAR(10) DEFAULT 'a;b,c)' COMMENT 'x'", ""},
	{"double-quoted string with ;", MySQL, `ADD COLUMN c INT COMMENT "x;y), DROP TABLE t"`, ""},
	{"doubled quote", MySQL, "ADD COLUMN c VARCHAR(9) DEFAULT 'it''s;'", ""},
	{"escaped backslash before quote", MySQL, `ADD COLUMN c VARCHAR(9) DEFAULT 'a\\', ADD COLUMN d INT`, ""},
	{"escaped other char", MySQL, `ADD COLUMN c VARCHAR(9) DEFAULT 'a\n;'`, ""},
	{"block comment with ;", MySQL, "ADD COLUMN x INT /* ; DROP TABLE t */, ADD COLUMN y INT", ""},
	{"dash comment with ;", MySQL, "ADD COLUMN x INT -- ; DROP TABLE t\n, ADD COLUMN y INT", ""},
	{"hash comment with ;", MySQL, "ADD COLUMN x INT # ; DROP TABLE t\n, ADD COLUMN y INT", ""},
	{"dash at end of input", MySQL, "ADD COLUMN x INT DEFAULT 1--", "ADD COLUMN x INT DEFAULT 1"},
	{"backtick with ;", MySQL, "ADD COLUMN `x;y` INT", ""},
	{"backtick with doubled backtick", MySQL, "ADD COLUMN `a``b;` INT", ""},
	{"optimizer-hint style comment", MySQL, "ADD COLUMN x INT /*+ ; */", "ADD COLUMN x INT"},
	{"alter column is a clause", MySQL, "ALTER COLUMN x SET DEFAULT 1", ""},
	{"algorithm and lock allowed", MySQL, "ADD COLUMN x INT, ALGORITHM=INPLACE, LOCK=NONE", ""},
	{"table options", MySQL, "ENGINE=InnoDB ROW_FORMAT=DYNAMIC", ""},
	{"rename column and index", MySQL, "RENAME COLUMN a TO b, RENAME INDEX i TO j, RENAME KEY k TO l", ""},
	{"nested parens", MySQL, "ADD COLUMN v INT AS ((a + (b * 2))) STORED, ADD CHECK (v > 0)", ""},
	{"charset introducer", MySQL, "ADD COLUMN c CHAR(3) DEFAULT _utf8mb4'a;b'", ""},
	{"minus with space", MySQL, "ADD COLUMN x INT DEFAULT - -1", ""},
	{"non-ascii space is a name character", MySQL, "ADD COLUMN \u00a0 INT\u0085", ""},
	{"non-ascii names", MySQL, "ADD COLUMN café INT COMMENT 'naïve;'", ""},
	{"partition by", MySQL, "ADD COLUMN x INT PARTITION BY HASH(id) PARTITIONS 4", ""},

	{"pg quoted ident with ;", Postgres, `ADD COLUMN "x;y" int`, ""},
	{"pg dollar string", Postgres, "ADD COLUMN b text DEFAULT $$a;b$$", ""},
	{"pg tagged dollar string", Postgres, "ADD COLUMN b text DEFAULT $tag$ ; $$ ; $tag$, ADD COLUMN c int", ""},
	{"pg E string with escaped quote", Postgres, `ADD COLUMN b text DEFAULT E'it\'s;'`, ""},
	{"pg standard string backslash", Postgres, `ADD COLUMN b text DEFAULT 'C:\path;'`, ""},
	{"pg cast and using", Postgres, "ALTER COLUMN x TYPE bigint USING x::bigint", ""},
	{"pg array brackets", Postgres, "ADD COLUMN a int[] DEFAULT ARRAY[1,2]", ""},
	{"pg nested comment", Postgres, "/* a /* ; */ still ; */ ADD COLUMN x int", "ADD COLUMN x int"},
	{"pg double dash always comment", Postgres, "ADD COLUMN x int --; DROP\n, ADD COLUMN y int", ""},
	{"pg carriage return ends comment", Postgres, "ADD COLUMN x int -- c\r, ADD COLUMN y int", ""},
	{"pg hash is an operator", Postgres, "ADD COLUMN x int DEFAULT 5 # 3", ""},
	{"pg dollar inside identifier", Postgres, "ADD COLUMN a$$b int", ""},
	{"pg param-like then dollar", Postgres, "ADD COLUMN x int DEFAULT $1", ""},
	{"pg rename alone", Postgres, "RENAME COLUMN a TO b;", "RENAME COLUMN a TO b"},
}

func TestParseValid(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.in, tc.d)
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", tc.in, err)
			}
			want := tc.text
			if want == "" {
				want = tc.in
			}
			if c.Text != want {
				t.Errorf("Text = %q, want %q", c.Text, want)
			}
			if c.Dialect != tc.d {
				t.Errorf("Dialect = %v, want %v", c.Dialect, tc.d)
			}
		})
	}
}

var invalidCases = []struct {
	name string
	d    Dialect
	in   string
	want string // substring of the error message
}{
	{"empty", MySQL, "", "empty --alter"},
	{"whitespace", MySQL, " \n\t ", "empty --alter"},
	{"only semicolon", MySQL, " ; ", "empty --alter"},
	{"only comment", MySQL, "-- nothing", "empty --alter"},
	{"two statements", MySQL, "ADD COLUMN x INT; ADD COLUMN y INT", "only one"},
	{"drop table smuggled", MySQL, "ADD COLUMN x INT; DROP TABLE t", "only one"},
	{"leading semicolon", MySQL, "; DROP TABLE t", "only one"},
	{"double trailing semicolon", MySQL, "ADD COLUMN x INT;;", "only one"},
	{"semicolon after comment", MySQL, "ADD COLUMN x INT /* c */; DROP TABLE t", "only one"},
	{"leading alter table", MySQL, "ALTER TABLE t ADD COLUMN x INT", "without the leading"},
	{"leading alter table lower", MySQL, "alter table `t` add column x int", "without the leading"},
	{"leading alter online ignore table", MySQL, "ALTER ONLINE IGNORE TABLE t ADD x INT", "ALTER TABLE"},
	{"alter table after comma", MySQL, "ADD COLUMN x INT, ALTER TABLE t2 ADD y INT", "without the leading"},
	{"rename to", MySQL, "RENAME TO t2", "renaming the table"},
	{"rename as", MySQL, "RENAME AS t2", "renaming the table"},
	{"rename bare", MySQL, "ADD COLUMN x INT, RENAME t2", "renaming the table"},
	{"rename quoted", MySQL, "RENAME `t2`", "renaming the table"},
	{"pg rename to", Postgres, "RENAME TO t2", "renaming the table"},
	{"pg set schema", Postgres, "SET SCHEMA other", "SET SCHEMA"},
	{"pg owner", Postgres, "OWNER TO bob", "only the catalog"},
	{"pg replica identity", Postgres, "REPLICA IDENTITY FULL", "only the catalog"},
	{"pg disable trigger", Postgres, "ADD COLUMN x int, DISABLE TRIGGER ALL", "only the catalog"},
	{"pg rls", Postgres, "ENABLE ROW LEVEL SECURITY", "only the catalog"},
	{"pg unlogged", Postgres, "SET UNLOGGED", "not logically replicated"},
	{"pg of type", Postgres, "OF some_type", "composite type"},
	{"pg using without expression", Postgres, "ALTER COLUMN x TYPE int USING", "USING needs an expression"},
	{"unterminated single quote", MySQL, "ADD COLUMN c CHAR(3) DEFAULT 'abc", "unterminated string"},
	{"unterminated double quote", MySQL, `ADD COLUMN c CHAR(3) DEFAULT "abc`, "unterminated string"},
	{"unterminated backtick", MySQL, "ADD COLUMN `x INT", "unterminated quoted identifier"},
	{"escape at end", MySQL, `ADD COLUMN c CHAR(3) DEFAULT 'abc\`, "unterminated string"},
	{"unterminated comment", MySQL, "ADD COLUMN x INT /* c", "unterminated comment"},
	{"pg unterminated ident", Postgres, `ADD COLUMN "x int`, "unterminated quoted identifier"},
	{"pg unterminated dollar", Postgres, "ADD COLUMN b text DEFAULT $q$abc$$", "unterminated dollar-quoted"},
	{"pg unterminated nested comment", Postgres, "ADD COLUMN x int /* a /* b */", "unterminated comment"},
	{"unclosed paren", MySQL, "ADD COLUMN x DECIMAL(10,2", "never closed"},
	{"stray paren", MySQL, "ADD COLUMN x INT)", "no matching"},
	{"mismatched bracket", Postgres, "ADD COLUMN x int DEFAULT (1]", "closes the"},
	{"executable comment", MySQL, "/*! ADD COLUMN x INT */", "executable comments"},
	{"versioned executable comment", MySQL, "ADD COLUMN x INT /*!50700 ; DROP TABLE t */", "executable comments"},
	{"mariadb executable comment", MySQL, "ADD COLUMN x INT /*M!100100 , DROP y */", "executable comments"},
	{"backslash quote ambiguity", MySQL, `ADD COLUMN c CHAR(3) DEFAULT 'a\'; DROP TABLE t; -- '`, "NO_BACKSLASH_ESCAPES"},
	{"backslash dquote ambiguity", MySQL, `ADD COLUMN c CHAR(3) COMMENT "a\"; DROP TABLE t; -- "`, "NO_BACKSLASH_ESCAPES"},
	{"pg backslash quote ambiguity", Postgres, `ADD COLUMN b text DEFAULT 'a\'; DROP TABLE t; --'`, "standard_conforming_strings"},
	{"pg e-like suffix is no E string", Postgres, `ADD COLUMN b text DEFAULT xe'\'; DROP TABLE t; --'`, "standard_conforming_strings"},
	{"pg word starting with e is no E string", Postgres, `ADD COLUMN b text DEFAULT ee'\'; DROP TABLE t; --'`, "standard_conforming_strings"},
	{"pg exponent-like number is no E string", Postgres, `ADD COLUMN b text DEFAULT 1e'\'; DROP TABLE t; --'`, "standard_conforming_strings"},
	{"pg decimal then e is no E string", Postgres, `ADD COLUMN b text DEFAULT 1.e'\'; DROP TABLE t; --'`, "standard_conforming_strings"},
	{"pg number then dollar quote", Postgres, "ADD COLUMN x int DEFAULT 1$$ x $$; DROP TABLE t; $$ $$", "only one"},
	{"dash dash without space", MySQL, "ADD COLUMN x INT DEFAULT 1--1", `"--"`},
	{"nested mysql comment", MySQL, "ADD COLUMN x INT /* a /* b */ ' */ ; DROP TABLE t; -- '", "nested"},
	{"dollar in mysql word", MySQL, "ADD COLUMN x INT DEFAULT $$;$$", `"$"`},
	{"discard tablespace", MySQL, "DISCARD TABLESPACE", "TABLESPACE"},
	{"import tablespace", MySQL, "IMPORT TABLESPACE", "TABLESPACE"},
	{"exchange partition", MySQL, "ALGORITHM=INPLACE, EXCHANGE PARTITION p0 WITH TABLE t2", "EXCHANGE PARTITION"},
	{"pg attach partition", Postgres, "ATTACH PARTITION p FOR VALUES IN (1)", "ATTACH PARTITION"},
	{"pg detach partition", Postgres, "DETACH PARTITION p", "DETACH PARTITION"},
	{"pg inherit", Postgres, "INHERIT parent", "INHERIT"},
	{"pg no inherit", Postgres, "NO INHERIT parent", "NO INHERIT"},
	{"double comma", MySQL, "ADD COLUMN x INT,, ADD COLUMN y INT", "stray comma"},
	{"trailing comma", MySQL, "ADD COLUMN x INT,", "stray comma"},
	{"leading comma", MySQL, ", ADD COLUMN x INT", "stray comma"},
	{"nul byte", MySQL, "ADD COLUMN x INT\x00; DROP TABLE t", "control character"},
	{"vertical tab", MySQL, "ADD COLUMN x\vINT", "control character"},
	{"invalid utf8", MySQL, "ADD COLUMN x INT COMMENT '\xbf\x27'", "UTF-8"},
	{"drop column without name", MySQL, "DROP COLUMN", "cannot tell which column"},
	{"drop column string name", MySQL, "DROP COLUMN 'x'", "cannot tell which column"},
	{"drop column double-quoted name", MySQL, `DROP COLUMN "x"`, "cannot tell which column"},
	{"rename column missing TO", MySQL, "RENAME COLUMN a b", "RENAME COLUMN old TO new"},
	{"change without new name", MySQL, "CHANGE a", "cannot tell which column"},
	{"pg rename unparseable", Postgres, "RENAME 1 TO b", "cannot tell which column"},
	{"unknown dialect", Dialect(7), "ADD COLUMN x INT", "dialect"},
}

func TestParseInvalid(t *testing.T) {
	for _, tc := range invalidCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.in, tc.d)
			if err == nil {
				t.Fatalf("Parse(%q) = %q, want error containing %q", tc.in, c.Text, tc.want)
			}
			var ae *Error
			if !errors.As(err, &ae) {
				t.Fatalf("error %T is not *Error", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "invalid --alter: ") {
				t.Errorf("message %q lacks prefix", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not contain %q", msg, tc.want)
			}
		})
	}
}

func TestErrorPosition(t *testing.T) {
	in := "ADD COLUMN x INT; DROP TABLE t"
	_, err := Parse(in, MySQL)
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("got %v, want *Error", err)
	}
	if ae.Pos != strings.IndexByte(in, ';') {
		t.Errorf("Pos = %d, want %d", ae.Pos, strings.IndexByte(in, ';'))
	}
	if !strings.Contains(ae.Msg, `near "; DROP TABLE t"`) {
		t.Errorf("Msg %q does not quote the offending text", ae.Msg)
	}
}

func TestColumnChanges(t *testing.T) {
	tests := []struct {
		name    string
		d       Dialect
		in      string
		dropped []string
		renamed map[string]string
	}{
		{"mysql drops", MySQL,
			"DROP COLUMN a, DROP b, DROP INDEX i, DROP KEY k, DROP PRIMARY KEY, DROP FOREIGN KEY fk, " +
				"DROP CONSTRAINT c, DROP CHECK ck, DROP PARTITION p0, DROP `we``ird`, DROP COLUMN IF EXISTS e, DROP `index`",
			[]string{"a", "b", "we`ird", "e", "index"}, nil},
		{"mysql case kept", MySQL, "DROP COLUMN Foo", []string{"Foo"}, nil},
		{"mariadb system versioning vs column", MySQL, "DROP SYSTEM VERSIONING, DROP system, DROP PERIOD FOR p",
			[]string{"system"}, nil},
		{"mysql column-level drops are not column drops", MySQL,
			"ALTER COLUMN x DROP DEFAULT, MODIFY y INT", nil, nil},
		{"mysql renames", MySQL,
			"RENAME COLUMN a TO b, CHANGE COLUMN c d INT, CHANGE e e BIGINT, CHANGE `f` `g` INT AFTER a, CHANGE IF EXISTS h i INT",
			nil, map[string]string{"a": "b", "c": "d", "f": "g", "h": "i"}},
		{"mysql case-only change", MySQL, "CHANGE x X INT", nil, map[string]string{"x": "X"}},
		{"mysql swap", MySQL, "RENAME COLUMN a TO b, RENAME COLUMN b TO a", nil, map[string]string{"a": "b", "b": "a"}},
		{"mysql drop and rename", MySQL, "DROP COLUMN x, RENAME COLUMN y TO x, ADD COLUMN z INT",
			[]string{"x"}, map[string]string{"y": "x"}},
		{"mysql index rename is not a column rename", MySQL, "RENAME INDEX a TO b", nil, nil},
		{"strings do not confuse", MySQL, "ADD COLUMN q VARCHAR(9) DEFAULT 'DROP x, CHANGE a b'", nil, nil},

		{"pg drops", Postgres,
			`DROP COLUMN a, DROP b CASCADE, DROP CONSTRAINT c, DROP COLUMN IF EXISTS "MixedCase", DROP Upper, DROP IF EXISTS f`,
			[]string{"a", "b", "MixedCase", "upper", "f"}, nil},
		{"pg column-level drops", Postgres,
			"ALTER COLUMN a DROP NOT NULL, ALTER COLUMN a DROP DEFAULT, ALTER a DROP IDENTITY", nil, nil},
		{"pg rename column", Postgres, "RENAME COLUMN a TO b", nil, map[string]string{"a": "b"}},
		{"pg rename without COLUMN folds case", Postgres, `RENAME Foo TO "Bar"`, nil, map[string]string{"foo": "Bar"}},
		{"pg rename quoted", Postgres, `RENAME "to" TO x`, nil, map[string]string{"to": "x"}},
		{"pg rename constraint", Postgres, "RENAME CONSTRAINT c1 TO c2", nil, nil},
		{"pg has no CHANGE", Postgres, "CHANGE a b int", nil, nil},
		{"pg names truncated to 63 bytes", Postgres, "DROP COLUMN " + strings.Repeat("a", 70),
			[]string{strings.Repeat("a", 63)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.in, tc.d)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.DroppedColumns, tc.dropped) {
				t.Errorf("DroppedColumns = %q, want %q", c.DroppedColumns, tc.dropped)
			}
			if !reflect.DeepEqual(c.RenamedColumns, tc.renamed) {
				t.Errorf("RenamedColumns = %q, want %q", c.RenamedColumns, tc.renamed)
			}
		})
	}
}

func TestShadowColumn(t *testing.T) {
	my, err := Parse("DROP COLUMN Gone, RENAME COLUMN Old TO New, ADD COLUMN extra INT", MySQL)
	if err != nil {
		t.Fatal(err)
	}
	pg, err := Parse(`DROP COLUMN "Gone", RENAME COLUMN old TO new`, Postgres)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		c    *Clauses
		src  string
		want string
		ok   bool
	}{
		{my, "kept", "kept", true},
		{my, "gone", "", false}, // MySQL column names ignore case
		{my, "Gone", "", false},
		{my, "old", "New", true},
		{my, "OLD", "New", true},
		{pg, "Gone", "", false},
		{pg, "gone", "gone", true}, // Postgres quoted names are exact
		{pg, "old", "new", true},
		{pg, "Old", "Old", true},
	}
	for _, tc := range tests {
		got, ok := tc.c.ShadowColumn(tc.src)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%v ShadowColumn(%q) = %q, %v; want %q, %v", tc.c.Dialect, tc.src, got, ok, tc.want, tc.ok)
		}
	}
}

func TestReferences(t *testing.T) {
	tests := []struct {
		d    Dialect
		name string
		stmt string
		want bool
	}{
		{MySQL, "t", "ALTER TABLE t ADD COLUMN x INT", true},
		{MySQL, "t", "alter table T add x int", true},
		{MySQL, "t", "ALTER TABLE `t` ADD x INT", true},
		{MySQL, "t", "ALTER TABLE db.t ADD x INT", true},
		{MySQL, "t", "ALTER TABLE `db`.`t` ADD x INT", true},
		{MySQL, "t", "ALTER TABLE db . t ADD x INT", true},
		{MySQL, "t", "RENAME TABLE x TO t", true},
		{MySQL, "t", "CREATE TABLE t2 LIKE t", true},
		{MySQL, "t", "DROP TABLE IF EXISTS `t` /* generated by server */", true},
		{MySQL, "t", "/*!40000 ALTER TABLE `t` DISABLE KEYS */", true},
		{MySQL, "t", `ALTER TABLE "t" ADD x INT`, true}, // may be ANSI_QUOTES
		{MySQL, "a`b", "DROP TABLE `a``b`", true},
		{MySQL, "t", "TRUNCATE t", true},
		{MySQL, "t", "ALTER TABLE t.x ADD y INT", false}, // t is the database
		{MySQL, "t", "ALTER TABLE _t_new ADD x INT", false},
		{MySQL, "t", "RENAME TABLE t_old TO x", false},
		{MySQL, "t", "ALTER TABLE `_t_new` ADD x INT", false},
		{MySQL, "t", "ALTER TABLE x COMMENT 't'", false},
		{MySQL, "t", `ALTER TABLE x COMMENT 'a\'t'`, false}, // only the escaped reading lexes
		{MySQL, "t", "ALTER TABLE x /* t */ ADD y INT", false},
		{MySQL, "t", "-- t\nALTER TABLE x ADD y INT", false},
		{MySQL, "t", "# t\nALTER TABLE x ADD y INT", false},
		{MySQL, "t", "ALTER TABLE x ADD `t x` INT", false},
		{MySQL, "t", "", false},
		{MySQL, "", "ALTER TABLE t ADD x INT", false},

		{Postgres, "t", "ALTER TABLE t ADD x int", true},
		{Postgres, "t", `ALTER TABLE "t" ADD x int`, true},
		{Postgres, "t", "ALTER TABLE public.t ADD x int", true},
		{Postgres, "t", `ALTER TABLE "s"."t" ADD x int`, true},
		{Postgres, "t", "ALTER TABLE T ADD x int", true},
		{Postgres, "Orders", `ALTER TABLE "Orders" ADD x int`, true},
		{Postgres, "Orders", "ALTER TABLE Orders ADD x int", false}, // folds to orders
		{Postgres, "t", `ALTER TABLE "T" ADD x int`, false},
		{Postgres, "t", "ALTER TABLE t_old ADD x int", false},
		{Postgres, "t", "COMMENT ON TABLE x IS 't'", false},
		{Postgres, "t", "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 FROM t $$ LANGUAGE sql", false},
		{Postgres, "t", "ALTER TABLE x /* a /* t */ t */ ADD y int", false},
		{Postgres, "t", "ALTER TABLE x -- t\r ADD y int", false},
		{Postgres, "t", `ALTER TABLE x ADD y text DEFAULT E'\'t'`, false},
	}
	for _, tc := range tests {
		if got := References(tc.stmt, tc.name, tc.d); got != tc.want {
			t.Errorf("%v References(%q, %q) = %v, want %v", tc.d, tc.stmt, tc.name, got, tc.want)
		}
	}
}

func TestIsDDL(t *testing.T) {
	tests := []struct {
		d    Dialect
		stmt string
		want bool
	}{
		{MySQL, "ALTER TABLE t ADD x INT", true},
		{MySQL, "  /* c */ create table t (id int)", true},
		{MySQL, "-- x\nDROP TABLE t", true},
		{MySQL, "# x\nDROP TABLE t", true},
		{MySQL, "RENAME TABLE a TO b", true},
		{MySQL, "TRUNCATE TABLE t", true},
		{MySQL, "/*!40000 ALTER TABLE `t` DISABLE KEYS */", true},
		{MySQL, "BEGIN", false},
		{MySQL, "COMMIT", false},
		{MySQL, "INSERT INTO t VALUES (1)", false},
		{MySQL, "UPDATE t SET a = 1", false},
		{MySQL, "XA START 'x'", false},
		{MySQL, "SAVEPOINT s", false},
		{MySQL, "/* ALTER */ SELECT 1", false},
		{MySQL, "`ALTER`", false},
		{MySQL, "", false},
		{Postgres, "COMMENT ON TABLE t IS 'x'", true},
		{Postgres, "/* a /* b */ c */ ALTER TABLE t ADD x int", true},
		{Postgres, "# ALTER", false},
		{Postgres, "DELETE FROM t", false},
	}
	for _, tc := range tests {
		if got := IsDDL(tc.stmt, tc.d); got != tc.want {
			t.Errorf("%v IsDDL(%q) = %v, want %v", tc.d, tc.stmt, got, tc.want)
		}
	}
}

func TestQuoteIdent(t *testing.T) {
	tests := []struct {
		d    Dialect
		in   string
		want string
	}{
		{MySQL, "x", "`x`"},
		{MySQL, "a`b", "`a``b`"},
		{MySQL, `a"b`, "`a\"b`"},
		{Postgres, "x", `"x"`},
		{Postgres, `a"b`, `"a""b"`},
		{Postgres, "Mixed", `"Mixed"`},
	}
	for _, tc := range tests {
		got := QuoteIdent(tc.in, tc.d)
		if got != tc.want {
			t.Errorf("%v QuoteIdent(%q) = %q, want %q", tc.d, tc.in, got, tc.want)
		}
		// Round trip: the result must lex as one identifier naming tc.in.
		toks, err := lex(got, tc.d, true, true)
		if err != nil || len(toks) != 1 || toks[0].kind != tokIdent || identValue(toks[0], tc.d) != tc.in {
			t.Errorf("%v QuoteIdent(%q) = %q does not lex back to the name (%v, %v)", tc.d, tc.in, got, toks, err)
		}
	}
}

// FuzzParse checks that Parse never panics, fails only with *Error, and that
// accepted text is one self-contained clause list: no ";" outside strings and
// comments, stable when re-parsed, and not able to swallow what osc appends.
func FuzzParse(f *testing.F) {
	for _, tc := range validCases {
		f.Add(tc.in, tc.d == Postgres)
	}
	for _, tc := range invalidCases {
		f.Add(tc.in, tc.d == Postgres)
	}
	f.Fuzz(func(t *testing.T, s string, pg bool) {
		d := MySQL
		if pg {
			d = Postgres
		}
		_ = References(s, "t", d)
		_ = IsDDL(s, d)
		c, err := Parse(s, d)
		if err != nil {
			var ae *Error
			if !errors.As(err, &ae) || !strings.HasPrefix(err.Error(), "invalid --alter: ") {
				t.Fatalf("bad error %T %v", err, err)
			}
			return
		}
		if c.Text == "" || isSpace(c.Text[0]) || isSpace(c.Text[len(c.Text)-1]) {
			t.Fatalf("Text %q is empty or untrimmed", c.Text)
		}
		toks, lerr := lex(c.Text, d, true, true)
		if lerr != nil {
			t.Fatalf("Text %q does not lex: %v", c.Text, lerr)
		}
		for _, tok := range toks {
			if tok.is(";") {
				t.Fatalf("accepted %q with a top-level ';' at %d", s, tok.pos)
			}
		}
		c2, err := Parse(c.Text, d)
		if err != nil {
			t.Fatalf("re-parsing Text %q: %v", c.Text, err)
		}
		if c2.Text != c.Text || !reflect.DeepEqual(c2.DroppedColumns, c.DroppedColumns) ||
			!reflect.DeepEqual(c2.RenamedColumns, c.RenamedColumns) {
			t.Fatalf("re-parse of %q differs: %+v vs %+v", c.Text, c2, c)
		}
		// As osc will run it, with something appended: the tokens must be the
		// prefix, Text's tokens, then the suffix, in every lexing mode.
		stmt := "ALTER TABLE " + QuoteIdent("t", d) + " " + c.Text + "\n, ADD COLUMN zz INT"
		for _, esc := range []bool{true, false} {
			all, err := lex(stmt, d, false, esc)
			if err != nil {
				t.Fatalf("statement %q does not lex (escapes=%v): %v", stmt, esc, err)
			}
			if len(all) != len(toks)+3+5 {
				t.Fatalf("statement %q lexes to %d tokens, want %d (escapes=%v)", stmt, len(all), len(toks)+8, esc)
			}
			for i, tok := range toks {
				if a := all[3+i]; a.kind != tok.kind || a.src != tok.src {
					t.Fatalf("token %d of %q is %q, want %q (escapes=%v)", i, stmt, a.src, tok.src, esc)
				}
			}
			if tail := all[len(all)-5:]; !tail[0].is(",") || tail[4].src != "INT" {
				t.Fatalf("suffix of %q was not lexed as code (escapes=%v)", stmt, esc)
			}
		}
	})
}

func TestUsing(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{"ALTER COLUMN x TYPE bigint USING x::bigint", map[string]string{"x": "x::bigint"}},
		{`ALTER "X" SET DATA TYPE numeric(10, 2) USING round("X", 2), ADD COLUMN y int`, map[string]string{"X": `round("X", 2)`}},
		{"ALTER COLUMN a TYPE int[] USING ARRAY[a], ALTER COLUMN b TYPE text USING b || 'x' -- c", map[string]string{"a": "ARRAY[a]", "b": "b || 'x'"}},
		{"ALTER COLUMN Mixed TYPE int", nil},
		{"ALTER COLUMN d SET DEFAULT 1", nil},
	} {
		c, err := Parse(tc.in, Postgres)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if !reflect.DeepEqual(c.Using, tc.want) {
			t.Errorf("%s: Using = %q, want %q", tc.in, c.Using, tc.want)
		}
	}
}
