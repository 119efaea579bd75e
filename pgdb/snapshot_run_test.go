package pgdb_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// oscSessions lists osc's sessions in the database; with idle, only the
// client sessions idle inside a transaction for more than 100 ms (the
// copy's snapshot holder, not a marker's transaction between two of its
// statements, nor the walsender exporting the slot's snapshot), with their
// xmin.
func oscSessions(t *testing.T, db *sql.DB, dbName string, idle bool) []string {
	t.Helper()
	q := `SELECT pid || ' ' || state || ' xmin ' || coalesce(backend_xmin::text, '-') FROM pg_stat_activity
		WHERE datname = $1 AND application_name = 'osc'`
	if idle {
		q += ` AND backend_type = 'client backend' AND state LIKE 'idle in transaction%'
			AND clock_timestamp() - state_change > interval '100 ms'`
	}
	return harness.Strings(t, db, q, dbName)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRunReleasesTheSnapshot: a run holds the copy's snapshot while it
// copies (throttled here: a paused copy holds it too), and releases it as
// soon as the copy ends, while the run goes on (here: a postponed
// cut-over); writes made meanwhile arrive through the stream. A failed run
// leaves no session behind.
func TestRunReleasesTheSnapshot(t *testing.T) {
	srv := harness.Postgres(t)
	dbName, db := srv.NewDatabase(t)
	if _, err := db.Exec(`CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, n int);
		INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 3000) g`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	throttle, postpone := filepath.Join(dir, "throttle"), filepath.Join(dir, "postpone")
	for _, f := range []string{throttle, postpone} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts := func(alter string) migration.Options {
		return migration.Options{Driver: "postgres", Host: srv.Host, Port: srv.Port, User: srv.User, Password: srv.Password,
			Database: dbName, Table: "t", Alter: alter, Execute: true, ChunkSize: 100, CopyWorkers: 2,
			ThrottleFlagFile: throttle, PostponeCutOverFlagFile: postpone, Logger: zaptest.NewLogger(t)}
	}
	done := make(chan error, 1)
	go func() {
		_, err := migration.Run(context.Background(), opts("ADD COLUMN z int NOT NULL DEFAULT 7"))
		done <- err
	}()
	var held []string
	waitUntil(t, "the copy's snapshot to be held", func() bool {
		held = oscSessions(t, db, dbName, true)
		return len(held) > 0
	})
	if len(held) != 1 || strings.HasSuffix(held[0], " -") {
		t.Fatalf("osc sessions idle in a transaction during the throttled copy: %v, want one holder with an xmin", held)
	}
	time.Sleep(300 * time.Millisecond)
	if h := oscSessions(t, db, dbName, true); len(h) != 1 || h[0] != held[0] {
		t.Fatalf("the holder changed while the copy was paused: %v, was %v", h, held)
	}
	// Rows changed after the snapshot, before and during the copy.
	for _, q := range []string{"UPDATE t SET v = 'before copy' WHERE id = 2999", "DELETE FROM t WHERE id = 3000", "INSERT INTO t VALUES (5000, 'new', 1)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(throttle); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the copy to end and release its snapshot", func() bool {
		var copied int
		if err := db.QueryRow(`SELECT count(*) FROM "_t_new"`).Scan(&copied); err != nil {
			return false
		}
		return copied >= 2999 && len(oscSessions(t, db, dbName, true)) == 0
	})
	select {
	case err := <-done:
		t.Fatalf("the run ended while the cut-over was postponed: %v", err)
	default:
	}
	if _, err := db.Exec("UPDATE t SET v = 'after copy' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(postpone); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(120 * time.Second):
		t.Fatal("the run did not end within 120s of the release")
	}
	got := strings.Join(harness.Strings(t, db, `SELECT count(*) || ' ' || string_agg(id || v || z, ',' ORDER BY id) FILTER (WHERE id IN (1, 2, 2999, 3000, 5000)) FROM t`), "")
	if want := "3000 1after copy7,2v27,2999before copy7,5000new7"; got != want {
		t.Errorf("t after the run: %s, want %s", got, want)
	}

	// A run that fails in the copy (a row breaks the new CHECK).
	o := opts("ADD CONSTRAINT small CHECK (n < 2500)")
	o.ThrottleFlagFile, o.PostponeCutOverFlagFile, o.InitiallyDropOld = "", "", true
	res, err := migration.Run(context.Background(), o)
	if err == nil || res.ExitCode != migration.ExitFailed || !strings.Contains(err.Error(), "does not fit the new definition") {
		t.Fatalf("run with a violated CHECK: exit %d, %v", res.ExitCode, err)
	}
	waitUntil(t, "osc's sessions to end after the failed run", func() bool { return len(oscSessions(t, db, dbName, false)) == 0 })
}
