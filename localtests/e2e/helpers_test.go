package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// env is one test's database on the shared test servers.
type env struct {
	t    *testing.T
	my   *harness.MySQL
	name string  // database name
	db   *sql.DB // connected to name
	logs *logBuffer
}

// newEnv gives the test a fresh database. It fails (never skips) when the
// servers are not available.
func newEnv(t *testing.T) *env {
	t.Helper()
	my := harness.MariaDB(t)
	name, db := my.NewDatabase(t)
	return &env{t: t, my: my, name: name, db: db, logs: newLogBuffer(t)}
}

// exec runs a statement and fails the test on error.
func (e *env) exec(query string, args ...any) sql.Result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := e.db.ExecContext(ctx, query, args...)
	if err != nil {
		e.t.Fatalf("%s: %v", abbrev(query), err)
	}
	return res
}

// queryString returns the single value of a one-row, one-column query
// (NULL as "<NULL>").
func (e *env) queryString(query string, args ...any) string {
	e.t.Helper()
	return queryStringOn(e.t, e.db, query, args...)
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func queryStringOn(t *testing.T, q queryer, query string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var v sql.NullString
	if err := q.QueryRowContext(ctx, query, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", abbrev(query), err)
	}
	if !v.Valid {
		return "<NULL>"
	}
	return v.String
}

// count returns SELECT COUNT(*) FROM table.
func (e *env) count(table string) int64 {
	e.t.Helper()
	var n int64
	if err := e.db.QueryRow("SELECT COUNT(*) FROM " + harness.QuoteIdent(table)).Scan(&n); err != nil {
		e.t.Fatalf("counting rows of %s: %v", table, err)
	}
	return n
}

// tableExists reports whether the test database has a table of that name.
func (e *env) tableExists(table string) bool {
	e.t.Helper()
	var n int
	err := e.db.QueryRow("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
		e.name, table).Scan(&n)
	if err != nil {
		e.t.Fatalf("looking up table %s: %v", table, err)
	}
	return n > 0
}

// showCreate returns SHOW CREATE TABLE of table.
func (e *env) showCreate(table string) string {
	e.t.Helper()
	var name, def string
	if err := e.db.QueryRow("SHOW CREATE TABLE "+harness.QuoteIdent(table)).Scan(&name, &def); err != nil {
		e.t.Fatalf("SHOW CREATE TABLE %s: %v", table, err)
	}
	return def
}

// ids returns the primary key values of table in key order, as text.
func (e *env) ids(table string) []string {
	e.t.Helper()
	return harness.Strings(e.t, e.db, "SELECT CAST(id AS CHAR) FROM "+harness.QuoteIdent(table)+" ORDER BY id")
}

// options are the Run options for table t of the test database.
func (e *env) options(alter string) migration.Options {
	return migration.Options{
		Host: e.my.Host, Port: e.my.Port, User: e.my.User, Password: e.my.Password,
		Database: e.name, Table: "t", Alter: alter, Execute: true,
		Logger: e.logs.logger,
	}
}

// assertCleanedUp checks what a successful run with the default options
// leaves behind: the new table t, the original kept as _t_old, the test's
// own tables (others), and nothing else: no shadow, changelog or sentry.
func (e *env) assertCleanedUp(others ...string) {
	e.t.Helper()
	want := append([]string{"_t_old", "t"}, others...)
	slices.Sort(want)
	var got []string
	rows, err := e.db.Query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME", e.name)
	if err != nil {
		e.t.Fatalf("listing tables: %v", err)
	}
	defer rows.Close()
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			e.t.Fatal(err)
		}
		got = append(got, n)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		e.t.Errorf("tables after a successful run = %v, want %v: osc must drop its helper tables (shadow _t_new, changelog _t_osc, cut-over sentry) and keep the original as _t_old", got, want)
	}
}

// assertApplied checks Run's outcome.
func assertApplied(t *testing.T, res *migration.Result, err error) {
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
	if res.OldTable != "_t_old" {
		t.Errorf("Result.OldTable = %q, want %q", res.OldTable, "_t_old")
	}
	// Verification is a safety net: a correct copy and apply need no repair.
	if res.VerifiedChunks == 0 || res.RepairedChunks != 0 {
		t.Errorf("verification compared %d chunks and repaired %d; want some compared and none repaired", res.VerifiedChunks, res.RepairedChunks)
	}
}

// assertSameChecksum compares the checksums of two tables over columns,
// ordered by key, and on a difference reports which keys differ.
func (e *env) assertSameChecksum(got, want string, columns, key []string) {
	e.t.Helper()
	a := harness.Checksum(e.t, e.db, got, columns, key)
	b := harness.Checksum(e.t, e.db, want, columns, key)
	if a == b {
		return
	}
	e.t.Errorf("checksum of %s over %v = %s, of %s = %s: the tables differ; %s", got, columns, a, want, b,
		e.describeDiff(got, want, columns, key))
}

// describeDiff lists (some of) the keys whose rows differ between a and b.
func (e *env) describeDiff(a, b string, columns, key []string) string {
	e.t.Helper()
	rowsOf := func(table string) map[string]string {
		// The checksum expression per row, keyed by the key's text.
		k := make([]string, len(key))
		for i, c := range key {
			k[i] = "HEX(" + harness.QuoteIdent(c) + ")"
		}
		q := harness.ChecksumQuery(table, columns, key)
		q = strings.Replace(q, "SELECT SHA2(", "SELECT CONCAT_WS(',', "+strings.Join(k, ", ")+"), SHA2(", 1)
		rows, err := e.db.Query(q)
		if err != nil {
			e.t.Fatalf("diffing %s: %v", table, err)
		}
		defer rows.Close()
		m := map[string]string{}
		for rows.Next() {
			var kk, h string
			if err := rows.Scan(&kk, &h); err != nil {
				e.t.Fatal(err)
			}
			m[kk] = h
		}
		return m
	}
	onlyA, onlyB, differ := keyDiff(rowsOf(a), rowsOf(b))
	return fmt.Sprintf("keys (hex) only in %s: %d [%s]; only in %s: %d [%s]; in both but different: %d [%s]",
		a, len(onlyA), firstKeys(onlyA), b, len(onlyB), firstKeys(onlyB), len(differ), firstKeys(differ))
}

// keyDiff compares two tables' rows by key: the keys only in a, only in b,
// and in both with different rows, each sorted.
func keyDiff(a, b map[string]string) (onlyA, onlyB, differ []string) {
	for k, r := range a {
		rb, ok := b[k]
		switch {
		case !ok:
			onlyA = append(onlyA, k)
		case rb != r:
			differ = append(differ, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			onlyB = append(onlyB, k)
		}
	}
	for _, s := range [][]string{onlyA, onlyB, differ} {
		slices.Sort(s)
	}
	return onlyA, onlyB, differ
}

// firstKeys lists up to 10 keys for a message.
func firstKeys(s []string) string {
	if len(s) > 10 {
		return strings.Join(s[:10], " ") + fmt.Sprintf(" ... (%d in all)", len(s))
	}
	return strings.Join(s, " ")
}

// runAsync starts migration.Run in the background.
type runResult struct {
	res *migration.Result
	err error
}

func runAsync(ctx context.Context, o migration.Options) <-chan runResult {
	ch := make(chan runResult, 1)
	go func() {
		res, err := migration.Run(ctx, o)
		ch <- runResult{res, err}
	}()
	return ch
}

// retryable reports a MySQL error an application retries its transaction
// on: deadlock, lock wait timeout, table definition changed.
func retryable(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1213, 1205, 1412:
			return true
		}
	}
	return false
}

func abbrev(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// logBuffer collects osc's log and prints it only when the test fails. It
// never writes to t after the test ended, so late log lines are harmless.
type logBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	logger *zap.Logger
}

func newLogBuffer(t *testing.T) *logBuffer {
	lb := &logBuffer{}
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	lb.logger = zap.New(zapcore.NewCore(enc, zapcore.AddSync(lb), zap.InfoLevel))
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		lb.mu.Lock()
		defer lb.mu.Unlock()
		s := lb.buf.String()
		if s == "" {
			return
		}
		const max = 40000
		if len(s) > max {
			s = "...\n" + s[len(s)-max:]
		}
		t.Logf("osc log:\n%s", s)
	})
	return lb
}

func (lb *logBuffer) Write(p []byte) (int, error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.buf.Write(p)
}

// matching returns the log lines containing s, joined, or "none".
func (lb *logBuffer) matching(s string) string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	var out []string
	for _, line := range strings.Split(lb.buf.String(), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "\n")
}
