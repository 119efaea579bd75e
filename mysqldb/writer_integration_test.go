package mysqldb

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/replication"
)

func TestMain(m *testing.M) { harness.Main(m) }

// shadowEngine prepares an engine with a shadow of table t (created by
// ddl) and clauses applied, as a run would before applying changes.
func shadowEngine(t *testing.T, ddl, clauses string) (*Engine, *sql.DB) {
	t.Helper()
	srv := harness.MariaDB(t)
	dbName, db := srv.NewDatabase(t)
	if _, err := db.Exec(ddl); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e, err := New(ctx, Config{Host: srv.Host, Port: srv.Port, User: srv.User, Password: srv.Password,
		Database: dbName, Table: "t", Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if err := e.Preflight(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := alter.Parse(clauses, alter.MySQL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateShadow(ctx, c); err != nil {
		t.Fatal(err)
	}
	return e, db
}

func TestWriterAppliesInOrder(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id INT UNSIGNED NOT NULL PRIMARY KEY, name VARCHAR(20) CHARACTER SET latin1 NOT NULL, n INT NULL)",
		"ADD COLUMN z INT NOT NULL DEFAULT 9")
	row := func(id uint64, name string, n any) []any { return []any{id, name, n} }
	changes := []replication.Change{
		{Op: replication.Insert, After: row(1, "caf\xe9", nil)},
		{Op: replication.Insert, After: row(4294967295, "max", int64(-1))},
		{Op: replication.Insert, After: row(1, "dup", nil)}, // already there: ignored, not an error
		// A chain of key changes must not be reordered: 1 -> 2 -> 3.
		{Op: replication.Update, Before: row(1, "caf\xe9", nil), After: row(2, "caf\xe9", int64(5))},
		{Op: replication.Update, Before: row(2, "caf\xe9", int64(5)), After: row(3, "caf\xe9", int64(6))},
		// An update of a row the copy has not brought yet touches nothing.
		{Op: replication.Update, Before: row(7, "x", nil), After: row(7, "y", nil)},
		{Op: replication.Insert, After: row(10, "ten", nil)},
		{Op: replication.Insert, After: row(11, "eleven", nil)},
		{Op: replication.Delete, Before: row(10, "ten", nil)},
		{Op: replication.Delete, Before: row(4294967295, "max", int64(-1))},
	}
	if err := e.Writer().Apply(context.Background(), changes); err != nil {
		t.Fatal(err)
	}
	got := harness.Strings(t, db, "SELECT CONCAT_WS('|', id, HEX(name), COALESCE(n, 'NULL'), z) FROM _t_new ORDER BY id")
	want := []string{"3|636166E9|6|9", "11|656C6576656E|NULL|9"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("shadow rows %q, want %q", got, want)
	}
}

func TestWriterRefusesLossyValues(t *testing.T) {
	e, _ := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, name VARCHAR(20) NOT NULL, UNIQUE KEY uk (name))",
		"MODIFY name VARCHAR(3) NOT NULL")
	err := e.Writer().Apply(context.Background(), []replication.Change{{Op: replication.Insert, After: []any{int64(1), "toolong"}}})
	if err == nil {
		t.Fatal("a value the new definition truncates was applied without error")
	}
	err = e.Writer().Apply(context.Background(), []replication.Change{
		{Op: replication.Insert, After: []any{int64(1), "abc"}},
		{Op: replication.Insert, After: []any{int64(2), "abc"}},
	})
	if err == nil {
		t.Fatal("a duplicate on a unique key other than the chunking key was ignored")
	}
}

// The copy can hold a row in a newer state than the applier has reached.
// When a unique value moved between rows, replaying the older owner
// collides with the newer one: the newer is displaced and copied back from
// the source later. Only a value the source holds in two rows is a real
// duplicate.
func TestWriterDisplacesTransientUniqueConflicts(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, u INT NOT NULL, v VARCHAR(10) NOT NULL, UNIQUE KEY uk (u))",
		"ADD COLUMN z INT NULL")
	ctx := context.Background()
	// The source now: 5 moved from row 1 to row 2. The copy brought row 2.
	for _, stmt := range []string{
		"INSERT INTO t VALUES (1, 6, 'a'), (2, 5, 'b')",
		"INSERT INTO _t_new (id, u, v) VALUES (2, 5, 'b')",
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	shadow := func() string {
		return strings.Join(harness.Strings(t, db, "SELECT CONCAT_WS(':', id, u, v) FROM _t_new ORDER BY id"), " ")
	}
	restoreAll := func() {
		t.Helper()
		for range 5 {
			n, err := e.Restore(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				return
			}
		}
		t.Fatalf("displaced rows kept coming back: %d", e.displaced.len())
	}
	w := e.Writer()
	// The stream replays row 1's insert with 5, then its move to 6.
	if err := w.Apply(ctx, []replication.Change{{Op: replication.Insert, After: []any{int64(1), int64(5), "a0"}}}); err != nil {
		t.Fatalf("replaying the older owner of a unique value: %v", err)
	}
	if got := shadow(); got != "1:5:a0" || e.displaced.len() != 1 {
		t.Fatalf("shadow %q with %d displaced; want row 2 displaced by row 1", got, e.displaced.len())
	}
	// The swap refuses while a displaced row is missing.
	err := e.Swap(ctx, time.Second, func(context.Context) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "displaced") {
		t.Fatalf("swap with a displaced row missing: %v", err)
	}
	if sentry, _ := e.tableExists(ctx, e.names.swap); sentry {
		t.Fatal("the refused swap left its sentry behind")
	}
	if err := w.Apply(ctx, []replication.Change{{Op: replication.Update, Before: []any{int64(1), int64(5), "a0"}, After: []any{int64(1), int64(6), "a"}}}); err != nil {
		t.Fatal(err)
	}
	restoreAll()
	if got := shadow(); got != "1:6:a 2:5:b" {
		t.Fatalf("after restore: shadow %q, want the source's rows", got)
	}
	// An update onto a value held in the shadow displaces too; copying the
	// holder back (row 1 holds 6 in the source) displaces the updated row
	// in turn, and the next round brings that one back as the source has it.
	if err := w.Apply(ctx, []replication.Change{{Op: replication.Update, Before: []any{int64(2), int64(5), "b"}, After: []any{int64(2), int64(6), "b2"}}}); err != nil {
		t.Fatalf("update onto a value held in the shadow: %v", err)
	}
	if got := shadow(); got != "2:6:b2" {
		t.Fatalf("shadow %q, want row 1 displaced by the update of row 2", got)
	}
	restoreAll()
	if got := shadow(); got != "1:6:a 2:5:b" || e.displaced.len() != 0 {
		t.Fatalf("after restore: shadow %q with %d displaced, want the source's rows", got, e.displaced.len())
	}
}

// A new unique key over data that breaks it: the source holds the value
// in two rows, so the conflict is real and the error names both.
func TestWriterNamesRealDuplicates(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, u VARCHAR(10) NOT NULL)", "ADD UNIQUE KEY uk (u)")
	for _, stmt := range []string{
		"INSERT INTO t VALUES (1, 'dup'), (2, 'dup')",
		"INSERT INTO _t_new VALUES (1, 'dup')",
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	err := e.Writer().Apply(context.Background(), []replication.Change{{Op: replication.Insert, After: []any{int64(2), "dup"}}})
	if err == nil || !strings.Contains(err.Error(), "`uk`") || !strings.Contains(err.Error(), "(dup)") || !strings.Contains(err.Error(), "(1)") {
		t.Fatalf("got %v, want the duplicate named with its key and rows", err)
	}
	if e.displaced.len() != 0 {
		t.Fatal("a real duplicate displaced a row")
	}
}
