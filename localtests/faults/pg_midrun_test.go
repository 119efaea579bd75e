package faults

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/osc-dev/osc/migration"
)

// Someone changes the table under a running osc. The shadow was built from
// the definition osc read at the start, so carrying on would swap in a
// table without the other change (or lose rows, for a TRUNCATE): the run
// must stop, name the cause, and leave the table (with the other change)
// and nothing of osc's behind.

const pgMidRunRows = 4000

// TestPGDDLMidRun: the application alters or truncates t while osc copies.
func TestPGDDLMidRun(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		app     bool // the application writes meanwhile
		ddl     string
		phrases []string
		check   func(t *testing.T, e *pgEnv)
	}{
		{name: "add column while the application writes", app: true, ddl: "ALTER TABLE t ADD COLUMN sneaky int",
			phrases: []string{"definition changed"}},
		{name: "add column with a default, no writes", ddl: "ALTER TABLE t ADD COLUMN sneaky int NOT NULL DEFAULT 7",
			phrases: []string{"definition changed"}},
		{name: "drop column, no writes", ddl: "ALTER TABLE t DROP COLUMN note",
			phrases: []string{"definition changed"}},
		{name: "create index, no writes", ddl: "CREATE INDEX t_sneaky ON t (v)",
			phrases: []string{"definition changed"}},
		{name: "set default, no writes", ddl: "ALTER TABLE t ALTER COLUMN pad SET DEFAULT 'changed'",
			phrases: []string{"definition changed"}},
		{name: "add check constraint, no writes", ddl: "ALTER TABLE t ADD CONSTRAINT n_small CHECK (n < 1000000000)",
			phrases: []string{"definition changed"}},
		{name: "drop not null, no writes", ddl: "ALTER TABLE t ALTER COLUMN v DROP NOT NULL",
			phrases: []string{"definition changed"}},
		{name: "truncate", ddl: "TRUNCATE t",
			phrases: []string{"definition changed", "TRUNCATE"},
			check: func(t *testing.T, e *pgEnv) {
				if n := e.queryInt(t, "SELECT count(*) FROM t"); n != 0 {
					t.Errorf("t has %d rows after the TRUNCATE", n)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newPGEnv(t)
			e.createT(t, pgMidRunRows, true)
			var a *pgApp
			stopApp := func() {}
			if c.app {
				a, stopApp = startPGApp(t, e, pgMidRunRows)
			}
			o, _ := e.options(t, "t", "ADD COLUMN added int NOT NULL DEFAULT 1")
			done, resume := startPGPausedAtCopy(t, e, o, pgMidRunRows)
			e.exec(t, c.ddl)
			// The table after the DDL, which must stay as it is (but
			// for the application's writes).
			after := e.state(t, "t")
			resume()
			r := waitOutcome(t, done)
			checkOutcome(t, r.res, r.err, migration.ExitFailed, append(c.phrases, "unchanged and authoritative")...)
			if r.res.Applied {
				t.Errorf("Result.Applied is true")
			}
			if c.app {
				time.Sleep(200 * time.Millisecond)
				stopApp()
				a.check(t)
				e.assertMatchesRef(t)
			}
			if c.check != nil {
				c.check(t, e)
			}
			if c.app {
				if got := e.definition(t, "t"); got != after.def {
					t.Errorf("t changed:\nbefore:\n%s\nafter:\n%s", after.def, got)
				}
				e.assertNoLeftovers(t, "t")
			} else {
				e.assertUntouched(t, "t", after, "")
			}
			e.exec(t, "INSERT INTO t (v, n) VALUES ('written after the run', 1)")
		})
	}
}

// TestPGMaxSlotWALBytes: with --max-slot-wal-bytes 1 and writes flowing,
// the slot's WAL retention check stops the run, naming the retained WAL
// and the flag; nothing is left, and the application's writes are intact.
func TestPGMaxSlotWALBytes(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.createT(t, pgMidRunRows, true)
	before := e.definition(t, "t")
	a, stopApp := startPGApp(t, e, pgMidRunRows)
	// The copy stays throttled: the run lives until the check stops it.
	flag := filepath.Join(t.TempDir(), "throttle")
	if err := pgWriteFile(flag, ""); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, e.pwEnv(), e.cliArgs("t", "ADD COLUMN added int NOT NULL DEFAULT 1",
		"--execute", "--max-slot-wal-bytes", "1", "--throttle-flag-file", flag)...)
	t.Logf("exit %d", r.code)
	if r.code != migration.ExitFailed {
		t.Errorf("exit %d, want %d; stderr:\n%s", r.code, migration.ExitFailed, r.stderr)
	}
	for _, want := range []string{"bytes of WAL", "--max-slot-wal-bytes=1", "unchanged and authoritative"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the output does not say %q:\n%s", want, r.stderr)
		}
	}
	stopApp()
	a.check(t)
	if got := e.definition(t, "t"); got != before {
		t.Errorf("t changed:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	e.assertMatchesRef(t)
	e.assertNoLeftovers(t, "t")
}
