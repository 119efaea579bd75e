package faults

// Helpers of the PostgreSQL fault tests (pg_*_test.go): a fresh database
// per test on the shared PostgreSQL primary, the table's state that must not
// change, osc's leftovers (shadow, publication, slot), an application that
// writes to the table and to a reference table in the same transactions and
// measures how long each statement waited, and a throwaway PostgreSQL server
// for the server settings the shared one must keep.

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest/observer"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// pgEnv is one test's database on the shared PostgreSQL primary (or on a
// throwaway server, see pgStartThrowaway).
type pgEnv struct {
	pg   *harness.PG
	name string // the database
	db   *sql.DB
}

func newPGEnv(t *testing.T) *pgEnv {
	t.Helper()
	pg := harness.Postgres(t)
	name, db := pg.NewDatabase(t)
	return &pgEnv{pg: pg, name: name, db: db}
}

// dsn is a pgx connection string for this env's database.
func (e *pgEnv) dsn() string { return e.pg.DSN(e.name) }

func (e *pgEnv) exec(t *testing.T, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		_, err := e.db.ExecContext(ctx, s)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

func (e *pgEnv) queryInt(t *testing.T, query string, args ...any) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int64
	if err := e.db.QueryRowContext(ctx, query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// exists says whether a relation of that name exists in schema public.
func (e *pgEnv) exists(t *testing.T, rel string) bool {
	t.Helper()
	return e.queryInt(t, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname = $1", rel) > 0
}

// options are migration.Options for --driver postgres on table (in schema
// public unless the caller sets Schema), logging to an observer.
func (e *pgEnv) options(t *testing.T, table, alter string) (migration.Options, *observer.ObservedLogs) {
	t.Helper()
	log, logs := observedLogger(t)
	return migration.Options{
		Driver: "postgres",
		Host:   e.pg.Host, Port: e.pg.Port, User: e.pg.User, Password: e.pg.Password,
		Database: e.name, Table: table, Alter: alter,
		Logger: log,
	}, logs
}

// cliArgs are the osc binary's arguments for this env, without a password
// (pass pwEnv as its environment).
func (e *pgEnv) cliArgs(table, alter string, extra ...string) []string {
	args := []string{"--driver", "postgres", "--host", e.pg.Host, "--port", strconv.Itoa(e.pg.Port), "--user", e.pg.User,
		"--database", e.name, "--table", table, "--alter", alter}
	return append(args, extra...)
}

func (e *pgEnv) pwEnv() []string { return []string{"OSC_PASSWORD=" + e.pg.Password} }

// pgState is what must not change when osc refuses or fails: the
// relation's identity (OID, kind), its definition and its data.
type pgState struct {
	def      string
	checksum string
}

// pgDefinitionQuery prints a relation's OID, kind, owner, replica identity,
// columns (type, NOT NULL, default, identity, generated), constraints,
// indexes and triggers.
const pgDefinitionQuery = `SELECT concat_ws(E'\n',
	c.oid::text || ' ' || c.relkind::text || ' owner ' || pg_get_userbyid(c.relowner) || ' replident ' || c.relreplident::text,
	(SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
			|| CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
			|| coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
			|| CASE WHEN a.attidentity <> '' THEN ' IDENTITY ' || a.attidentity::text ELSE '' END
			|| CASE WHEN a.attgenerated <> '' THEN ' GENERATED' ELSE '' END, E'\n' ORDER BY a.attnum)
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
	(SELECT string_agg('CONSTRAINT ' || quote_ident(conname) || ' ' || pg_get_constraintdef(oid), E'\n' ORDER BY conname)
		FROM pg_constraint WHERE conrelid = c.oid),
	(SELECT string_agg(pg_get_indexdef(indexrelid), E'\n' ORDER BY indexrelid::regclass::text)
		FROM pg_index WHERE indrelid = c.oid),
	(SELECT string_agg(pg_get_triggerdef(oid), E'\n' ORDER BY tgname)
		FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal))
FROM pg_class c WHERE c.oid = to_regclass($1)`

func (e *pgEnv) definition(t *testing.T, table string) string {
	t.Helper()
	var def string
	if err := e.db.QueryRow(pgDefinitionQuery, harness.PGQuoteIdent("public")+"."+harness.PGQuoteIdent(table)).Scan(&def); err != nil {
		t.Fatalf("reading the definition of %s: %v", table, err)
	}
	return def
}

// checksum is PGChecksum over cols (all columns if nil), ordered by id if
// the relation has that column, else by all columns.
func (e *pgEnv) checksum(t *testing.T, table string, cols []string) string {
	t.Helper()
	if cols == nil {
		cols = harness.PGColumns(t, e.db, table)
	}
	var key []string
	for _, c := range cols {
		if c == "id" {
			key = []string{"id"}
		}
	}
	return harness.PGChecksum(t, e.db, table, cols, key)
}

func (e *pgEnv) state(t *testing.T, table string) pgState {
	t.Helper()
	return pgState{def: e.definition(t, table), checksum: e.checksum(t, table, nil)}
}

// leftovers lists osc's objects for table in this database: the shadow and
// old tables, the publications and replication slots osc names osc_%.
func (e *pgEnv) leftovers(t *testing.T, table string) []string {
	t.Helper()
	var out []string
	for _, rel := range []string{"_" + table + "_new", "_" + table + "_old"} {
		if e.exists(t, rel) {
			out = append(out, "table "+rel)
		}
	}
	for _, p := range harness.Strings(t, e.db, `SELECT pubname FROM pg_publication WHERE pubname LIKE 'osc\_%'`) {
		out = append(out, "publication "+p)
	}
	for _, s := range harness.Strings(t, e.db, `SELECT slot_name || CASE WHEN active THEN ' (active, pid ' || active_pid || ')' ELSE '' END
		FROM pg_replication_slots WHERE database = current_database() AND slot_name LIKE 'osc\_%'`) {
		out = append(out, "slot "+s)
	}
	return out
}

// assertNoLeftovers fails unless every one of leftovers(table) starts with
// one of keep, and every one of keep matches one of them ("publication
// osc_" matches osc's publication, whatever its hash).
func (e *pgEnv) assertNoLeftovers(t *testing.T, table string, keep ...string) {
	t.Helper()
	got := e.leftovers(t, table)
	matched := map[string]bool{}
	for _, g := range got {
		ok := false
		for _, k := range keep {
			if strings.HasPrefix(g, k) {
				ok, matched[k] = true, true
			}
		}
		if !ok {
			t.Errorf("osc left %s behind", g)
		}
	}
	for _, k := range keep {
		if !matched[k] {
			t.Errorf("%s is gone, but it was expected to stay (found: %v)", k, got)
		}
	}
}

// assertUntouched checks that table is the same relation with the same
// definition and data as before, that insert (if any) works on it
// afterwards, and that osc left nothing behind.
func (e *pgEnv) assertUntouched(t *testing.T, table string, before pgState, insert string) {
	t.Helper()
	after := e.state(t, table)
	if after.def != before.def {
		t.Errorf("definition of %s changed:\nbefore:\n%s\nafter:\n%s", table, before.def, after.def)
	}
	if after.checksum != before.checksum {
		t.Errorf("data of %s changed: checksum %s, before %s", table, after.checksum, before.checksum)
	}
	if insert != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := e.db.ExecContext(ctx, insert); err != nil {
			t.Errorf("%s is not writable after the run: %s: %v", table, insert, err)
		}
	}
	e.assertNoLeftovers(t, table)
}

// The test table t: a bigserial key, text of varying length (some of it
// NULL), a secondary index (which osc defers to after the copy) and, with
// withRef, a reference table t_ref with the same rows that the application
// (pgApp) keeps equal to t in the same transactions.
const pgTableT = `CREATE TABLE t (
	id bigserial PRIMARY KEY,
	v text NOT NULL,
	n bigint NOT NULL,
	pad text NOT NULL DEFAULT '',
	note text
)`

// pgCols are t's columns before osc adds any.
var pgCols = []string{"id", "v", "n", "pad", "note"}

func (e *pgEnv) createT(t *testing.T, rows int, withRef bool) {
	t.Helper()
	e.exec(t, pgTableT, "CREATE INDEX t_n ON t (n)",
		fmt.Sprintf(`INSERT INTO t (v, n, pad, note) SELECT 'v' || g, g, repeat('p', g %% 100),
			CASE WHEN g %% 3 = 0 THEN NULL ELSE 'note ' || g END FROM generate_series(1, %d) g`, rows),
		"ANALYZE t")
	if withRef {
		e.exec(t, "CREATE TABLE t_ref (id bigint PRIMARY KEY, v text NOT NULL, n bigint NOT NULL, pad text NOT NULL, note text)",
			"INSERT INTO t_ref SELECT id, v, n, pad, note FROM t")
	}
}

// assertMatchesRef compares t (its original columns) with t_ref, both in
// one statement, so one snapshot, while the application may be writing.
func (e *pgEnv) assertMatchesRef(t *testing.T) {
	t.Helper()
	var got, want string
	q := fmt.Sprintf("SELECT (%s), (%s)", harness.PGChecksumQuery("t", pgCols, []string{"id"}), harness.PGChecksumQuery("t_ref", pgCols, []string{"id"}))
	if err := e.db.QueryRow(q).Scan(&got, &want); err != nil {
		t.Fatalf("checksums of t and t_ref: %v", err)
	}
	if got != want {
		t.Errorf("t (checksum %s) differs from the reference t_ref (%s)", got, want)
		diff := harness.Strings(t, e.db, `SELECT coalesce(a.id, b.id)::text || ': t=' || coalesce(ROW(a.*)::text, 'missing') || ' ref=' || coalesce(ROW(b.*)::text, 'missing')
			FROM (SELECT id, v, n, pad, note FROM t) a FULL JOIN t_ref b ON a.id = b.id
			WHERE ROW(a.*) IS DISTINCT FROM ROW(b.*) ORDER BY 1 LIMIT 10`)
		t.Errorf("first differing rows:\n%s", strings.Join(diff, "\n"))
	} else {
		t.Logf("t matches the reference t_ref: %s", got)
	}
}

// ---------------------------------------------------------------------------
// The application.

// pgApp writes to t (and t_ref, in the same transaction) every ~15ms over
// its own connection, whose lock waits never time out (so only osc's lock
// timeout decides how long it can stall), and times every statement:
// inserts, updates and deletes of random rows, and plain single-row reads.
type pgApp struct {
	mu        sync.Mutex
	ops       int
	byKind    map[string]int
	worst     time.Duration
	worstWhat string
	worstAt   time.Time
	lastWrite time.Time
	err       error
}

// startPGApp starts the application on t with ids up to maxID; it never
// touches the ids in avoid (held by the test's own transactions).
func startPGApp(t *testing.T, e *pgEnv, maxID int64, avoid ...int64) (*pgApp, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := pgx.Connect(ctx, e.dsn())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SET lock_timeout = 0; SET statement_timeout = 0; SET application_name = 'fault-test-app'"); err != nil {
		t.Fatal(err)
	}
	a := &pgApp{byKind: map[string]int{}}
	skip := map[int64]bool{}
	for _, id := range avoid {
		skip[id] = true
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer conn.Close(context.Background())
		rng := rand.New(rand.NewPCG(rand.Uint64(), 2))
		pick := func() int64 {
			for {
				if id := 1 + rng.Int64N(maxID); !skip[id] {
					return id
				}
			}
		}
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(15 * time.Millisecond):
			}
			sctx, scancel := context.WithTimeout(context.Background(), 90*time.Second)
			began := time.Now()
			var what string
			var err error
			switch i % 4 {
			case 0:
				what = "INSERT"
				err = pgx.BeginFunc(sctx, conn, func(tx pgx.Tx) error {
					var id int64
					if err := tx.QueryRow(sctx, "INSERT INTO t (v, n, pad, note) VALUES ($1, $2, $3, $4) RETURNING id",
						fmt.Sprintf("app-%d", i), i+1, strings.Repeat("a", i%50), pgNullIf(i%5 == 0, fmt.Sprintf("app note %d", i))).Scan(&id); err != nil {
						return err
					}
					_, err := tx.Exec(sctx, "INSERT INTO t_ref SELECT id, v, n, pad, note FROM t WHERE id = $1", id)
					return err
				})
			case 1:
				what = "UPDATE"
				id := pick()
				err = pgx.BeginFunc(sctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.Exec(sctx, "UPDATE t SET v = $1, n = n + 1, note = $2 WHERE id = $3",
						fmt.Sprintf("upd-%d", i), pgNullIf(i%7 == 0, fmt.Sprintf("upd note %d", i)), id); err != nil {
						return err
					}
					_, err := tx.Exec(sctx, "UPDATE t_ref r SET v = t.v, n = t.n, pad = t.pad, note = t.note FROM t WHERE t.id = $1 AND r.id = $1", id)
					return err
				})
			case 2:
				what = "SELECT"
				var n int64
				err = conn.QueryRow(sctx, "SELECT count(*) FROM t WHERE id = $1", pick()).Scan(&n)
			case 3:
				what = "DELETE"
				if i%12 != 3 {
					what = "SELECT"
					var v string
					err = conn.QueryRow(sctx, "SELECT coalesce(max(v), '') FROM t WHERE id = $1", pick()).Scan(&v)
					break
				}
				id := pick()
				err = pgx.BeginFunc(sctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.Exec(sctx, "DELETE FROM t WHERE id = $1", id); err != nil {
						return err
					}
					_, err := tx.Exec(sctx, "DELETE FROM t_ref WHERE id = $1", id)
					return err
				})
			}
			took := time.Since(began)
			scancel()
			a.mu.Lock()
			a.ops++
			a.byKind[what]++
			if took > a.worst {
				a.worst, a.worstWhat, a.worstAt = took, what, began
			}
			if err != nil {
				a.err = fmt.Errorf("%s (operation %d): %w", what, i, err)
				a.mu.Unlock()
				return
			}
			if what != "SELECT" {
				a.lastWrite = time.Now()
			}
			a.mu.Unlock()
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return a, stop
}

func pgNullIf(null bool, s string) any {
	if null {
		return nil
	}
	return s
}

// check reports the application's failures and logs its statistics.
func (a *pgApp) check(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		t.Errorf("application failed: %v", a.err)
	}
	t.Logf("application: %d operations %v, worst wait %v (%s at %s)", a.ops, a.byKind, a.worst.Round(time.Millisecond), a.worstWhat, a.worstAt.Format("15:04:05.000"))
}

// ---------------------------------------------------------------------------
// Running osc in the background.

// startPGPausedAtCopy starts Run in the background with a throttle flag
// file and a small chunk size, lets the copy get past the first rows of t,
// then pauses it. resume removes the flag file.
func startPGPausedAtCopy(t *testing.T, e *pgEnv, o migration.Options, rows int64) (done <-chan runOutcome, resume func()) {
	t.Helper()
	flag := filepath.Join(t.TempDir(), "throttle")
	o.ThrottleFlagFile = flag
	if o.ChunkSize == 0 {
		o.ChunkSize = 100
	}
	o.Execute = true
	ch := make(chan runOutcome, 1)
	finished := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	started := time.Now()
	go func() {
		defer close(finished)
		res, err := migration.Run(ctx, o)
		ch <- runOutcome{res, err, time.Since(started)}
	}()
	t.Cleanup(func() {
		cancel()
		os.Remove(flag)
		select {
		case <-finished:
		case <-time.After(time.Minute):
			t.Errorf("Run did not return within a minute of its cancellation")
		}
	})
	shadowRows := func() int64 { return pgShadowCount(e, rows) }
	if !waitFor(60*time.Second, 2*time.Millisecond, func() bool { return shadowRows() >= 300 }) {
		t.Fatalf("the copy did not start within 60s (shadow rows: %d)", shadowRows())
	}
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	last := shadowRows()
	if !waitFor(30*time.Second, 300*time.Millisecond, func() bool {
		n := shadowRows()
		same := n == last
		last = n
		return same
	}) {
		t.Fatal("the copy did not pause on the throttle flag file")
	}
	if last >= rows {
		t.Fatalf("the copy finished (%d rows) before it could be paused", last)
	}
	select {
	case r := <-ch:
		t.Fatalf("Run returned while the copy should be paused: %v", r.err)
	default:
	}
	t.Logf("copy paused at %d of %d rows", last, rows)
	return ch, func() { os.Remove(flag) }
}

// pgShadowCount counts the shadow's rows among the original ones (the
// applier adds the application's inserts); -1 while there is no shadow.
func pgShadowCount(e *pgEnv, rows int64) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int64
	if err := e.db.QueryRowContext(ctx, "SELECT count(*) FROM _t_new WHERE id <= $1", rows).Scan(&n); err != nil {
		return -1
	}
	return n
}

// ---------------------------------------------------------------------------
// A throwaway PostgreSQL server, for settings the shared one must keep
// (wal_level, max_replication_slots). It trusts every local connection;
// its bootstrap superuser is osc.

type pgThrowaway struct {
	pg   *harness.PG // Host, Port, User osc, no password
	bin  string
	dir  string
	cmd  *exec.Cmd
	exit chan error
	log  string
}

func pgBinDir(t *testing.T) string {
	t.Helper()
	var cands []string
	if d := os.Getenv("OSC_PG_BINDIR"); d != "" {
		cands = append(cands, d)
	}
	cands = append(cands, "/usr/lib/postgresql/15/bin")
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		cands = append(cands, strings.TrimSpace(string(out)))
	}
	for _, d := range cands {
		if st, err := os.Stat(filepath.Join(d, "initdb")); err == nil && !st.IsDir() {
			if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
				return d
			}
		}
	}
	t.Fatalf("PostgreSQL server binaries not found in %v (run: bash localtests/servers.sh install)", cands)
	return ""
}

// pgAsOSUser runs name as the postgres OS user when we are root
// (PostgreSQL refuses to run as root), else as ourselves. setpriv execs, so
// the started process is the program itself.
func pgAsOSUser(dir, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.Command("setpriv", append([]string{"--reuid=postgres", "--regid=postgres", "--init-groups", "--", name}, args...)...)
	} else {
		cmd = exec.Command(name, args...)
	}
	cmd.Dir = dir
	return cmd
}

// pgStartThrowaway initdb's a new cluster and starts it on a free loopback
// port with the given -c settings; it stops it (fast shutdown) and deletes
// it at cleanup. restart starts it again with other settings.
func pgStartThrowaway(t *testing.T, settings ...string) *pgThrowaway {
	t.Helper()
	bin := pgBinDir(t)
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("setpriv"); err != nil {
			t.Fatalf("running as root needs setpriv to start PostgreSQL as the postgres user: %v", err)
		}
	}
	dir, err := os.MkdirTemp("", "osc-pgfault-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := exec.Command("chown", "postgres:", dir).Run(); err != nil {
			t.Fatalf("chown postgres %s: %v", dir, err)
		}
	}
	began := time.Now()
	s := &pgThrowaway{pg: &harness.PG{Host: "127.0.0.1", User: "osc"}, bin: bin, dir: dir, log: filepath.Join(dir, "postgres.log")}
	if out, err := pgAsOSUser(dir, filepath.Join(bin, "initdb"), "-D", s.data(), "-U", "osc", "-A", "trust", "-E", "UTF8",
		"--locale=C", "--no-sync", "--no-instructions").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	t.Cleanup(s.stop)
	s.start(t, settings...)
	t.Logf("throwaway PostgreSQL on port %d (%v): %v", s.pg.Port, settings, time.Since(began).Round(time.Millisecond))
	return s
}

func (s *pgThrowaway) data() string { return filepath.Join(s.dir, "data") }

func (s *pgThrowaway) start(t *testing.T, settings ...string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		s.pg.Port = pgFreePort(t)
		args := []string{"-D", s.data(), "-p", strconv.Itoa(s.pg.Port), "-k", s.dir, "-c", "listen_addresses=127.0.0.1",
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "shared_buffers=16MB",
			"-c", "max_connections=30", "-c", "logging_collector=off"}
		for _, kv := range settings {
			args = append(args, "-c", kv)
		}
		s.cmd = pgAsOSUser(s.dir, filepath.Join(s.bin, "postgres"), args...)
		logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		if err := s.cmd.Start(); err != nil {
			logf.Close()
			t.Fatal(err)
		}
		logf.Close()
		s.exit = make(chan error, 1)
		go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(s.cmd, s.exit)
		if s.waitReady(t, 30*time.Second) {
			return
		}
		out, _ := os.ReadFile(s.log)
		if attempt < 3 && strings.Contains(string(out), "Address already in use") {
			continue
		}
		t.Fatalf("the throwaway PostgreSQL did not start:\n%s", out)
	}
}

// restart stops the server and starts it again with other settings.
func (s *pgThrowaway) restart(t *testing.T, settings ...string) {
	t.Helper()
	s.stop()
	began := time.Now()
	s.start(t, settings...)
	t.Logf("throwaway PostgreSQL restarted on port %d (%v): %v", s.pg.Port, settings, time.Since(began).Round(time.Millisecond))
}

func (s *pgThrowaway) waitReady(t *testing.T, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.exit:
			return false
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := pgx.Connect(ctx, s.pg.DSN("postgres"))
		if err == nil {
			c.Close(ctx)
			cancel()
			return true
		}
		cancel()
		time.Sleep(30 * time.Millisecond)
	}
	return false
}

// stop sends the postmaster SIGINT (fast shutdown), then SIGQUIT.
func (s *pgThrowaway) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exit:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Signal(syscall.SIGQUIT)
		<-s.exit
	}
	s.cmd = nil
}

// env creates a database on the throwaway server and returns an env for it.
func (s *pgThrowaway) env(t *testing.T, name string) *pgEnv {
	t.Helper()
	admin := s.pg.Open(t, "postgres")
	if _, err := admin.Exec("CREATE DATABASE " + harness.PGQuoteIdent(name)); err != nil {
		t.Fatal(err)
	}
	return &pgEnv{pg: s.pg, name: name, db: s.pg.Open(t, name)}
}

func pgFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func pgWriteFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

func (e *pgEnv) columns(t *testing.T, table string) []string {
	t.Helper()
	return harness.PGColumns(t, e.db, table)
}

// oscBackends lists the server sessions of osc in this database: its
// pool and applier connections (application_name osc) and its walsender,
// by the slot it holds.
func (e *pgEnv) oscBackends(t *testing.T) []string {
	t.Helper()
	return harness.Strings(t, e.db, `SELECT pid::text || ' ' || backend_type FROM pg_stat_activity
		WHERE datname = current_database() AND (application_name = 'osc'
			OR pid IN (SELECT active_pid FROM pg_replication_slots WHERE slot_name LIKE 'osc\_%'))
		ORDER BY pid`)
}

// pgPauseCLICopy waits until the osc binary p has copied at least min rows of
// t into the shadow, creates the throttle flag file and waits until the
// copy stands still; it returns the rows copied.
func pgPauseCLICopy(t *testing.T, e *pgEnv, p *proc, flag string, rows, min int64) int64 {
	t.Helper()
	if !p.waitFor(60*time.Second, 2*time.Millisecond, func() bool { return pgShadowCount(e, rows) >= min }) {
		t.Fatalf("osc did not start copying within 60s (shadow rows %d); output:\n%s", pgShadowCount(e, rows), p.output.String())
	}
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	last := pgShadowCount(e, rows)
	if !p.waitFor(30*time.Second, 300*time.Millisecond, func() bool {
		n := pgShadowCount(e, rows)
		same := n == last
		last = n
		return same
	}) {
		t.Fatal("the copy did not pause on the throttle flag file")
	}
	if last >= rows {
		t.Fatalf("the copy finished (%d rows) before it could be paused", last)
	}
	return last
}
