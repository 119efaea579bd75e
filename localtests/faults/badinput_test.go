package faults

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// Bad input: each case must end with a clear error and the exit code a
// runner can act on, and leave the table exactly as it was: same
// definition, same data, writable, and none of osc's helper tables behind.

const (
	tableT = `CREATE TABLE t (
		id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
		name VARCHAR(64) NOT NULL,
		n INT NOT NULL,
		note VARCHAR(100) NULL,
		KEY k_n (n)
	) ENGINE=InnoDB`
	// 300 rows; names longer than 3 characters, n up to 600.
	fillT   = `INSERT INTO t (name, n, note) SELECT CONCAT('name-', seq), seq * 2, IF(seq % 3 = 0, NULL, CONCAT('note ', seq)) FROM seq_1_to_300`
	insertT = `INSERT INTO t (name, n, note) VALUES ('written after the run', 1, NULL)`
)

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newT creates and fills table t in a fresh database.
func newT(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.exec(t, tableT, fillT)
	return e
}

// runOnFreshT runs osc --execute with alter on a fresh table t, expects
// the exit code and phrases, and checks t is untouched and writable.
func runOnFreshT(t *testing.T, alter string, code int, phrases ...string) *env {
	t.Helper()
	e := newT(t)
	before := e.state(t, "t")
	o, _ := e.options(t, "t", alter)
	o.Execute = true
	run(t, o, code, phrases...)
	e.assertUntouched(t, "t", before, insertT)
	return e
}

// TestBadAlter: ALTER text osc or the server rejects is a usage error (2).
func TestBadAlter(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, alter string
		phrases     []string
	}{
		{"server rejects the type", "ADD COLUMN x NOTATYPE", []string{"rejected the ALTER", "NOTATYPE"}},
		{"second statement", "ADD COLUMN x INT; DROP TABLE t", []string{"only one ALTER clause list", ";"}},
		{"second statement after a comment", "ADD COLUMN x INT /* c */ ; DROP TABLE t;", []string{"only one ALTER clause list"}},
		{"leading ALTER TABLE", "ALTER TABLE t ADD COLUMN x INT", []string{`without the leading "ALTER TABLE`}},
		{"rename table with TO", "RENAME TO u", []string{"renaming the table is not allowed"}},
		{"rename table bare", "ADD COLUMN x INT, RENAME u", []string{"renaming the table is not allowed"}},
		{"empty", "", []string{"--alter"}},
		{"only a comment", "  /* nothing */  ", []string{"empty --alter"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := runOnFreshT(t, c.alter, migration.ExitUsage, c.phrases...)
			if e.exists(t, "u") {
				t.Errorf("table u exists: the rename went through")
			}
		})
	}
}

// TestRefusedByPreflight: what osc cannot do safely is refused (3) before
// anything is created.
func TestRefusedByPreflight(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		setup   []string // after t is created
		table   string   // run on this table
		alter   string
		check   string // table whose state must not change
		insert  string
		phrases []string
	}{
		{name: "unknown table", table: "no_such_table", alter: "ADD COLUMN x INT",
			phrases: []string{"no_such_table", "does not exist"}},
		{name: "view", setup: []string{"CREATE VIEW v AS SELECT id, name FROM t"}, table: "v", alter: "ADD COLUMN x INT",
			phrases: []string{"view", "base table"}},
		{name: "no key", setup: []string{"CREATE TABLE nokey (a INT NOT NULL, b VARCHAR(10), KEY (a)) ENGINE=InnoDB", "INSERT INTO nokey VALUES (1, 'x'), (1, 'x'), (2, NULL)"},
			table: "nokey", alter: "ADD COLUMN x INT", insert: "INSERT INTO nokey VALUES (3, 'y')",
			phrases: []string{"no PRIMARY KEY or UNIQUE key over NOT NULL columns"}},
		{name: "unique key over a nullable column", setup: []string{"CREATE TABLE nullu (a INT NULL, b INT, UNIQUE KEY ua (a)) ENGINE=InnoDB", "INSERT INTO nullu VALUES (NULL, 1), (NULL, 2), (3, 3)"},
			table: "nullu", alter: "ADD COLUMN x INT", insert: "INSERT INTO nullu VALUES (NULL, 4)",
			phrases: []string{"no PRIMARY KEY or UNIQUE key over NOT NULL columns"}},
		{name: "alter drops the only key", setup: []string{"CREATE TABLE pk_only (id INT NOT NULL PRIMARY KEY, v INT) ENGINE=InnoDB", "INSERT INTO pk_only VALUES (1, 1), (2, 2)"},
			table: "pk_only", alter: "DROP PRIMARY KEY", insert: "INSERT INTO pk_only VALUES (3, 3)",
			phrases: []string{"leaves no unique key"}},
		{name: "alter drops the only key of an auto-increment table", table: "t", alter: "DROP PRIMARY KEY, MODIFY id INT NOT NULL",
			phrases: []string{"leaves no unique key"}},
		{name: "alter drops the only key column", table: "t", alter: "DROP COLUMN id",
			phrases: []string{"no unique key"}},
		{name: "child of a foreign key", setup: []string{
			"CREATE TABLE child (id INT PRIMARY KEY, tid INT NOT NULL, CONSTRAINT fk_child_t FOREIGN KEY (tid) REFERENCES t (id)) ENGINE=InnoDB",
			"INSERT INTO child SELECT id, id FROM t WHERE id <= 10"},
			table: "child", alter: "ADD COLUMN x INT", insert: "INSERT INTO child VALUES (1000, 1)",
			phrases: []string{"foreign key"}},
		{name: "parent of a foreign key", setup: []string{
			"CREATE TABLE child (id INT PRIMARY KEY, tid INT NOT NULL, CONSTRAINT fk_child_t FOREIGN KEY (tid) REFERENCES t (id)) ENGINE=InnoDB",
			"INSERT INTO child SELECT id, id FROM t WHERE id <= 10"},
			table: "t", alter: "ADD COLUMN x INT",
			phrases: []string{"referenced by", "foreign key"}},
		{name: "trigger", setup: []string{"CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW SET NEW.note = 'from trigger'"},
			table: "t", alter: "ADD COLUMN x INT",
			phrases: []string{"trigger"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newT(t)
			e.exec(t, c.setup...)
			check, insert := c.check, c.insert
			if check == "" {
				check = c.table
			}
			if check == "v" || check == "no_such_table" {
				check = "t"
			}
			if insert == "" {
				insert = insertT
			}
			before := e.state(t, check)
			o, _ := e.options(t, c.table, c.alter)
			o.Execute = true
			run(t, o, migration.ExitRefused, c.phrases...)
			e.assertUntouched(t, check, before, insert)
			e.assertNoHelpers(t, c.table)
			if c.table == "no_such_table" && e.exists(t, c.table) {
				t.Errorf("%s was created", c.table)
			}
		})
	}
}

// TestUnknownDatabase: a database that does not exist is a preflight
// refusal (3) that names it, like a missing table.
func TestUnknownDatabase(t *testing.T) {
	t.Parallel()
	e := newT(t)
	o, _ := e.options(t, "t", "ADD COLUMN x INT")
	o.Database = "no_such_db_" + randHex(4)
	o.Execute = true
	run(t, o, migration.ExitRefused, o.Database)
	var n int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", o.Database).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("database %s was created", o.Database)
	}
}

// TestLeftovers: a helper table left by an earlier run makes osc refuse
// (3), naming the flag that drops it, and osc does not drop it on its own;
// with the flag the rerun drops it and applies the change.
func TestLeftovers(t *testing.T) {
	t.Parallel()
	cases := []struct {
		leftover, flag string
		set            func(*migration.Options)
	}{
		{"_t_new", "--initially-drop-shadow-table", func(o *migration.Options) { o.InitiallyDropShadow = true }},
		{"_t_osc", "--initially-drop-shadow-table", func(o *migration.Options) { o.InitiallyDropShadow = true }},
		{"_t_old", "--initially-drop-old-table", func(o *migration.Options) { o.InitiallyDropOld = true }},
		// The sentry's name, which holds the original if a run died between
		// the swap and the rename to _t_old.
		{"t_osc_swap", "--initially-drop-old-table", func(o *migration.Options) { o.InitiallyDropOld = true }},
	}
	for _, c := range cases {
		t.Run(c.leftover, func(t *testing.T) {
			t.Parallel()
			e := newT(t)
			e.exec(t, "CREATE TABLE "+c.leftover+" (id INT PRIMARY KEY, what VARCHAR(40)) ENGINE=InnoDB",
				"INSERT INTO "+c.leftover+" VALUES (1, 'left by an earlier run')")
			before := e.state(t, "t")
			leftover := e.state(t, c.leftover)

			o, _ := e.options(t, "t", "ADD COLUMN added INT NOT NULL DEFAULT 7")
			o.Execute = true
			run(t, o, migration.ExitRefused, c.leftover, c.flag)
			e.assertUntouched(t, "t", before, "", c.leftover)
			if got := e.state(t, c.leftover); got != leftover {
				t.Errorf("the leftover %s was changed by a refused run", c.leftover)
			}

			// The other flag does not drop it either.
			o2, _ := e.options(t, "t", o.Alter)
			o2.Execute = true
			o2.InitiallyDropShadow = c.flag != "--initially-drop-shadow-table"
			o2.InitiallyDropOld = c.flag != "--initially-drop-old-table"
			run(t, o2, migration.ExitRefused, c.flag)
			e.assertUntouched(t, "t", before, "", c.leftover)

			o3, _ := e.options(t, "t", o.Alter)
			o3.Execute = true
			c.set(&o3)
			res, _ := run(t, o3, migration.ExitApplied)
			if !res.Applied || res.OldTable != "_t_old" {
				t.Errorf("Result: applied %v, old table %q", res.Applied, res.OldTable)
			}
			cols := harness.Columns(t, e.db, "t")
			if cols[len(cols)-1] != "added" {
				t.Fatalf("columns after the rerun: %v", cols)
			}
			var wrong int
			if err := e.db.QueryRow("SELECT COUNT(*) FROM t WHERE added <> 7").Scan(&wrong); err != nil {
				t.Fatal(err)
			}
			if wrong != 0 {
				t.Errorf("%d rows without the default of the new column", wrong)
			}
			if got, want := harness.Checksum(t, e.db, "t", []string{"id", "name", "n", "note"}, nil), before.checksum; got != want {
				t.Errorf("data changed by the migration: checksum %s, before %s", got, want)
			}
			// The original is kept as _t_old (replacing an old leftover).
			if got := e.state(t, "_t_old"); got.checksum != before.checksum || got.create == leftover.create {
				t.Errorf("_t_old is not the original table after the rerun: %s", got.create)
			}
			e.assertNoHelpers(t, "t", "_t_old")
		})
	}
}

// replicaMu serializes the tests that change global settings on the
// replica, so that each restores the value it found.
var replicaMu sync.Mutex

// TestUnsupportedBinlogSettings runs osc against the replica after changing
// a binlog setting there (never on the shared primary): refused (3), naming
// the variable.
func TestUnsupportedBinlogSettings(t *testing.T) {
	e := newT(t)
	e.my.WaitReplica(t)
	rdb := e.my.OpenReplica(t, e.schema)
	replica := &env{my: e.my, schema: e.schema, db: rdb}
	for _, c := range []struct{ variable, value string }{
		{"binlog_format", "STATEMENT"},
		{"binlog_row_image", "MINIMAL"},
	} {
		t.Run(c.variable, func(t *testing.T) {
			replicaMu.Lock()
			defer replicaMu.Unlock()
			before, replicaBefore := e.state(t, "t"), replica.state(t, "t")
			var orig string
			if err := rdb.QueryRow("SELECT @@GLOBAL." + c.variable).Scan(&orig); err != nil {
				t.Fatal(err)
			}
			restored := false
			restore := func() {
				if restored {
					return
				}
				if _, err := rdb.Exec("SET GLOBAL "+c.variable+" = ?", orig); err != nil {
					t.Errorf("restoring %s=%s on the replica: %v", c.variable, orig, err)
					return
				}
				restored = true
			}
			t.Cleanup(restore)
			if _, err := rdb.Exec("SET GLOBAL "+c.variable+" = ?", c.value); err != nil {
				t.Fatal(err)
			}

			o, _ := e.options(t, "t", "ADD COLUMN x INT")
			o.Port = e.my.ReplicaPort
			o.Execute = true
			run(t, o, migration.ExitRefused, c.variable, c.value)
			restore()

			replica.assertUntouched(t, "t", replicaBefore, "") // no writes on the replica
			e.my.WaitReplica(t)
			e.assertUntouched(t, "t", before, insertT)
		})
	}
}

// TestMissingPrivileges: a user with only DML on the database is refused
// (3) with the list of what is missing.
func TestMissingPrivileges(t *testing.T) {
	t.Parallel()
	e := newT(t)
	user, pw := "oscdml_"+randHex(4), "pw-"+randHex(8)
	e.exec(t, fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", user, pw),
		fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON %s.* TO '%s'@'%%'", harness.QuoteIdent(e.schema), user))
	t.Cleanup(func() {
		if _, err := e.db.Exec(fmt.Sprintf("DROP USER IF EXISTS '%s'@'%%'", user)); err != nil {
			t.Errorf("dropping user %s: %v", user, err)
		}
	})
	before := e.state(t, "t")
	o, _ := e.options(t, "t", "ADD COLUMN x INT")
	o.User, o.Password = user, pw
	o.Execute = true
	_, err := run(t, o, migration.ExitRefused, "missing privileges", "CREATE", "DROP", "ALTER", "LOCK TABLES", "REPLICATION SLAVE")
	if err != nil {
		for _, granted := range []string{"SELECT ON", "INSERT ON", "UPDATE ON", "DELETE ON"} {
			if strings.Contains(err.Error(), granted) {
				t.Errorf("the refusal lists %q, which the user has", granted)
			}
		}
	}
	e.assertUntouched(t, "t", before, insertT)
}

// TestDuplicatesForNewUniqueKey: adding a UNIQUE key over duplicate data
// fails (1), names the value and the key, and drops no row.
func TestDuplicatesForNewUniqueKey(t *testing.T) {
	t.Parallel()
	e := newT(t)
	e.exec(t, "UPDATE t SET name = 'dup-value' WHERE id IN (50, 250)")
	before := e.state(t, "t")
	o, _ := e.options(t, "t", "ADD UNIQUE KEY uk_name (name)")
	o.Execute = true
	o.ChunkSize = 100 // the duplicates land in different chunks
	run(t, o, migration.ExitFailed, "dup-value", "uk_name", "duplicate")
	e.assertUntouched(t, "t", before, insertT)
}

// TestLossyTypeChange: a type change the data does not fit in fails (1)
// with the server's warning instead of truncating or clipping values.
func TestLossyTypeChange(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, alter string
		phrases     []string
	}{
		{"varchar too short", "MODIFY name VARCHAR(3) NOT NULL", []string{"truncated", "name"}},
		{"tinyint out of range", "MODIFY n TINYINT NOT NULL", []string{"out of range", "'n'"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			runOnFreshT(t, c.alter, migration.ExitFailed, c.phrases...)
		})
	}
}

// TestDryRun: without Execute osc shows the plan (the shadow's definition
// with the change applied) and leaves nothing behind.
func TestDryRun(t *testing.T) {
	t.Parallel()
	e := newT(t)
	before := e.state(t, "t")
	o, _ := e.options(t, "t", "ADD COLUMN added_col INT NOT NULL DEFAULT 5, ADD KEY k_added (added_col)")
	res, _ := run(t, o, migration.ExitApplied)
	if res.Applied {
		t.Errorf("a dry run reports Applied")
	}
	if res.Plan == nil {
		t.Fatal("a dry run returned no plan")
	}
	def := res.Plan.ShadowDefinition
	for _, want := range []string{"`added_col` int(11) NOT NULL DEFAULT 5", "KEY `k_added` (`added_col`)", "`name` varchar(64)"} {
		if !strings.Contains(def, want) {
			t.Errorf("plan's shadow definition lacks %q:\n%s", want, def)
		}
	}
	if strings.Join(res.Plan.Key, ",") != "id" || res.Plan.Shadow != "_t_new" || res.Plan.Table != "t" {
		t.Errorf("plan: key %v, shadow %q, table %q", res.Plan.Key, res.Plan.Shadow, res.Plan.Table)
	}
	if len(res.Plan.Columns) != 4 {
		t.Errorf("plan maps %d columns, want the 4 existing ones: %v", len(res.Plan.Columns), res.Plan.Columns)
	}
	e.assertUntouched(t, "t", before, insertT)
}

// TestCLI checks the real binary: exit codes, that no password reaches its
// output, and --result-json.
func TestCLI(t *testing.T) {
	t.Parallel()
	oscBinary(t) // build before the subtests start their clocks
	e := newT(t)
	pwEnv := []string{"OSC_PASSWORD=" + e.my.Password}

	t.Run("bad flag", func(t *testing.T) {
		r := runCLI(t, pwEnv, append(e.cliArgs("t", "ADD COLUMN x INT"), "--no-such-flag")...)
		if r.code != migration.ExitUsage || !strings.Contains(r.stderr, "no-such-flag") {
			t.Errorf("--no-such-flag: exit %d, want %d and a message naming the flag; stderr:\n%s", r.code, migration.ExitUsage, r.stderr)
		}
		r = runCLI(t, pwEnv, append(e.cliArgs("t", "ADD COLUMN x INT"), "--chunk-size", "many")...)
		if r.code != migration.ExitUsage || !strings.Contains(r.stderr, "chunk-size") {
			t.Errorf("--chunk-size many: exit %d, want %d and a message naming the flag; stderr:\n%s", r.code, migration.ExitUsage, r.stderr)
		}
		// The clauses unquoted: the rest becomes positional arguments.
		r = runCLI(t, pwEnv, append(e.cliArgs("t", "ADD"), "COLUMN", "x", "INT")...)
		if r.code != migration.ExitUsage || !strings.Contains(r.stderr, "unexpected arguments") {
			t.Errorf("unquoted clauses: exit %d, want %d; stderr:\n%s", r.code, migration.ExitUsage, r.stderr)
		}
	})

	t.Run("bad alter", func(t *testing.T) {
		before := e.state(t, "t")
		r := runCLI(t, pwEnv, e.cliArgs("t", "ADD COLUMN x INT; DROP TABLE t", "--execute")...)
		if r.code != migration.ExitUsage || !strings.Contains(r.stderr, "only one ALTER clause list") {
			t.Errorf("exit %d, want %d; stderr:\n%s", r.code, migration.ExitUsage, r.stderr)
		}
		e.assertUntouched(t, "t", before, "")
	})

	t.Run("unknown table with result json", func(t *testing.T) {
		r := runCLI(t, pwEnv, e.cliArgs("no_such_table", "ADD COLUMN x INT", "--execute", "--result-json")...)
		if r.code != migration.ExitRefused {
			t.Errorf("exit %d, want %d; stderr:\n%s", r.code, migration.ExitRefused, r.stderr)
		}
		var res map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("stdout is not one JSON document: %v\n%s", err, r.stdout)
		}
		if code, ok := res["exit_code"].(float64); !ok || int(code) != r.code {
			t.Errorf("JSON exit_code %v, process exit code %d:\n%s", res["exit_code"], r.code, r.stdout)
		}
		if msg, _ := res["error"].(string); !strings.Contains(msg, "does not exist") {
			t.Errorf("JSON error %q does not say the table does not exist", msg)
		}
		if applied, ok := res["applied"].(bool); !ok || applied {
			t.Errorf("JSON applied = %v", res["applied"])
		}
	})

	t.Run("wrong password is never printed", func(t *testing.T) {
		marker := "Secret" + randHex(6)
		for _, extra := range [][]string{
			{"--password", "wrong-" + marker},
			{"--password=wrong-" + marker, "--verbose", "--log-format", "json", "--result-json"},
		} {
			r := runCLI(t, nil, e.cliArgs("t", "ADD COLUMN x INT", append([]string{"--execute"}, extra...)...)...)
			if r.code != migration.ExitFailed || !strings.Contains(r.stderr, "Access denied") {
				t.Errorf("%v: exit %d, want %d (access denied); stderr:\n%s", extra[1:], r.code, migration.ExitFailed, r.stderr)
			}
			if strings.Contains(r.stdout+r.stderr, marker) {
				t.Errorf("%v: the password appears in the output:\nstdout:\n%s\nstderr:\n%s", extra[1:], r.stdout, r.stderr)
			}
		}
	})

	t.Run("dry run prints the plan", func(t *testing.T) {
		r := runCLI(t, pwEnv, e.cliArgs("t", "ADD COLUMN planned_col INT NOT NULL DEFAULT 3")...)
		if r.code != migration.ExitApplied {
			t.Fatalf("exit %d; stderr:\n%s", r.code, r.stderr)
		}
		for _, want := range []string{"dry run: nothing was changed", "chunking key:   PRIMARY (id)", "`planned_col` int(11) NOT NULL DEFAULT 3"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("plan on stdout lacks %q:\n%s", want, r.stdout)
			}
		}
		e.assertNoHelpers(t, "t")
	})

	t.Run("right password is never printed", func(t *testing.T) {
		// A user whose real password holds a marker, so that a successful
		// run (binlog connection included) is checked too.
		marker := "Secret" + randHex(6)
		user, pw := "oscpw_"+randHex(4), "pw-"+marker
		e.exec(t, fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", user, pw),
			fmt.Sprintf("GRANT ALL PRIVILEGES ON %s.* TO '%s'@'%%'", harness.QuoteIdent(e.schema), user),
			fmt.Sprintf("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '%s'@'%%'", user))
		t.Cleanup(func() {
			if _, err := e.db.Exec(fmt.Sprintf("DROP USER IF EXISTS '%s'@'%%'", user)); err != nil {
				t.Errorf("dropping user %s: %v", user, err)
			}
		})
		args := []string{"--host", e.my.Host, "--port", fmt.Sprint(e.my.Port), "--user", user,
			"--database", e.schema, "--table", "t", "--alter", "ADD COLUMN pw_added INT NOT NULL DEFAULT 1",
			"--password", pw, "--verbose", "--result-json"}
		dry := runCLI(t, nil, args...)
		if dry.code != migration.ExitApplied {
			t.Fatalf("dry run: exit %d; stderr:\n%s", dry.code, dry.stderr)
		}
		r := runCLI(t, nil, append(args, "--execute", "--log-format", "json")...)
		if r.code != migration.ExitApplied {
			t.Fatalf("exit %d; stderr:\n%s", r.code, r.stderr)
		}
		for _, out := range []cliResult{dry, r} {
			if strings.Contains(out.stdout+out.stderr, marker) {
				t.Errorf("the password appears in the output:\nstdout:\n%s\nstderr:\n%s", out.stdout, out.stderr)
			}
		}
		var res struct {
			Applied  bool   `json:"applied"`
			ExitCode *int   `json:"exit_code"`
			OldTable string `json:"old_table"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("stdout is not one JSON document: %v\n%s", err, r.stdout)
		}
		if res.ExitCode == nil || *res.ExitCode != 0 || !res.Applied || res.OldTable != "_t_old" {
			t.Errorf("JSON result %s", r.stdout)
		}
		if cols := harness.Columns(t, e.db, "t"); cols[len(cols)-1] != "pw_added" {
			t.Errorf("columns after the run: %v", cols)
		}
	})
}

// TestConcurrentRunRefused: a second run on a table that a run is
// migrating is refused (3), even with the flags that drop leftovers, and
// it must not drop the first run's shadow or changelog, which then
// finishes normally.
func TestConcurrentRunRefused(t *testing.T) {
	e := newCutoverTable(t)
	before := e.state(t, "t")
	alter := "ADD COLUMN added INT NOT NULL DEFAULT 42"
	o1, _ := e.options(t, "t", alter)
	done, resume := startPausedAtCopy(t, e, o1)
	var shadowBefore int64
	if err := e.db.QueryRow("SELECT COUNT(*) FROM _t_new").Scan(&shadowBefore); err != nil {
		t.Fatal(err)
	}

	o2, _ := e.options(t, "t", alter)
	o2.Execute = true
	o2.InitiallyDropShadow, o2.InitiallyDropOld = true, true
	run(t, o2, migration.ExitRefused, "another osc run")
	if !e.exists(t, "_t_new") || !e.exists(t, "_t_osc") {
		t.Fatalf("the refused second run dropped the first run's tables")
	}
	if got := e.count(t, "_t_new"); got < shadowBefore {
		t.Errorf("the first run's shadow lost rows: %d, had %d", got, shadowBefore)
	}
	dry, _ := e.options(t, "t", alter)
	run(t, dry, migration.ExitRefused, "another osc run")

	resume()
	r := <-done
	checkOutcome(t, r.res, r.err, migration.ExitApplied)
	if got := harness.Checksum(t, e.db, "t", []string{"id", "v", "n", "pad"}, nil); got != before.checksum {
		t.Errorf("data after the first run: checksum %s, before %s", got, before.checksum)
	}
	e.assertNoHelpers(t, "t", "_t_old")
}

// TestAddNotNullColumnWithoutDefault is the counterpart of the lossy
// cases: the server's own ALTER TABLE accepts ADD COLUMN x INT NOT NULL on
// a table with rows (filling the implicit default 0), so osc must apply it
// rather than report that the data does not fit.
func TestAddNotNullColumnWithoutDefault(t *testing.T) {
	t.Parallel()
	e := newT(t)
	before := e.state(t, "t")
	// What the server does with the same ALTER.
	e.exec(t, "CREATE TABLE server_alter LIKE t", "INSERT INTO server_alter SELECT * FROM t",
		"ALTER TABLE server_alter ADD COLUMN x INT NOT NULL")
	o, _ := e.options(t, "t", "ADD COLUMN x INT NOT NULL")
	o.Execute = true
	run(t, o, migration.ExitApplied)
	if got, want := harness.Checksum(t, e.db, "t", []string{"id", "name", "n", "note", "x"}, nil),
		harness.Checksum(t, e.db, "server_alter", []string{"id", "name", "n", "note", "x"}, nil); got != want {
		t.Errorf("osc's result differs from the server's ALTER: %s, want %s", got, want)
	}
	if got := harness.Checksum(t, e.db, "_t_old", []string{"id", "name", "n", "note"}, nil); got != before.checksum {
		t.Errorf("_t_old differs from the original")
	}
}
