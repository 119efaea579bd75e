package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// pgEnv is one PostgreSQL test's database on the shared test servers.
type pgEnv struct {
	t    *testing.T
	pg   *harness.PG
	name string  // database name
	db   *sql.DB // connected to name
	logs *logBuffer
}

// newPGEnv gives the test a fresh database on the PostgreSQL primary. It
// fails (never skips) when the servers are not available.
func newPGEnv(t *testing.T) *pgEnv {
	t.Helper()
	pg := harness.Postgres(t)
	name, db := pg.NewDatabase(t)
	return &pgEnv{t: t, pg: pg, name: name, db: db, logs: newLogBuffer(t)}
}

// exec runs statements (several, separated by semicolons, when there are no
// arguments) and fails the test on error.
func (e *pgEnv) exec(query string, args ...any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := e.db.ExecContext(ctx, query, args...); err != nil {
		e.t.Fatalf("%s: %v", abbrev(query), err)
	}
}

// queryString returns the single value of a one-row, one-column query
// (NULL as "<NULL>").
func (e *pgEnv) queryString(query string, args ...any) string {
	e.t.Helper()
	return queryStringOn(e.t, e.db, query, args...)
}

// strings returns the values of a one-column query (NULL as "NULL").
func (e *pgEnv) strings(query string, args ...any) []string {
	e.t.Helper()
	return harness.Strings(e.t, e.db, query, args...)
}

func (e *pgEnv) count(table string) int64 {
	e.t.Helper()
	var n int64
	if err := e.db.QueryRow("SELECT count(*) FROM " + pgQualified(table)).Scan(&n); err != nil {
		e.t.Fatalf("counting rows of %s: %v", table, err)
	}
	return n
}

// relExists reports whether a relation of that name exists in schema public.
func (e *pgEnv) relExists(name string) bool {
	e.t.Helper()
	return e.queryString("SELECT to_regclass($1) IS NOT NULL", pgQualified(name)) == "true"
}

// connect opens a pgx connection of its own to the test database, with
// extra session settings; it is closed at the end of the test.
func (e *pgEnv) connect(params map[string]string) *pgx.Conn {
	e.t.Helper()
	cfg, err := pgx.ParseConfig(e.pg.DSN(e.name))
	if err != nil {
		e.t.Fatalf("parsing the DSN: %v", err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	// Literal SQL, no prepared statements: every statement text differs,
	// and the same text must work against the table before and after the
	// swap.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		e.t.Fatalf("connecting to %s: %v", e.name, err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

// options are the Run options for a table of the test database.
func (e *pgEnv) options(table, alter string) migration.Options {
	return migration.Options{
		Driver: "postgres",
		Host:   e.pg.Host, Port: e.pg.Port, User: e.pg.User, Password: e.pg.Password,
		Database: e.name, Table: table, Alter: alter, Execute: true,
		CutOverLockTimeout: 2 * time.Second,
		Logger:             e.logs.logger,
	}
}

// pgQualified quotes "table" (schema public) or "schema.table".
func pgQualified(table string) string {
	schema, name, ok := strings.Cut(table, ".")
	if !ok {
		schema, name = "public", table
	}
	return harness.PGQuoteIdent(schema) + "." + harness.PGQuoteIdent(name)
}

// pgIdents quotes and joins column names.
func pgIdents(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = harness.PGQuoteIdent(c)
	}
	return strings.Join(q, ", ")
}

// pgLit is a string literal (standard_conforming_strings is on).
func pgLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// pgRetryable reports an error an application retries its transaction on.
func pgRetryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40P01", "40001": // deadlock, serialization failure
			return true
		}
	}
	return false
}

// pgAssertApplied checks Run's outcome; oldTable is the expected
// Result.OldTable ("" with DropOldTable).
func pgAssertApplied(t *testing.T, res *migration.Result, err error, oldTable string) {
	t.Helper()
	if err != nil {
		t.Fatalf("migration.Run failed (exit code %d): %v", migration.ExitCode(err), err)
	}
	if res == nil || !res.Applied {
		t.Fatalf("migration.Run returned no error but the result is not applied: %+v", res)
	}
	if res.ExitCode != migration.ExitApplied {
		t.Errorf("Result.ExitCode = %d, want %d", res.ExitCode, migration.ExitApplied)
	}
	if res.OldTable != oldTable {
		t.Errorf("Result.OldTable = %q, want %q", res.OldTable, oldTable)
	}
	// Verification is a safety net: a correct copy and apply need no repair.
	if res.VerifiedChunks == 0 || res.RepairedChunks != 0 {
		t.Errorf("verification compared %d chunks and repaired %d; want some compared and none repaired", res.VerifiedChunks, res.RepairedChunks)
	}
}

// assertNoLeftovers checks that no replication slot of the test database
// and no publication is left, and that the schema public holds exactly the
// tables want (the shadow is gone, the old table kept or not as the run
// was told).
func (e *pgEnv) assertNoLeftovers(want ...string) {
	e.t.Helper()
	if slots := e.strings(`SELECT slot_name || ' (active ' || active || ')' FROM pg_replication_slots
		WHERE database = current_database()`); len(slots) > 0 {
		e.t.Errorf("replication slots left in database %s: %v", e.name, slots)
	}
	if pubs := e.strings("SELECT pubname FROM pg_publication"); len(pubs) > 0 {
		e.t.Errorf("publications left: %v", pubs)
	}
	got := e.strings("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') ORDER BY relname")
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		e.t.Errorf("tables in schema public = %v, want %v", got, want)
	}
	// Every sequence belongs to a column of a table that is still there.
	if orphans := e.strings(`SELECT s.oid::regclass::text FROM pg_class s
		WHERE s.relkind = 'S' AND s.relnamespace = 'public'::regnamespace AND NOT EXISTS (
			SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid
				AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))`); len(orphans) > 0 {
		e.t.Errorf("sequences owned by no column: %v", orphans)
	}
}

// pgStreaming reports whether osc's change stream runs in the test
// database: its walsender streams from the slot. (The slot alone is not
// enough: it is listed while it is still being created, and what commits
// before its consistent point never reaches the stream.)
func (e *pgEnv) pgStreaming() bool {
	e.t.Helper()
	return e.queryString(`SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
		WHERE s.database = current_database() AND s.slot_name LIKE 'osc\_%' AND r.state IN ('catchup', 'streaming')`) != "0"
}

// assertSameRows compares two tables over columns, ordered by key, with the
// harness's checksum, and on a difference lists keys whose rows differ.
func (e *pgEnv) assertSameRows(got, want string, columns, key []string) {
	e.t.Helper()
	a := harness.PGChecksum(e.t, e.db, got, columns, key)
	b := harness.PGChecksum(e.t, e.db, want, columns, key)
	if a == b {
		return
	}
	e.t.Errorf("checksum of %s over %v = %s, of %s = %s: the tables differ; %s", got, columns, a, want, b,
		e.describeDiff(got, want, columns, key))
}

// describeDiff lists (some of) the keys whose rows differ between a and b,
// and the first differing row of each side.
func (e *pgEnv) describeDiff(a, b string, columns, key []string) string {
	e.t.Helper()
	rowsOf := func(table string) map[string]string {
		rows, err := e.db.Query(fmt.Sprintf("SELECT ROW(%s)::text, ROW(%s)::text FROM %s",
			pgIdents(key), pgIdents(columns), pgQualified(table)))
		if err != nil {
			e.t.Fatalf("diffing %s: %v", table, err)
		}
		defer rows.Close()
		m := map[string]string{}
		for rows.Next() {
			var k, r string
			if err := rows.Scan(&k, &r); err != nil {
				e.t.Fatal(err)
			}
			m[k] = r
		}
		if err := rows.Err(); err != nil {
			e.t.Fatal(err)
		}
		return m
	}
	ma, mb := rowsOf(a), rowsOf(b)
	onlyA, onlyB, differ := keyDiff(ma, mb)
	msg := fmt.Sprintf("distinct keys: %d in %s, %d in %s; keys only in %s: %d [%s]; only in %s: %d [%s]; in both but different: %d [%s]",
		len(ma), a, len(mb), b, a, len(onlyA), firstKeys(onlyA), b, len(onlyB), firstKeys(onlyB), len(differ), firstKeys(differ))
	if len(differ) > 0 {
		k := differ[0]
		msg += fmt.Sprintf("\nfirst differing row %s:\n  %s: %s\n  %s: %s", k, a, pgShorten(ma[k]), b, pgShorten(mb[k]))
	}
	return msg
}

// pgShorten keeps a row's text readable when it holds big values.
func pgShorten(s string) string {
	const max = 600
	if len(s) <= max {
		return s
	}
	return s[:max/2] + fmt.Sprintf(" ...(%d bytes)... ", len(s)-max) + s[len(s)-max/2:]
}

// pgColumnDefs describes table's columns as "name type [NOT NULL]
// [GENERATED (expr) | DEFAULT expr] [IDENTITY a|d]", in attnum order.
func (e *pgEnv) pgColumnDefs(table string) []string {
	e.t.Helper()
	return e.strings(`SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
			|| CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
			|| CASE WHEN a.attgenerated = 's' THEN ' GENERATED (' || pg_get_expr(d.adbin, d.adrelid) || ')'
				WHEN d.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END
			|| CASE WHEN a.attidentity <> '' THEN ' IDENTITY ' || a.attidentity::text ELSE '' END
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, pgQualified(table))
}

// pgConstraints lists table's constraints as "name: definition", sorted.
func (e *pgEnv) pgConstraints(table string) []string {
	e.t.Helper()
	return e.strings(`SELECT conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint
		WHERE conrelid = $1::regclass ORDER BY conname`, pgQualified(table))
}

// pgIndexes lists table's indexes as "name: definition without the name
// and table", sorted.
func (e *pgEnv) pgIndexes(table string) []string {
	e.t.Helper()
	return e.strings(`SELECT c.relname || ': ' || regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \S+ ON \S+ ', '\1')
		FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass ORDER BY c.relname`, pgQualified(table))
}

// pgWaitFor polls cond until it holds, the run ends (its result is stored
// in *r and done set), or the timeout passes (the test fails). It reports
// whether cond held.
func pgWaitFor(t *testing.T, what string, timeout time.Duration, run <-chan runResult, r *runResult, done *bool, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if *done {
			return false
		}
		if time.Now().After(deadline) {
			t.Errorf("timed out after %v waiting for %s", timeout, what)
			return false
		}
		select {
		case *r = <-run:
			*done = true
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}

// pgFlag creates (on) or removes (if there) the throttle flag file.
func pgFlag(t *testing.T, path string, on bool) {
	t.Helper()
	var err error
	if on {
		err = os.WriteFile(path, nil, 0o644)
	} else {
		if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	}
	if err != nil {
		t.Fatalf("throttle flag: %v", err)
	}
}
