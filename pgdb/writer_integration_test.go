package pgdb

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/replication"
)

func TestMain(m *testing.M) { harness.Main(m) }

// shadowEngine prepares an engine with the shadow of table t (created by
// ddl) and the clauses applied, and the applier's connection, as a run
// would before applying changes.
func shadowEngine(t *testing.T, ddl, clauses string) (*Engine, *sql.DB) {
	t.Helper()
	e, db, _ := prepareShadow(t, clauses, nil, ddl)
	ctx := context.Background()
	if err := e.EndCopy(ctx); err != nil { // builds the shadow's key
		t.Fatal(err)
	}
	var err error
	if e.apply, err = e.connect(ctx); err != nil {
		t.Fatal(err)
	}
	return e, db
}

// prepareShadow runs setup (creating table t and its rows) in a database
// of its own, then passes preflight and creates the shadow with the
// clauses applied; config adjusts the engine's settings.
func prepareShadow(t *testing.T, clauses string, config func(*Config), setup ...string) (*Engine, *sql.DB, string) {
	t.Helper()
	srv := harness.Postgres(t)
	dbName, db := srv.NewDatabase(t)
	for _, q := range setup {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	ctx := context.Background()
	cfg := Config{Host: srv.Host, Port: srv.Port, User: srv.User, Password: srv.Password,
		Database: dbName, Table: "t", Logger: zap.NewNop()}
	if config != nil {
		config(&cfg)
	}
	e, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if err := e.Preflight(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := alter.Parse(clauses, alter.Postgres)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateShadow(ctx, c); err != nil {
		t.Fatal(err)
	}
	return e, db, dbName
}

func rows(t *testing.T, db *sql.DB, query string) string {
	t.Helper()
	return strings.Join(harness.Strings(t, db, query), " | ")
}

func TestWriterKeyChanges(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id int PRIMARY KEY, big text, n int)", "ADD COLUMN z int NOT NULL DEFAULT 9")
	// The source holds the row the applier may copy from (key 30).
	if _, err := db.Exec("INSERT INTO t VALUES (30, 'from-source', 3)"); err != nil {
		t.Fatal(err)
	}
	u := replication.Unchanged{}
	changes := []replication.Change{
		{Op: replication.Insert, After: []any{"1", "a", nil}},
		{Op: replication.Insert, After: []any{"1", "dup", "0"}}, // already there: left alone
		// A chain of key changes keeps its order: 1 -> 2 -> 3, and the
		// unchanged TOAST value stays.
		{Op: replication.Update, Before: []any{"1", u, u}, After: []any{"2", u, "5"}},
		{Op: replication.Update, Before: []any{"2", u, u}, After: []any{"3", u, "6"}},
		// The copy brought key 11 ahead of the change moving 10 onto it:
		// the row at 10 moves and replaces it.
		{Op: replication.Insert, After: []any{"10", "old", "1"}},
		{Op: replication.Insert, After: []any{"11", "copied-ahead", "2"}},
		{Op: replication.Update, Before: []any{"10", u, u}, After: []any{"11", "moved", "1"}},
		// The old row was never in the shadow: the full new image is written...
		{Op: replication.Update, Before: []any{"20", u, u}, After: []any{"21", "image", "4"}},
		// ...or, with an unchanged TOAST value, the row is copied from the table.
		{Op: replication.Update, Before: []any{"29", u, u}, After: []any{"30", u, "3"}},
		// An update of a row not copied yet touches nothing.
		{Op: replication.Update, Before: []any{"40", u, u}, After: []any{"40", "x", "1"}},
		{Op: replication.Insert, After: []any{"50", nil, nil}},
		{Op: replication.Delete, Before: []any{"50", u, u}},
	}
	if err := e.Writer().Apply(context.Background(), changes); err != nil {
		t.Fatal(err)
	}
	got := rows(t, db, `SELECT concat_ws(',', id, coalesce(big, 'NULL'), coalesce(n::text, 'NULL'), z) FROM "_t_new" ORDER BY id`)
	want := "3,a,6,9 | 11,moved,1,9 | 21,image,4,9 | 30,from-source,3,9"
	if got != want {
		t.Errorf("shadow after apply:\n got %s\nwant %s", got, want)
	}
}

func TestWriterUsingAndIdentity(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, digits text, n int, g int GENERATED ALWAYS AS (n * 2) STORED)",
		"ALTER COLUMN digits TYPE integer USING digits::integer + 1")
	changes := []replication.Change{
		{Op: replication.Insert, After: []any{"7", "41", "1"}},
		{Op: replication.Update, Before: []any{"7", replication.Unchanged{}, replication.Unchanged{}}, After: []any{"7", "99", "3"}},
		{Op: replication.Insert, After: []any{"8", "1", nil}},
	}
	if err := e.Writer().Apply(context.Background(), changes); err != nil {
		t.Fatal(err)
	}
	// The USING expression computes the shadow's value; the generated
	// column is computed by the shadow from it.
	if got, want := rows(t, db, `SELECT concat_ws(',', id, digits, g) FROM "_t_new" ORDER BY id`), "7,100,6 | 8,2"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestWriterRejectsWhatBreaksTheNewDefinition(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id int PRIMARY KEY, n int)", "ADD CONSTRAINT positive CHECK (n > 0)")
	err := e.Writer().Apply(context.Background(), []replication.Change{
		{Op: replication.Insert, After: []any{"1", "5"}},
		{Op: replication.Insert, After: []any{"2", "-1"}},
	})
	if err == nil || !strings.Contains(err.Error(), "positive") {
		t.Fatalf("a write breaking the new CHECK must stop the run naming it, got %v", err)
	}
	// The batch is one transaction: nothing of it stays.
	if got := rows(t, db, `SELECT count(*) FROM "_t_new"`); got != "0" {
		t.Errorf("a failed batch left %s rows", got)
	}
}

// TestWriterBatchedUpdates: updates of distinct keys with full images go
// as one statement (updateMany); the result must be what applying them one
// by one gives, for values an array literal must escape, NULLs, arrays and
// a USING conversion. A second update of a key, a key change or an
// incomplete image ends the run; a unique index besides the key turns
// batching off, and the same changes give the same rows.
func TestWriterBatchedUpdates(t *testing.T) {
	for _, unique := range []bool{false, true} {
		ddl := "CREATE TABLE t (id int PRIMARY KEY, s text, a int[], n numeric(10,2), v varchar(20))"
		if unique {
			ddl += "; CREATE UNIQUE INDEX t_v ON t (v)"
		}
		e, db := shadowEngine(t, ddl, "ALTER COLUMN n TYPE text USING n::text || '!'")
		if e.batchUpdates == unique {
			t.Fatalf("unique index %v: batchUpdates = %v", unique, e.batchUpdates)
		}
		if _, err := db.Exec(`INSERT INTO _t_new (id, s, a, n, v) SELECT i, 'x', '{0}', '0', 'v' || i FROM generate_series(1, 6) i`); err != nil {
			t.Fatal(err)
		}
		u := replication.Unchanged{}
		upd := func(id string, s, a, n, v any) replication.Change {
			return replication.Change{Op: replication.Update, Before: []any{id, u, u, u, u}, After: []any{id, s, a, n, v}}
		}
		changes := []replication.Change{
			upd("1", `quote " and \ backslash, {brace}`, "{1,2,NULL}", "1.50", "v1"),
			upd("2", nil, nil, nil, "v2"),
			upd("3", "NULL", "{}", "-3.00", ""),
			upd("1", "second update of 1", "{9}", "9.00", "v1"), // key seen: a new run
			upd("4", "four", "{4}", "4.00", "v4"),
			{Op: replication.Update, Before: []any{"5", u, u, u, u}, After: []any{"5", u, "{5}", "5.00", "v5"}}, // incomplete
			upd("6", "six", `{"a\"b"}`, "6.00", "v6"),
		}
		// int[] cannot hold "a\"b": the statement fails as a whole, and
		// nothing of the batch is applied.
		if err := e.Writer().Apply(context.Background(), changes); err == nil {
			t.Fatalf("unique index %v: an invalid int[] value applied", unique)
		}
		if got := rows(t, db, "SELECT count(*) FROM _t_new WHERE s <> 'x'"); got != "0" {
			t.Fatalf("unique index %v: a failed batch left %s rows changed", unique, got)
		}
		changes[6] = upd("6", "six", `{6}`, "6.00", "v6")
		if err := e.Writer().Apply(context.Background(), changes); err != nil {
			t.Fatalf("unique index %v: %v", unique, err)
		}
		want := strings.Join([]string{
			`1 second update of 1 {9} 9.00! v1`,
			`2 <NULL> <NULL> <NULL> v2`,
			`3 NULL {} -3.00! `,
			`4 four {4} 4.00! v4`,
			`5 x {5} 5.00! v5`,
			`6 six {6} 6.00! v6`,
		}, " | ")
		if _, batched := e.prepared[e.sql.updateMany()]; batched == unique {
			t.Errorf("unique index %v: updates applied in one statement: %v", unique, batched)
		}
		if got := rows(t, db, `SELECT concat_ws(' ', id, coalesce(s, '<NULL>'), coalesce(a::text, '<NULL>'), coalesce(n, '<NULL>'), v)
			FROM _t_new ORDER BY id`); got != want {
			t.Errorf("unique index %v: shadow after the updates:\n%s\nwant:\n%s", unique, got, want)
		}
	}
}
