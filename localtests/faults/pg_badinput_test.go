package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// Bad input on PostgreSQL: each case ends with the exit code a runner can
// act on and a message naming the cause, and leaves the table exactly as it
// was (same relation, definition and data, writable) with nothing of osc's
// behind: no shadow, no publication, no replication slot.

const pgInsertT = `INSERT INTO t (v, n, note) VALUES ('written after the run', 1, NULL)`

func pgNewT(t *testing.T) *pgEnv {
	t.Helper()
	e := newPGEnv(t)
	e.createT(t, 300, false)
	return e
}

// TestPGBadAlter: ALTER text osc or the server rejects is a usage error
// (2). What osc rejects while parsing it is rejected before connecting: the
// same run against a port nothing listens on gives the same answer.
func TestPGBadAlter(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, alter string
		parse       bool // rejected before connecting
		phrases     []string
		absent      string // a relation the ALTER would have created
	}{
		{name: "server rejects the type", alter: "ADD COLUMN x notatype", phrases: []string{"rejected the ALTER", "notatype"}},
		{name: "server rejects a missing column", alter: "ALTER COLUMN nosuch TYPE int", phrases: []string{"rejected the ALTER", "nosuch"}},
		{name: "second statement", alter: "ADD COLUMN x int; DROP TABLE t", parse: true, phrases: []string{"only one ALTER clause list", ";"}},
		{name: "second statement after a commented-out semicolon", alter: "ADD COLUMN x int /* ; */ ; DROP TABLE t;", parse: true, phrases: []string{"only one ALTER clause list"}},
		{name: "rename to", alter: "RENAME TO x", parse: true, phrases: []string{"renaming the table is not allowed"}, absent: "x"},
		{name: "rename to with other clauses", alter: "ADD COLUMN y int, RENAME TO x", parse: true, phrases: []string{"renaming the table is not allowed"}, absent: "x"},
		{name: "set schema", alter: "SET SCHEMA s", parse: true, phrases: []string{"SET SCHEMA", "another schema"}},
		{name: "leading ALTER TABLE", alter: "ALTER TABLE t ADD COLUMN x int", parse: true, phrases: []string{"ALTER TABLE"}},
	}
	// One database for all cases (a database costs a checkpoint): each
	// case must leave it as it found it anyway.
	e := pgNewT(t)
	e.exec(t, "CREATE SCHEMA s") // so that SET SCHEMA s could succeed
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.state(t, "t")
			o, _ := e.options(t, "t", c.alter)
			o.Execute = true
			run(t, o, migration.ExitUsage, c.phrases...)
			e.assertUntouched(t, "t", before, pgInsertT)
			if c.absent != "" && e.exists(t, c.absent) {
				t.Errorf("table %s exists: the ALTER went through", c.absent)
			}
			if n := e.queryInt(t, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 's'"); n != 0 {
				t.Errorf("schema s has %d relations: the table moved", n)
			}
			if c.parse {
				o.Port = pgFreePort(t) // nothing listens there
				res, err := migration.Run(context.Background(), o)
				checkOutcome(t, res, err, migration.ExitUsage, c.phrases...)
				if strings.Contains(strings.ToLower(fmt.Sprint(err)), "connect") {
					t.Errorf("osc tried to connect before rejecting the ALTER: %v", err)
				}
			}
		})
	}
}

// TestPGRefusedByPreflight: what osc cannot migrate safely is refused (3)
// with the reason, before anything is created.
func TestPGRefusedByPreflight(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		setup   []string
		schema  string
		table   string // run on this table
		alter   string
		check   string // relation whose state must not change (default: table, or t)
		write   string // a write that must work afterwards (default: insert into t)
		phrases []string
	}{
		{name: "unknown schema", schema: "nosuch", table: "t", check: "t", phrases: []string{`schema "nosuch" does not exist`, "--schema"}},
		{name: "unknown table", table: "no_such_table", check: "t", phrases: []string{"no_such_table", "does not exist"}},
		{name: "view", setup: []string{"CREATE VIEW v AS SELECT v, n FROM t"}, table: "v", check: "v",
			phrases: []string{`"public"."v" is a view`}},
		{name: "partitioned table", setup: []string{
			"CREATE TABLE pt (id int NOT NULL, k int NOT NULL, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k)",
			"CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (100)",
			"INSERT INTO pt SELECT g, g % 100, 'v' || g FROM generate_series(1, 200) g"},
			table: "pt", write: "INSERT INTO pt VALUES (1000, 1, 'after')", phrases: []string{`"public"."pt" is a partitioned table`}},
		{name: "partition", // of pt, above
			table: "pt1", write: "UPDATE pt1 SET v = 'after' WHERE id = 1", phrases: []string{`"public"."pt1" is a partition of a partitioned table`}},
		{name: "no primary key", setup: []string{"CREATE TABLE nopk (a int NOT NULL, b text)", "INSERT INTO nopk SELECT g % 50, 'b' || g FROM generate_series(1, 100) g"},
			// Were nopk left in a publication, this UPDATE would fail: it has no replica identity.
			table: "nopk", write: "UPDATE nopk SET b = 'after' WHERE a = 1", phrases: []string{"no primary key", "UPDATE and DELETE would fail"}},
		{name: "unique index is not enough", setup: []string{"CREATE TABLE uq (a int NOT NULL UNIQUE, b text)", "INSERT INTO uq SELECT g, 'b' || g FROM generate_series(1, 100) g"},
			table: "uq", write: "DELETE FROM uq WHERE a = 1", phrases: []string{"no primary key", "REPLICA IDENTITY USING INDEX"}},
		{name: "replica identity nothing", setup: []string{"CREATE TABLE rin (id int PRIMARY KEY, v text)", "INSERT INTO rin SELECT g, 'v' || g FROM generate_series(1, 100) g",
			"ALTER TABLE rin REPLICA IDENTITY NOTHING"},
			table: "rin", write: "UPDATE rin SET v = 'after' WHERE id = 1", phrases: []string{"REPLICA IDENTITY is NOTHING"}},
		{name: "alter drops the key column", table: "t", alter: "DROP COLUMN id", phrases: []string{`drops or recomputes column "id"`, "t_pkey"}},
	}
	e := pgNewT(t)
	for _, c := range cases {
		e.exec(t, c.setup...)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			check, write, alter := c.check, c.write, c.alter
			if check == "" {
				check = c.table
			}
			if write == "" {
				write = pgInsertT
			}
			if alter == "" {
				alter = "ADD COLUMN x int"
			}
			before := e.state(t, check)
			var beforeT pgState
			if check != "t" {
				beforeT = e.state(t, "t")
			}
			o, _ := e.options(t, c.table, alter)
			o.Schema = c.schema
			o.Execute = true
			run(t, o, migration.ExitRefused, c.phrases...)
			if check != "t" {
				e.assertUntouched(t, "t", beforeT, "")
			}
			e.assertUntouched(t, check, before, write)
			if c.table == "pt" || c.table == "pt1" {
				e.assertNoLeftovers(t, "pt")
				e.assertNoLeftovers(t, "pt1")
			}
			e.assertNoLeftovers(t, c.table)
		})
	}
}

// TestPGServerSettings: settings the shared server must keep, on a
// throwaway server of this test's own: wal_level below logical, then every
// replication slot in use (by another database). Filling the shared
// server's slots would make the other tests' runs fail meanwhile.
func TestPGServerSettings(t *testing.T) {
	t.Parallel()
	s := pgStartThrowaway(t, "wal_level=replica")
	e := s.env(t, "settings")
	e.createT(t, 300, false)
	t.Run("wal_level replica", func(t *testing.T) {
		before := e.state(t, "t")
		o, _ := e.options(t, "t", "ADD COLUMN x int")
		o.Execute = true
		run(t, o, migration.ExitRefused, `wal_level is "replica"`, "wal_level = logical", "restart")
		e.assertUntouched(t, "t", before, pgInsertT)
	})
	s.restart(t, "wal_level=logical", "max_replication_slots=10", "max_wal_senders=10")
	e = &pgEnv{pg: s.pg, name: e.name, db: s.pg.Open(t, e.name)}
	t.Run("no free replication slot", func(t *testing.T) {
		other := s.env(t, "other")
		began := time.Now()
		for i := 0; i < 10; i++ {
			other.exec(t, fmt.Sprintf("SELECT pg_create_logical_replication_slot('dummy_%d', 'pgoutput')", i))
		}
		t.Logf("10 dummy slots created in %v", time.Since(began).Round(time.Millisecond))
		before := e.state(t, "t")
		o, _ := e.options(t, "t", "ADD COLUMN x int NOT NULL DEFAULT 7")
		o.Execute = true
		run(t, o, migration.ExitRefused, "no free replication slot", "10 of max_replication_slots = 10", "pg_replication_slots")
		e.assertUntouched(t, "t", before, pgInsertT)
		if n := other.queryInt(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'dummy\\_%'"); n != 10 {
			t.Errorf("%d of the 10 dummy slots are left: osc dropped slots that are not its own", n)
		}
		other.exec(t, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'dummy\\_%'")
		// The same run now goes through: it was refused for the slots alone.
		run(t, o, migration.ExitApplied)
		if got := e.checksum(t, "t", pgCols); got != e.checksum(t, "_t_old", pgCols) {
			t.Errorf("after the control run t differs from the original")
		}
		e.assertNoLeftovers(t, "t", "table _t_old")
		if n := e.queryInt(t, "SELECT count(*) FROM pg_replication_slots"); n != 0 {
			t.Errorf("%d slots left on the server", n)
		}
	})
}

// pgRole creates a login role with a password (cluster-wide, so with a
// random name) and drops it, and what it owns in e's database, at cleanup.
func pgRole(t *testing.T, e *pgEnv, attrs, password string) string {
	t.Helper()
	name := "fault_role_" + randHex(6)
	e.exec(t, fmt.Sprintf("CREATE ROLE %s LOGIN %s PASSWORD '%s'", name, attrs, strings.ReplaceAll(password, "'", "''")))
	t.Cleanup(func() {
		for _, s := range []string{"REASSIGN OWNED BY " + name + " TO CURRENT_USER", "DROP OWNED BY " + name, "DROP ROLE " + name} {
			if _, err := e.db.Exec(s); err != nil {
				t.Errorf("%s: %v", s, err)
			}
		}
	})
	return name
}

// TestPGMissingPrivileges: a role that lacks what the publication, the
// slot or the rename need is refused (3), naming what is missing.
func TestPGMissingPrivileges(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		attrs   string
		owner   bool
		phrases []string
		not     string // must not be claimed missing
	}{
		{name: "no REPLICATION attribute", attrs: "NOREPLICATION", owner: true,
			phrases: []string{"lacks the REPLICATION attribute", "ALTER ROLE"}, not: "ownership"},
		{name: "not the owner", attrs: "REPLICATION", owner: false,
			phrases: []string{`lacks ownership of "public"."t"`, `owned by "osc"`}, not: "REPLICATION attribute"},
	}
	e := pgNewT(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pw := "pw-" + randHex(8)
			role := pgRole(t, e, c.attrs, pw)
			e.exec(t, "GRANT CREATE, CONNECT ON DATABASE "+harness.PGQuoteIdent(e.name)+" TO "+role,
				"GRANT USAGE, CREATE ON SCHEMA public TO "+role,
				"GRANT SELECT, INSERT, UPDATE, DELETE ON t TO "+role)
			if c.owner {
				e.exec(t, "ALTER TABLE t OWNER TO "+role)
			}
			before := e.state(t, "t")
			o, _ := e.options(t, "t", "ADD COLUMN x int")
			o.User, o.Password = role, pw
			o.Execute = true
			_, err := run(t, o, migration.ExitRefused, c.phrases...)
			if err != nil && strings.Contains(err.Error(), c.not) {
				t.Errorf("the refusal claims %q is missing: %v", c.not, err)
			}
			e.assertUntouched(t, "t", before, pgInsertT)
			e.exec(t, "ALTER TABLE t OWNER TO CURRENT_USER")
		})
	}
}

// TestPGConcurrentRun: a second run on the same table while the first
// copies is refused (3) by the advisory lock, and it neither sweeps nor
// disturbs the first run's objects: the first run completes.
func TestPGConcurrentRun(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	const rows = 5000
	e.createT(t, rows, false)
	before := e.checksum(t, "t", pgCols)
	o, _ := e.options(t, "t", "ADD COLUMN added int NOT NULL DEFAULT 42")
	done, resume := startPGPausedAtCopy(t, e, o, rows)
	objects := e.leftovers(t, "t")
	if len(objects) != 3 {
		t.Fatalf("the first run's objects: %v, want its shadow, publication and slot", objects)
	}

	o2, _ := e.options(t, "t", "ADD COLUMN other int")
	o2.Execute = true
	run(t, o2, migration.ExitRefused, `another osc run is migrating "public"."t"`, "advisory lock")
	// The same through the binary, with the same ALTER as the first run.
	r := runCLI(t, e.pwEnv(), e.cliArgs("t", "ADD COLUMN added int NOT NULL DEFAULT 42", "--execute")...)
	if r.code != migration.ExitRefused || !strings.Contains(r.stderr, "another osc run") {
		t.Errorf("second run through the binary: exit %d, want %d naming the other run; stderr:\n%s", r.code, migration.ExitRefused, r.stderr)
	}
	if got := e.leftovers(t, "t"); strings.Join(got, ",") != strings.Join(objects, ",") {
		t.Errorf("the refused runs changed the first run's objects: %v, before %v", got, objects)
	}
	resume()
	var out runOutcome
	select {
	case out = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the first run did not finish")
	}
	checkOutcome(t, out.res, out.err, migration.ExitApplied)
	if got := e.checksum(t, "t", pgCols); got != before {
		t.Errorf("t after the first run: %s, before %s", got, before)
	}
	if n := e.queryInt(t, "SELECT count(*) FROM t WHERE added <> 42"); n != 0 {
		t.Errorf("%d rows without the new column's default", n)
	}
	e.assertNoLeftovers(t, "t", "table _t_old")
}

// TestPGCLIBadInput: the binary's usage errors, and the password, which
// never appears in its output, whatever happens.
func TestPGCLIBadInput(t *testing.T) {
	t.Parallel()
	t.Run("missing table", func(t *testing.T) {
		t.Parallel()
		// Rejected before connecting: nothing listens on that port.
		args := []string{"--driver", "postgres", "--host", "127.0.0.1", "--port", fmt.Sprint(pgFreePort(t)), "--user", "osc",
			"--database", "postgres", "--alter", "ADD COLUMN x int", "--execute"}
		r := runCLI(t, []string{"OSC_PASSWORD=osc"}, args...)
		if r.code != migration.ExitUsage || !strings.Contains(r.stderr, "--table") || strings.Contains(r.stderr, "connect") {
			t.Errorf("exit %d, want %d naming --table, before connecting; stderr:\n%s", r.code, migration.ExitUsage, r.stderr)
		}
	})
	t.Run("password never shown", func(t *testing.T) {
		t.Parallel()
		e := pgNewT(t)
		before := e.state(t, "t")
		secret := randHex(12)
		wrong := "Wr0ng " + secret + ` q'uo\te`
		noLeak := func(what string, r cliResult) {
			t.Helper()
			for _, out := range []string{r.stdout, r.stderr} {
				if strings.Contains(out, secret) {
					t.Errorf("%s: the password shows in the output:\n%s", what, out)
				}
			}
		}
		// A wrong password, given every way osc takes one.
		pwFile := t.TempDir() + "/pw"
		if err := pgWriteFile(pwFile, wrong+"\n"); err != nil {
			t.Fatal(err)
		}
		for _, how := range []struct {
			name string
			env  []string
			args []string
		}{
			{"--password", nil, []string{"--password", wrong}},
			{"OSC_PASSWORD", []string{"OSC_PASSWORD=" + wrong}, nil},
			{"--password-file", nil, []string{"--password-file", pwFile}},
		} {
			args := e.cliArgs("t", "ADD COLUMN x int", append([]string{"--execute", "--verbose", "--result-json", "--log-format", "json"}, how.args...)...)
			r := runCLI(t, how.env, args...)
			if r.code != migration.ExitFailed || !strings.Contains(r.stderr, "password authentication failed") {
				t.Errorf("wrong password via %s: exit %d, want %d saying the authentication failed; stderr:\n%s", how.name, r.code, migration.ExitFailed, r.stderr)
			}
			var res migration.Result
			if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.ExitCode != migration.ExitFailed || res.Error == "" {
				t.Errorf("wrong password via %s: --result-json printed %q (%v)", how.name, r.stdout, err)
			}
			noLeak("wrong password via "+how.name, r)
		}
		e.assertUntouched(t, "t", before, "")

		// The right password, on a whole run (the replication connection
		// carries it too) with debug logs.
		right := "R1ght " + secret + ` q'uo\te`
		role := pgRole(t, e, "REPLICATION", right)
		e.exec(t, "GRANT CREATE ON DATABASE "+harness.PGQuoteIdent(e.name)+" TO "+role,
			"GRANT USAGE, CREATE ON SCHEMA public TO "+role, "ALTER TABLE t OWNER TO "+role)
		args := []string{"--driver", "postgres", "--host", e.pg.Host, "--port", fmt.Sprint(e.pg.Port), "--user", role,
			"--database", e.name, "--table", "t", "--alter", "ADD COLUMN x int", "--execute", "--verbose", "--result-json"}
		r := runCLI(t, []string{"OSC_PASSWORD=" + right}, args...)
		if r.code != migration.ExitApplied {
			t.Fatalf("run with the right password: exit %d; stderr:\n%s", r.code, r.stderr)
		}
		noLeak("a whole run", r)
		if got := e.checksum(t, "t", pgCols); got != e.checksum(t, "_t_old", pgCols) {
			t.Errorf("after the run t differs from the original")
		}
		e.assertNoLeftovers(t, "t", "table _t_old")
	})
}
