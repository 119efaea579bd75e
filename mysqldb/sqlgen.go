package mysqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/osc-dev/osc/copier"
)

var decimalTypeRe = regexp.MustCompile(`^(?i)decimal\(\d+,\d+\)`)

// valueCharset is the charset of a string value of column c as osc holds
// it: raw bytes in the column's charset, except ENUM/SET members, which
// the binlog reader names from information_schema, in UTF-8.
func valueCharset(c *column) string {
	if c.Charset != "" && (c.DataType == "enum" || c.DataType == "set") {
		return "utf8mb4"
	}
	return c.Charset
}

// keySelectExpr reads key column c, referenced as ref, so that valueExpr
// can take the value back: ENUM/SET members in UTF-8, like the binlog
// reader names them.
func keySelectExpr(c *column, ref string) string {
	if valueCharset(c) != c.Charset {
		return "CONVERT(" + ref + " USING " + valueCharset(c) + ")"
	}
	return ref
}

// asTarget renders source column reference ref in target's terms (its
// charset and collation), to compare it with target's values.
func asTarget(ref string, target *column) string {
	if target.Charset == "" {
		return ref
	}
	return "CONVERT(" + ref + " USING " + target.Charset + ") COLLATE " + target.Collation
}

// valueExpr is a placeholder for a value of column c as it comes from the
// binlog or a key read over the binary connection: strings are raw bytes,
// reinterpreted in their charset, never transcoded twice.
func valueExpr(c *column) string {
	switch {
	case c.Charset != "":
		return "CONVERT(? USING " + valueCharset(c) + ")"
	case c.DataType == "decimal":
		// A string compared with a DECIMAL is compared as a double.
		if m := decimalTypeRe.FindString(c.ColumnType); m != "" {
			return "CAST(? AS " + m + ")"
		}
	}
	return "?"
}

// cmpExpr is a placeholder holding a value of column src, comparable with
// column target in target's own charset and collation so that the index on
// target is usable.
func cmpExpr(src, target *column) string {
	e := valueExpr(src)
	if src.Charset != "" && target.Charset != "" {
		if target.Charset != valueCharset(src) {
			e = "CONVERT(" + e + " USING " + target.Charset + ")"
		}
		e += " COLLATE " + target.Collation
	}
	return e
}

// tuplePredicate compares the key columns cols (quoted) with one key value
// of placeholders exprs: op is ">" or "<=". It expands the row comparison
// so that the range optimizer uses the index on every server version. It
// returns the SQL and, for each placeholder in it, the key position whose
// value it takes.
func tuplePredicate(cols, exprs []string, op string) (string, []int) {
	strict := op // comparison on the last column
	lead := ">"
	if op == "<=" {
		lead = "<"
	}
	var ors []string
	var idx []int
	for i := range cols {
		var ands []string
		for j := 0; j < i; j++ {
			ands = append(ands, cols[j]+" = "+exprs[j])
			idx = append(idx, j)
		}
		o := lead
		if i == len(cols)-1 {
			o = strict
		}
		ands = append(ands, cols[i]+" "+o+" "+exprs[i])
		idx = append(idx, i)
		ors = append(ors, "("+strings.Join(ands, " AND ")+")")
	}
	return "(" + strings.Join(ors, " OR ") + ")", idx
}

// pick returns key[idx[0]], key[idx[1]], ... appended to args.
func pick(args []any, key []any, idx []int) []any {
	for _, i := range idx {
		args = append(args, key[i])
	}
	return args
}

// scanKey turns a key read over the binary connection into parameters:
// integers as numbers (a string compared with an integer column is
// compared as a double, which loses precision past 2^53), the rest as raw
// bytes for valueExpr.
func scanKey(cols []*column, raw []sql.RawBytes) (copier.Key, error) {
	k := make(copier.Key, len(raw))
	for i, b := range raw {
		v, err := keyValue(cols[i], b)
		if err != nil {
			return nil, err
		}
		k[i] = v
	}
	return k, nil
}

func keyValue(c *column, b []byte) (any, error) {
	if b == nil {
		return nil, nil
	}
	switch c.DataType {
	case "tinyint", "smallint", "mediumint", "int", "bigint", "year":
		var v any
		var err error
		if c.Unsigned {
			var u uint64
			_, err = fmt.Sscan(string(b), &u)
			v = u
		} else {
			var s int64
			_, err = fmt.Sscan(string(b), &s)
			v = s
		}
		return v, err
	}
	return append([]byte(nil), b...), nil
}

// retryTransient reruns fn, a whole transaction, when the server rolled it
// back for a deadlock or a lock wait timeout. Under a heavy write load the
// applier's small transactions are InnoDB's chosen victims again and again
// while the copy's chunks go through, so the retries last for a time
// budget rather than a few attempts, with jittered backoff.
func retryTransient(ctx context.Context, fn func() error) error {
	const budget = time.Minute
	deadline := time.Now().Add(budget)
	for i := 1; ; i++ {
		err := fn()
		var me *mysql.MySQLError
		if err == nil || time.Now().After(deadline) || !errors.As(err, &me) || (me.Number != 1213 && me.Number != 1205) {
			return err
		}
		wait := min(time.Duration(i)*20*time.Millisecond, 500*time.Millisecond)
		select {
		case <-time.After(wait + rand.N(wait)):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func isDuplicate(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1062
}

type warning struct {
	Level   string
	Code    int
	Message string
}

func showWarnings(ctx context.Context, tx *sql.Tx) ([]warning, error) {
	rows, err := tx.QueryContext(ctx, "SHOW WARNINGS")
	if err != nil {
		return nil, fmt.Errorf("reading warnings: %w", err)
	}
	defer rows.Close()
	var ws []warning
	for rows.Next() {
		var w warning
		if err := rows.Scan(&w.Level, &w.Code, &w.Message); err != nil {
			return nil, err
		}
		ws = append(ws, w)
	}
	return ws, rows.Err()
}

// statementWarnings checks the warnings of the statement tx just ran (see
// checkWarnings). Strict mode fails on most lossy values, but some
// (DECIMAL rounding, trailing spaces cut) are only notes.
func (e *Engine) statementWarnings(ctx context.Context, tx *sql.Tx, what string) error {
	ws, err := showWarnings(ctx, tx)
	if err != nil {
		return err
	}
	if err := e.checkWarnings(ws); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// errConflict is a duplicate on a unique key other than the chunking key:
// see displace.go.
type errConflict struct{ msg string }

func (e *errConflict) Error() string { return e.msg }

var (
	dupKeyRe    = regexp.MustCompile(`for key '(?:[^']*\.)?([^'.]*)'$`)
	noDefaultRe = regexp.MustCompile(`^Field '([^']*)' doesn't have a default value`)
)

// checkWarnings accepts the warnings osc expects: a duplicate on the
// chunking key (the row is already in the shadow, from the copy or the
// stream) and a missing default of a column osc does not fill; anything
// else means the ALTER would change data and is an error.
func (e *Engine) checkWarnings(ws []warning) error {
	var bad []string
	var dups []string
	for _, w := range ws {
		// A new NOT NULL column without DEFAULT gets its type's implicit
		// default, as ALTER TABLE itself would fill it.
		if m := noDefaultRe.FindStringSubmatch(w.Message); w.Code == 1364 && m != nil && e.unfilled[strings.ToLower(m[1])] {
			continue
		}
		if w.Code == 1062 {
			if m := dupKeyRe.FindStringSubmatch(w.Message); m != nil && m[1] == e.shadowKeyName {
				continue
			}
			dups = append(dups, w.Message)
			continue
		}
		bad = append(bad, fmt.Sprintf("%s %d: %s", w.Level, w.Code, w.Message))
	}
	if len(bad) > 0 {
		return fmt.Errorf("the new table definition does not hold the data as it is (the server warned: %s); osc stops rather than change rows: fix the data or the ALTER", strings.Join(limit(bad, 5), "; "))
	}
	if len(dups) > 0 {
		return &errConflict{msg: fmt.Sprintf("duplicate values for a unique key of the new table definition: %s", strings.Join(limit(dups, 5), "; "))}
	}
	return nil
}

func limit(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("and %d more", len(s)-n))
	}
	return s
}
