// Package alter validates the user's --alter clause list and answers the
// questions other packages ask about SQL text: which columns the clauses drop
// or rename, whether a replicated statement is DDL and whether it names a
// given table, and how to quote identifiers.
//
// osc runs "ALTER TABLE <shadow> " + Clauses.Text, so the text must be one
// clause list and nothing else. Validation lexes the text with the server's
// own rules for strings, quoted identifiers and comments, and rejects anything
// whose lexing depends on server settings or version instead of guessing.
// The text is assumed to travel over a UTF-8 (utf8mb4) connection: in
// multi-byte charsets such as GBK or SJIS a backslash can be the second byte
// of a character, which changes where strings end.
package alter

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Dialect selects quoting and comment rules.
type Dialect int

const (
	MySQL Dialect = iota // MySQL and MariaDB
	Postgres
)

func (d Dialect) String() string {
	switch d {
	case MySQL:
		return "MySQL"
	case Postgres:
		return "Postgres"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// Error is returned by Parse. Msg says what is wrong and what to do.
type Error struct {
	Msg string
	Pos int // byte offset into the --alter text, or -1
}

func (e *Error) Error() string { return "invalid --alter: " + e.Msg }

// Clauses is a validated ALTER clause list.
type Clauses struct {
	// Text is the clause list with surrounding whitespace and comments and a
	// single trailing ";" removed, ready to append after "ALTER TABLE <name> ".
	Text string

	Dialect Dialect

	// DroppedColumns lists the columns dropped by DROP [COLUMN] x, in order.
	// Names are unquoted; Postgres unquoted names are folded to lower case.
	// MySQL column names compare case-insensitively.
	DroppedColumns []string

	// RenamedColumns maps old to new names for RENAME COLUMN a TO b,
	// Postgres RENAME a TO b and MySQL CHANGE [COLUMN] a b ... with a != b.
	// Nil when nothing is renamed.
	RenamedColumns map[string]string

	// Using maps a column to the USING expression of a Postgres
	// "ALTER [COLUMN] c [SET DATA] TYPE t USING expr" clause: the copy and
	// the applier compute the shadow's value with it from the source row.
	Using map[string]string
}

// ShadowColumn maps a source-table column to its name in the shadow table;
// ok is false if the clauses drop it. Dropped and renamed names refer to the
// source table, as in the server.
func (c *Clauses) ShadowColumn(src string) (name string, ok bool) {
	eq := func(a, b string) bool { return a == b }
	if c.Dialect == MySQL {
		eq = strings.EqualFold
	}
	for _, d := range c.DroppedColumns {
		if eq(d, src) {
			return "", false
		}
	}
	if n, ok := c.RenamedColumns[src]; ok {
		return n, true
	}
	for old, n := range c.RenamedColumns {
		if eq(old, src) {
			return n, true
		}
	}
	return src, true
}

// Parse validates s as one ALTER TABLE clause list for dialect d. Errors are
// *Error.
func Parse(s string, d Dialect) (*Clauses, error) {
	c, err := parse(s, d)
	if err != nil {
		return nil, err // not a typed nil
	}
	return c, nil
}

const emptyMsg = `empty --alter: pass the clauses to apply, e.g. --alter "ADD COLUMN x INT NOT NULL DEFAULT 0"`

func parse(s string, d Dialect) (*Clauses, *Error) {
	if d != MySQL && d != Postgres {
		return nil, &Error{Msg: fmt.Sprintf("unknown SQL dialect %v", d), Pos: -1}
	}
	if !utf8.ValidString(s) {
		return nil, &Error{Msg: "text is not valid UTF-8", Pos: -1}
	}
	// Control characters (NUL above all) are lexed differently by different
	// servers and clients and have no business in a clause list.
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' && c != '\n' && c != '\r' {
			return nil, errAt(s, i, fmt.Sprintf("control character 0x%02x is not allowed; remove it", c))
		}
	}
	toks, err := lex(s, d, true, true)
	if err != nil {
		return nil, err
	}

	// A single trailing ";" is a harmless habit; any other is a second statement.
	if n := len(toks); n > 0 && toks[n-1].is(";") {
		toks = toks[:n-1]
	}
	for _, t := range toks {
		if t.is(";") {
			return nil, errAt(s, t.pos, `only one ALTER clause list is allowed, but ";" ends a statement here; remove it (to apply several changes, separate the clauses with commas)`)
		}
	}
	if len(toks) == 0 { // only whitespace and comments
		return nil, &Error{Msg: emptyMsg, Pos: -1}
	}

	// Check bracket balance and split on top-level commas.
	type clause struct {
		toks []token
		pos  int // where the clause starts (or would start, if empty)
	}
	var clauses []clause
	var open []token
	start, startPos := 0, toks[0].pos
	for i, t := range toks {
		if t.kind != tokPunct {
			continue
		}
		switch t.src {
		case "(", "[":
			open = append(open, t)
		case ")", "]":
			want := "("
			if t.src == "]" {
				want = "["
			}
			if len(open) == 0 {
				return nil, errAt(s, t.pos, fmt.Sprintf("unbalanced parentheses: %q has no matching %q", t.src, want))
			}
			if o := open[len(open)-1]; o.src != want {
				return nil, errAt(s, t.pos, fmt.Sprintf("unbalanced parentheses: %q closes the %q opened at byte %d", t.src, o.src, o.pos))
			}
			open = open[:len(open)-1]
		case ",":
			if len(open) == 0 {
				clauses = append(clauses, clause{toks[start:i], startPos})
				start, startPos = i+1, t.end
			}
		}
	}
	if len(open) > 0 {
		o := open[len(open)-1]
		return nil, errAt(s, o.pos, fmt.Sprintf("unbalanced parentheses: %q is never closed", o.src))
	}
	clauses = append(clauses, clause{toks[start:], startPos})

	c := &Clauses{Text: s[toks[0].pos:toks[len(toks)-1].end], Dialect: d}
	for _, cl := range clauses {
		if len(cl.toks) == 0 {
			return nil, errAt(s, cl.pos, "empty clause (stray comma?); remove the extra comma")
		}
		if err := c.inspect(s, cl.toks); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// inspect rejects clauses that would affect anything but the shadow table's
// definition, and records dropped and renamed columns. Unless it can tell
// exactly which column a DROP/RENAME/CHANGE names it fails, because a wrong
// column mapping would silently copy data into the wrong place.
func (c *Clauses) inspect(s string, cl []token) *Error {
	d := c.Dialect
	kw := func(i int) string {
		if i < len(cl) && cl[i].kind == tokWord {
			return strings.ToUpper(cl[i].src)
		}
		return ""
	}
	ident := func(i int, what string) (string, *Error) {
		if i < len(cl) {
			t := cl[i]
			if t.kind == tokIdent || (t.kind == tokWord && (d == MySQL || !isDigit(t.src[0]))) {
				return identValue(t, d), nil
			}
		}
		q := "`"
		if d == Postgres {
			q = `"`
		}
		return "", errAt(s, cl[0].pos, fmt.Sprintf("cannot tell which column this %s clause names; write it as %s (quote unusual names with %s)", cl[0].src, what, q))
	}
	ifExists := func(k int) int {
		if kw(k) == "IF" && kw(k+1) == "EXISTS" {
			return k + 2
		}
		return k
	}
	// renameCol parses "old TO new" at cl[k:].
	renameCol := func(k int) *Error {
		const form = "RENAME COLUMN old TO new"
		old, err := ident(k, form)
		if err != nil {
			return err
		}
		if kw(k+1) != "TO" {
			return errAt(s, cl[0].pos, "expected "+form)
		}
		nw, err := ident(k+2, form)
		if err != nil {
			return err
		}
		c.rename(old, nw)
		return nil
	}
	notShadow := func(what string) *Error {
		return errAt(s, cl[0].pos, what+" would affect more than osc's shadow table, so it is not supported; run it separately before or after the migration")
	}
	tableRename := func() *Error {
		return errAt(s, cl[0].pos, `renaming the table is not allowed in --alter (osc swaps the tables itself at cut-over); to rename a column write "RENAME COLUMN old TO new"`)
	}

	switch kw(0) {
	case "ALTER":
		k := 1
		for kw(k) == "ONLINE" || kw(k) == "OFFLINE" || kw(k) == "IGNORE" {
			k++
		}
		if kw(k) == "TABLE" {
			return errAt(s, cl[0].pos, `pass only the clauses, e.g. --alter "ADD COLUMN x INT", without the leading "ALTER TABLE <name>": osc applies them to its shadow table itself`)
		}
		if d == Postgres {
			return c.using(s, cl, kw, ident)
		}

	case "RENAME":
		switch kw(1) {
		case "COLUMN":
			return renameCol(ifExists(2))
		case "INDEX", "KEY", "CONSTRAINT":
			return nil
		case "TO", "AS":
			return tableRename()
		}
		if d == MySQL { // RENAME new_name
			return tableRename()
		}
		return renameCol(1) // Postgres: RENAME [COLUMN] is optional

	case "DROP":
		k := 1
		if kw(k) == "COLUMN" {
			k++
		} else if c.dropsNonColumn(kw) {
			return nil
		}
		name, err := ident(ifExists(k), "DROP COLUMN name")
		if err != nil {
			return err
		}
		c.DroppedColumns = append(c.DroppedColumns, name)

	case "CHANGE":
		if d != MySQL {
			return nil
		}
		const form = "CHANGE [COLUMN] old new <definition>"
		k := 1
		if kw(k) == "COLUMN" {
			k++
		}
		k = ifExists(k)
		old, err := ident(k, form)
		if err != nil {
			return err
		}
		nw, err := ident(k+1, form)
		if err != nil {
			return err
		}
		c.rename(old, nw)

	case "DISCARD", "IMPORT":
		return errAt(s, cl[0].pos, "DISCARD/IMPORT TABLESPACE works on the table's data files and makes no sense on osc's shadow table; run it separately")
	case "EXCHANGE":
		return notShadow("EXCHANGE PARTITION (it swaps data with another table)")
	case "ATTACH", "DETACH":
		return notShadow(kw(0) + " PARTITION (it moves another table)")
	case "INHERIT":
		return notShadow("INHERIT (it makes the shadow's rows visible through the parent)")
	case "NO":
		if kw(1) == "INHERIT" {
			return notShadow("NO INHERIT")
		}
	case "SET":
		if kw(1) == "SCHEMA" {
			return errAt(s, cl[0].pos, "SET SCHEMA moves the table to another schema, which osc cannot do; move the table separately")
		}
		if d == Postgres && (kw(1) == "LOGGED" || kw(1) == "UNLOGGED") {
			return errAt(s, cl[0].pos, "SET LOGGED/UNLOGGED is not supported: an unlogged table is not logically replicated, and osc reads concurrent writes from logical replication")
		}
		if d == Postgres && kw(1) == "WITHOUT" && kw(2) == "CLUSTER" {
			return catalogOnly(s, cl)
		}
	case "OWNER", "REPLICA", "ENABLE", "DISABLE", "FORCE", "CLUSTER":
		if d == Postgres {
			return catalogOnly(s, cl)
		}
	case "OF", "NOT":
		if d == Postgres && (kw(0) == "OF" || kw(1) == "OF") {
			return notShadow("OF/NOT OF (it ties the table to a composite type)")
		}
	}
	return nil
}

// catalogOnly refuses a Postgres clause that changes only catalog entries of
// the table, which osc would have to carry over from the original anyway.
func catalogOnly(s string, cl []token) *Error {
	return errAt(s, cl[0].pos, "this clause changes only the catalog, not the rows: run it directly with ALTER TABLE (it needs no rebuild), before or after the migration")
}

// using records the USING expression of a Postgres ALTER COLUMN ... TYPE
// clause: everything after the clause's top-level USING keyword.
func (c *Clauses) using(s string, cl []token, kw func(int) string, ident func(int, string) (string, *Error)) *Error {
	k := 1
	if kw(k) == "COLUMN" {
		k++
	}
	typeAt := k + 1
	if kw(typeAt) == "SET" && kw(typeAt+1) == "DATA" {
		typeAt += 2
	}
	if kw(typeAt) != "TYPE" {
		return nil
	}
	depth := 0
	for i := typeAt + 1; i < len(cl); i++ {
		switch t := cl[i]; {
		case t.is("(") || t.is("["):
			depth++
		case t.is(")") || t.is("]"):
			depth--
		case depth == 0 && kw(i) == "USING":
			if i+1 == len(cl) {
				return errAt(s, t.pos, "USING needs an expression")
			}
			col, err := ident(k, "ALTER COLUMN name TYPE type USING expression")
			if err != nil {
				return err
			}
			if c.Using == nil {
				c.Using = map[string]string{}
			}
			c.Using[col] = s[cl[i+1].pos:cl[len(cl)-1].end]
			return nil
		}
	}
	return nil
}

// dropsNonColumn reports whether a DROP without COLUMN drops something other
// than a column, given the clause's keyword accessor.
func (c *Clauses) dropsNonColumn(kw func(int) string) bool {
	switch w := kw(1); w {
	case "CONSTRAINT":
		return true
	case "INDEX", "KEY", "PRIMARY", "FOREIGN", "CHECK", "PARTITION":
		return c.Dialect == MySQL
	case "SYSTEM": // MariaDB DROP SYSTEM VERSIONING; "system" is not reserved
		return c.Dialect == MySQL && kw(2) == "VERSIONING"
	case "PERIOD": // MariaDB DROP PERIOD FOR name
		return c.Dialect == MySQL && kw(2) == "FOR"
	}
	return false
}

func (c *Clauses) rename(old, nw string) {
	if old == nw {
		return
	}
	if c.RenamedColumns == nil {
		c.RenamedColumns = map[string]string{}
	}
	c.RenamedColumns[old] = nw
}

// QuoteIdent quotes name as an identifier: backticks for MySQL, double
// quotes for Postgres, with the quote character doubled inside.
func QuoteIdent(name string, d Dialect) string {
	q := "`"
	if d == Postgres {
		q = `"`
	}
	return q + strings.ReplaceAll(name, q, q+q) + q
}

// References reports whether stmt names the table name as an identifier:
// bare, quoted, or as the last part of a qualified name. Names inside string
// literals and comments, and longer identifiers containing name, do not count.
//
// It errs towards true, since a missed reference to the table being migrated
// is worse than a false alarm: MySQL names compare case-insensitively (the
// server may run with lower_case_table_names), MySQL "..." counts as an
// identifier (ANSI_QUOTES), /*! */ comment bodies count as code, and strings
// are lexed both with and without backslash escapes (a setting the statement
// does not carry), keeping every reading that lexes cleanly. Postgres names
// follow the server: unquoted ones fold to lower case, quoted ones are exact.
func References(stmt, name string, d Dialect) bool {
	if name == "" {
		return false
	}
	// A reading that fails to lex cannot be how the server read the
	// statement, unless every reading fails.
	hitClean, hitAny, anyClean := false, false, false
	for _, esc := range []bool{true, false} {
		toks, err := lex(stmt, d, false, esc)
		hit := references(toks, name, d)
		hitAny = hitAny || hit
		hitClean = hitClean || (hit && err == nil)
		anyClean = anyClean || err == nil
	}
	if anyClean {
		return hitClean
	}
	return hitAny
}

func references(toks []token, name string, d Dialect) bool {
	for i, t := range toks {
		switch t.kind {
		case tokWord, tokIdent:
		case tokString:
			if d != MySQL || t.src[0] != '"' {
				continue
			}
		default:
			continue
		}
		if i+1 < len(toks) && toks[i+1].is(".") {
			continue // a database or schema qualifier, not the table
		}
		v := identValue(t, d)
		if v == name || (d == MySQL && strings.EqualFold(v, name)) {
			return true
		}
	}
	return false
}

// ddlKeywords are the statement keywords that change schema or, for
// TRUNCATE, empty a table without row events.
var ddlKeywords = map[string]bool{
	"ALTER": true, "CREATE": true, "DROP": true, "RENAME": true,
	"TRUNCATE": true, "COMMENT": true, "IMPORT": true,
}

// IsDDL reports whether stmt is a DDL statement, judged by its first keyword
// after comments (MySQL /*! */ bodies count as code): ALTER, CREATE, DROP,
// RENAME, TRUNCATE, COMMENT (Postgres COMMENT ON) or IMPORT (MySQL IMPORT
// TABLE). BEGIN, COMMIT, DML and everything else is not.
func IsDDL(stmt string, d Dialect) bool {
	toks, _ := lex(stmt, d, false, true)
	return len(toks) > 0 && toks[0].kind == tokWord && ddlKeywords[strings.ToUpper(toks[0].src)]
}
