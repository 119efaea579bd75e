package e2e

// End-to-end tests of throttling, the control socket and the postponed
// cut-over (DESIGN.md §3), on both databases: each test has the subtests
// mysql and postgres. A run goes through migration.Run in the background
// and the test watches it through its control socket (`status json`).

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/osc-dev/osc/control"
	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
	"github.com/osc-dev/osc/status"
)

const (
	ctlRows       = 20000 // rows of t in most tests
	ctlChunkSize  = 50    // small chunks: the copy takes a while and is observable
	ctlShadow     = "_t_new"
	ctlPostponing = "postponing cut-over"
)

var ctlDrivers = []string{"mysql", "postgres"}

// ctlEnv is one test's database, on MariaDB or PostgreSQL.
type ctlEnv struct {
	t    *testing.T
	pg   bool
	name string  // database
	db   *sql.DB // connected to name
	logs *logBuffer
	log  *zap.Logger // logs' logger, without the status polls
	my   *harness.MySQL
	pgs  *harness.PG
}

func ctlNewEnv(t *testing.T, driver string) *ctlEnv {
	t.Helper()
	e := &ctlEnv{t: t, pg: driver == "postgres", logs: newLogBuffer(t)}
	e.log = e.logs.logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return ctlQuietCore{c} }))
	if e.pg {
		e.pgs = harness.Postgres(t)
		e.name, e.db = e.pgs.NewDatabase(t)
	} else {
		e.my = harness.MariaDB(t)
		e.name, e.db = e.my.NewDatabase(t)
	}
	return e
}

// ctlQuietCore drops the log lines of the tests' status polls, which
// would drown the rest.
type ctlQuietCore struct{ zapcore.Core }

func (c ctlQuietCore) With(f []zapcore.Field) zapcore.Core { return ctlQuietCore{c.Core.With(f)} }

func (c ctlQuietCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c ctlQuietCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	if ent.Message == "control command" {
		for _, f := range fields {
			if f.Key == "command" && f.String == "status" {
				return nil
			}
		}
	}
	return c.Core.Write(ent, fields)
}

// bind turns the ? placeholders of a query into PostgreSQL's $n.
func (e *ctlEnv) bind(query string) string {
	if !e.pg {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (e *ctlEnv) exec(query string, args ...any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.db.ExecContext(ctx, e.bind(query), args...); err != nil {
		e.t.Fatalf("%s: %v", abbrev(query), err)
	}
}

func (e *ctlEnv) str(query string, args ...any) string {
	e.t.Helper()
	return queryStringOn(e.t, e.db, e.bind(query), args...)
}

// createTable creates t (id, v, s) with rows rows, and more tables with
// the same shape and content.
func (e *ctlEnv) createTable(rows int, also ...string) {
	e.t.Helper()
	for _, name := range append([]string{"t"}, also...) {
		if e.pg {
			e.exec(fmt.Sprintf("CREATE TABLE %s (id bigint PRIMARY KEY, v int NOT NULL, s varchar(64) NOT NULL)", name))
			e.exec(fmt.Sprintf("INSERT INTO %s SELECT i, i %% 1000, 'row-' || i FROM generate_series(1, %d) i", name, rows))
			e.exec("ANALYZE " + name)
		} else {
			e.exec(fmt.Sprintf("CREATE TABLE %s (id BIGINT NOT NULL PRIMARY KEY, v INT NOT NULL, s VARCHAR(64) NOT NULL) ENGINE=InnoDB", name))
			e.exec(fmt.Sprintf("INSERT INTO %s SELECT seq, seq %% 1000, CONCAT('row-', seq) FROM seq_1_to_%d", name, rows))
			e.exec("ANALYZE TABLE " + name)
		}
	}
}

const ctlAlter = "ADD COLUMN extra INT NOT NULL DEFAULT 7"

func (e *ctlEnv) options() migration.Options {
	o := migration.Options{Table: "t", Alter: ctlAlter, Execute: true, Database: e.name, Logger: e.log,
		ChunkSize: ctlChunkSize}
	if e.pg {
		o.Driver = "postgres"
		o.Host, o.Port, o.User, o.Password = e.pgs.Host, e.pgs.Port, e.pgs.User, e.pgs.Password
	} else {
		o.Host, o.Port, o.User, o.Password = e.my.Host, e.my.Port, e.my.User, e.my.Password
	}
	return o
}

var ctlColumns = []string{"id", "v", "s"}

func (e *ctlEnv) checksum(table string) string {
	e.t.Helper()
	if e.pg {
		return harness.PGChecksum(e.t, e.db, table, ctlColumns, []string{"id"})
	}
	return harness.Checksum(e.t, e.db, table, ctlColumns, []string{"id"})
}

// definition describes table: SHOW CREATE TABLE, or (PostgreSQL) its oid
// and columns, so that a table replaced by another one differs too.
func (e *ctlEnv) definition(table string) string {
	e.t.Helper()
	if e.pg {
		return e.str(`SELECT c.oid::text || ': ' || string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
				|| CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END, ', ' ORDER BY a.attnum)
			FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
			WHERE c.oid = to_regclass(?) GROUP BY c.oid`, "public."+table)
	}
	var name, def string
	if err := e.db.QueryRow("SHOW CREATE TABLE "+harness.QuoteIdent(table)).Scan(&name, &def); err != nil {
		e.t.Fatalf("SHOW CREATE TABLE %s: %v", table, err)
	}
	return def
}

// tables lists the tables of the test database (PostgreSQL: schema public).
func (e *ctlEnv) tables() []string {
	e.t.Helper()
	var names []string
	if e.pg {
		names = harness.Strings(e.t, e.db, "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')")
	} else {
		names = harness.Strings(e.t, e.db, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?", e.name)
	}
	slices.Sort(names)
	return names
}

// assertNothingLeft checks that the database holds exactly the tables want
// and (PostgreSQL) no replication slot or publication: osc removed all it
// had created.
func (e *ctlEnv) assertNothingLeft(want ...string) {
	e.t.Helper()
	want = slices.Clone(want)
	slices.Sort(want)
	if got := e.tables(); !slices.Equal(got, want) {
		e.t.Errorf("tables after the run = %v, want %v: osc must remove its shadow, changelog and sentry tables", got, want)
	}
	if !e.pg {
		return
	}
	if slots := harness.Strings(e.t, e.db, "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"); len(slots) > 0 {
		e.t.Errorf("replication slots left in %s: %v", e.name, slots)
	}
	if pubs := harness.Strings(e.t, e.db, "SELECT pubname FROM pg_publication"); len(pubs) > 0 {
		e.t.Errorf("publications left in %s: %v", e.name, pubs)
	}
}

// replicaAddr is the replica's (standby's) host:port.
func (e *ctlEnv) replicaAddr() string {
	if e.pg {
		return net.JoinHostPort(e.pgs.Host, strconv.Itoa(e.pgs.StandbyPort))
	}
	return net.JoinHostPort(e.my.Host, strconv.Itoa(e.my.ReplicaPort))
}

// stopReplication stops applying on the replica (the SQL thread; PostgreSQL:
// WAL replay) and returns the function that restarts it. A cleanup restarts
// it in any case, and waits for the replica to catch up: other test
// packages share these servers.
func (e *ctlEnv) stopReplication() (restart func()) {
	e.t.Helper()
	var rdb *sql.DB
	stop, start := "STOP SLAVE SQL_THREAD", "START SLAVE SQL_THREAD"
	if e.pg {
		rdb = e.pgs.OpenStandby(e.t, "")
		stop, start = "SELECT pg_wal_replay_pause()", "SELECT pg_wal_replay_resume()"
	} else {
		rdb = e.my.OpenReplica(e.t, "")
	}
	var once sync.Once
	var restartErr error
	restart = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := rdb.ExecContext(ctx, start); err != nil {
				restartErr = fmt.Errorf("%s on the replica: %v", start, err)
			}
		})
		if restartErr != nil {
			e.t.Error(restartErr)
		}
	}
	e.t.Cleanup(func() {
		restart()
		if e.pg {
			if err := e.pgs.WaitStandbyTimeout(harness.ReplicaTimeout); err != nil {
				e.t.Errorf("the standby did not catch up after the test: %v", err)
			}
		} else if err := e.my.WaitReplicaTimeout(harness.ReplicaTimeout); err != nil {
			e.t.Errorf("the replica did not catch up after the test: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := rdb.ExecContext(ctx, stop); err != nil {
		e.t.Fatalf("%s on the replica: %v", stop, err)
	}
	return restart
}

func (e *ctlEnv) waitReplica() {
	e.t.Helper()
	if e.pg {
		e.pgs.WaitStandby(e.t)
	} else {
		e.my.WaitReplica(e.t)
	}
}

// holdActiveSession keeps a statement running on the server until the
// returned function is called, so that Threads_running (PostgreSQL: active
// client backends other than osc's query) is above 0. MariaDB's
// Threads_running counts the thread asking already: there it does nothing.
func (e *ctlEnv) holdActiveSession() (release func()) {
	e.t.Helper()
	if !e.pg {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.db.ExecContext(ctx, "SELECT pg_sleep(120)")
	}()
	var once sync.Once
	release = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	e.t.Cleanup(release)
	// Wait until the server shows it running.
	deadline := time.Now().Add(10 * time.Second)
	for e.str("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(120)'") == "0" {
		if time.Now().After(deadline) {
			e.t.Fatal("the pg_sleep session does not show as active")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return release
}

// ctlSocketDir is a short directory for the control socket (unix socket
// paths are limited to about 100 bytes), removed at the end of the test.
func ctlSocketDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 80 {
		var err error
		if dir, err = os.MkdirTemp("", "ctl"); err != nil {
			t.Fatal(err)
		}
		if len(dir) > 80 {
			os.RemoveAll(dir)
			if dir, err = os.MkdirTemp("/tmp", "ctl"); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	return dir
}

// ctlRun is a run of migration.Run in the background with a control socket.
type ctlRun struct {
	t    *testing.T
	sock string
	ch   <-chan runResult
	done bool
	res  runResult
}

// ctlStart starts the run with a control socket of its own. The run is
// cancelled and waited for at the end of the test, before the database is
// dropped.
func ctlStart(t *testing.T, o migration.Options) *ctlRun {
	t.Helper()
	o.SocketFile = filepath.Join(ctlSocketDir(t), "osc.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	r := &ctlRun{t: t, sock: o.SocketFile, ch: runAsync(ctx, o)}
	t.Cleanup(func() {
		cancel()
		if !r.done {
			select {
			case r.res = <-r.ch:
				r.done = true
			case <-time.After(time.Minute):
				t.Errorf("migration.Run did not return within a minute of being cancelled")
			}
		}
	})
	return r
}

// finished reports whether the run has returned, without waiting.
func (r *ctlRun) finished() bool {
	if r.done {
		return true
	}
	select {
	case r.res = <-r.ch:
		r.done = true
	default:
	}
	return r.done
}

// wait waits for the run to return.
func (r *ctlRun) wait(timeout time.Duration) runResult {
	r.t.Helper()
	if r.done {
		return r.res
	}
	select {
	case r.res = <-r.ch:
		r.done = true
	case <-time.After(timeout):
		s, _ := r.poll()
		r.t.Fatalf("migration.Run did not return within %v; status: %s", timeout, s)
	}
	return r.res
}

// send sends one command over the socket and returns the answer.
func (r *ctlRun) send(command string) string {
	r.t.Helper()
	out, err := control.Send(r.sock, command, 10*time.Second)
	if err != nil {
		r.t.Fatalf("control command %q: %v", command, err)
	}
	return out
}

// expect sends a command and checks that the answer is want.
func (r *ctlRun) expect(command, want string) {
	r.t.Helper()
	if got := r.send(command); got != want {
		r.t.Errorf("control command %q answered %q, want %q", command, got, want)
	}
}

// expectError sends a command that must be refused with an error line
// mentioning each of mention.
func (r *ctlRun) expectError(command string, mention ...string) {
	r.t.Helper()
	got := r.send(command)
	if !strings.HasPrefix(got, "error: ") || !strings.HasSuffix(got, "\n") || strings.Count(got, "\n") != 1 {
		r.t.Errorf("control command %q answered %q, want one line starting with \"error: \"", command, got)
		return
	}
	for _, m := range mention {
		if !strings.Contains(got, m) {
			r.t.Errorf("control command %q answered %q, want it to mention %q", command, got, m)
		}
	}
}

// poll reads `status json`; ok is false when the socket is not (or no
// longer) there.
func (r *ctlRun) poll() (s status.Snapshot, ok bool) {
	r.t.Helper()
	out, err := control.Send(r.sock, "status json", 10*time.Second)
	if err != nil {
		return s, false
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		if r.finished() || out == "" {
			return s, false // the run closed the socket meanwhile
		}
		r.t.Fatalf("status json answered %q: %v", out, err)
	}
	return s, true
}

// status reads `status json`, which must answer.
func (r *ctlRun) status() status.Snapshot {
	r.t.Helper()
	s, ok := r.poll()
	if !ok {
		r.t.Fatalf("status json: no answer (run ended: %v, err %v)", r.done, r.res.err)
	}
	return s
}

// waitFor polls the status until cond holds; the run ending first or the
// timeout passing fails the test.
func (r *ctlRun) waitFor(what string, timeout time.Duration, cond func(s status.Snapshot) bool) status.Snapshot {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	var last status.Snapshot
	for {
		if r.finished() {
			r.t.Fatalf("the run ended (error: %v) while waiting for %s; last status: %s", r.res.err, what, last)
		}
		if s, ok := r.poll(); ok {
			last = s
			if cond(s) {
				return s
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out after %v waiting for %s; last status: %s", timeout, what, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// holds checks that cond holds on every status read for d.
func (r *ctlRun) holds(what string, d time.Duration, cond func(s status.Snapshot) bool) status.Snapshot {
	r.t.Helper()
	var last status.Snapshot
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if r.finished() {
			r.t.Fatalf("the run ended (error: %v) while %s must hold; last status: %s", r.res.err, what, last)
		}
		last = r.status()
		if !cond(last) {
			r.t.Fatalf("%s: no longer true; status: %s", what, last)
		}
	}
	return last
}

// settled waits until a counter has not moved for quiet and returns it.
func (r *ctlRun) settled(what string, quiet time.Duration, f func(s status.Snapshot) int64) int64 {
	r.t.Helper()
	s := r.status()
	v, since := f(s), time.Now()
	for deadline := time.Now().Add(15 * time.Second); time.Since(since) < quiet; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			r.t.Fatalf("%s did not stop moving; status: %s", what, s)
		}
		s = r.status()
		if n := f(s); n != v {
			v, since = n, time.Now()
		}
	}
	return v
}

// copyMore resumes a paused copy until more than n rows past from are
// copied, pauses it again and returns rows_copied once it has settled.
func (r *ctlRun) copyMore(from, n int64) int64 {
	r.expect("resume", "OK\n")
	r.waitFor("the copy to go on", 10*time.Second, func(s status.Snapshot) bool { return s.RowsCopied > from+n })
	r.expect("pause", "OK\n")
	return r.settled("rows_copied after pause", 300*time.Millisecond, ctlCopied)
}

func ctlCopied(s status.Snapshot) int64  { return s.RowsCopied }
func ctlApplied(s status.Snapshot) int64 { return s.EventsApplied }

// assertAborted checks the outcome of a run ended by the operator or by
// critical load: the error, the exit code, the original table untouched
// (same definition, same rows) and nothing of osc's left.
func (e *ctlEnv) assertAborted(r *ctlRun, res runResult, exit int, mention, origDef, origSum string, others ...string) {
	e.t.Helper()
	if res.err == nil {
		e.t.Fatalf("migration.Run succeeded, want exit code %d", exit)
	}
	if got := migration.ExitCode(res.err); got != exit {
		e.t.Errorf("ExitCode(%v) = %d, want %d", res.err, got, exit)
	}
	if res.res == nil || res.res.ExitCode != exit || res.res.Applied {
		e.t.Errorf("Result = %+v, want exit code %d and not applied", res.res, exit)
	}
	if exit == migration.ExitAborted && !errors.Is(res.err, migration.ErrAborted) {
		e.t.Errorf("error %v does not wrap migration.ErrAborted", res.err)
	}
	if !strings.Contains(res.err.Error(), mention) {
		e.t.Errorf("error %q does not mention %q", res.err, mention)
	}
	e.assertNothingLeft(append([]string{"t"}, others...)...)
	if got := e.definition("t"); got != origDef {
		e.t.Errorf("t after the run:\n%s\nwant the original:\n%s", got, origDef)
	}
	if got := e.checksum("t"); got != origSum {
		e.t.Errorf("checksum of t changed from %s to %s", origSum, got)
	}
	if _, err := os.Lstat(r.sock); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("the control socket %s is still there after the run (%v)", r.sock, err)
	}
}

// assertDone checks a completed run and the new table.
func (e *ctlEnv) assertDone(res runResult) {
	e.t.Helper()
	if res.err != nil {
		e.t.Fatalf("migration.Run failed (exit code %d): %v", migration.ExitCode(res.err), res.err)
	}
	if !res.res.Applied || res.res.ExitCode != migration.ExitApplied {
		e.t.Fatalf("Result = %+v, want applied", res.res)
	}
	if n := e.str("SELECT count(*) FROM t WHERE extra <> 7"); n != "0" {
		e.t.Errorf("%s rows of the new t lack extra = 7", n)
	}
}

func ctlFlag(t *testing.T, path string, on bool) {
	t.Helper()
	var err error
	if on {
		err = os.WriteFile(path, nil, 0o600)
	} else if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		t.Fatal(err)
	}
}

func ctlBoth(t *testing.T, f func(t *testing.T, e *ctlEnv)) {
	t.Parallel()
	for _, d := range ctlDrivers {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			f(t, ctlNewEnv(t, d))
		})
	}
}

// TestThrottleReplicaLag: a replica that stops applying throttles the copy
// once its lag (measured from heartbeats) passes MaxLag, with a reason
// naming it; the copy resumes when it catches up, and the run completes.
func TestThrottleReplicaLag(t *testing.T) {
	ctlBoth(t, func(t *testing.T, e *ctlEnv) {
		if e.pg {
			e.pgs.HoldStandby(t)
		} else {
			e.my.HoldReplica(t)
		}
		e.createTable(ctlRows)
		e.waitReplica()
		flag := filepath.Join(t.TempDir(), "throttle")
		ctlFlag(t, flag, true)
		o := e.options()
		o.ThrottleFlagFile = flag
		o.ThrottleControlReplicas = []string{e.replicaAddr()}
		o.MaxLag = 500 * time.Millisecond
		r := ctlStart(t, o)
		replica := "replica " + e.replicaAddr()

		// Held by the flag file only: the replica keeps up.
		r.waitFor("the copy held by the flag file alone", 20*time.Second, func(s status.Snapshot) bool {
			return s.State == "copying" && strings.HasPrefix(s.Throttle, "flag file ") && !strings.Contains(s.Throttle, ";")
		})
		ctlFlag(t, flag, false)
		r.waitFor("the copy to start", 10*time.Second, func(s status.Snapshot) bool { return s.RowsCopied > 0 })
		// Hold it while the replica starts lagging, so it cannot finish meanwhile.
		r.expect("pause", "OK\n")
		before := r.settled("rows_copied after pause", 300*time.Millisecond, ctlCopied)

		restart := e.stopReplication()
		r.waitFor("the lag throttle", 10*time.Second, func(s status.Snapshot) bool {
			return strings.Contains(s.Throttle, replica+" lags ")
		})
		r.expect("resume", "OK\n")
		s := r.waitFor("the lag alone to throttle", 5*time.Second, func(s status.Snapshot) bool {
			return !strings.Contains(s.Throttle, "operator") && strings.Contains(s.Throttle, replica+" lags ")
		})
		if !strings.Contains(s.Throttle, "> 500ms") || s.LagMillis < 500 {
			t.Errorf("status while the replica lags: throttle %q, lag %dms; want the reason to show the limit 500ms and the lag above it", s.Throttle, s.LagMillis)
		}
		if sup := r.send("sup"); !strings.Contains(sup, "throttled: "+replica+" lags ") {
			t.Errorf("sup answered %q, want the replica's lag as the throttle reason", sup)
		}
		r.holds("no row copied while the replica lags", 1500*time.Millisecond, func(s status.Snapshot) bool {
			return s.RowsCopied == before && strings.Contains(s.Throttle, replica+" lags ")
		})

		restart()
		r.waitFor("the copy to resume after the replica caught up", 20*time.Second, func(s status.Snapshot) bool {
			return s.RowsCopied > before && !strings.Contains(s.Throttle, "lags")
		})
		res := r.wait(time.Minute)
		e.assertDone(res)
		if res.res.RowsCopied != ctlRows {
			t.Errorf("Result.RowsCopied = %d, want %d", res.res.RowsCopied, ctlRows)
		}
		e.waitReplica()
	})
}

// TestThrottleUnreachableReplica: a control replica that cannot be reached
// throttles (fail closed) and says so; abort then ends the run cleanly.
func TestThrottleUnreachableReplica(t *testing.T) {
	ctlBoth(t, func(t *testing.T, e *ctlEnv) {
		e.createTable(2000)
		origDef, origSum := e.definition("t"), e.checksum("t")
		o := e.options()
		o.ThrottleControlReplicas = []string{"127.0.0.1:1"} // nothing listens there
		r := ctlStart(t, o)
		r.waitFor("the unreachable replica to throttle", 20*time.Second, func(s status.Snapshot) bool {
			return s.State == "copying" && strings.Contains(s.Throttle, "replica 127.0.0.1:1 unreachable")
		})
		r.holds("nothing copied while the replica is unreachable", time.Second, func(s status.Snapshot) bool {
			return s.RowsCopied == 0 && strings.Contains(s.Throttle, "unreachable")
		})
		r.expect("abort", "OK\n")
		e.assertAborted(r, r.wait(time.Minute), migration.ExitAborted, "aborted by the operator", origDef, origSum)
	})
}

// TestThrottleFlagFileQueryLoad: the flag file, the throttle query and
// max-load each hold the copy with their own reason, and each releases its
// hold: deleting the file, the query returning 0, max-load= over the socket.
func TestThrottleFlagFileQueryLoad(t *testing.T) {
	ctlBoth(t, func(t *testing.T, e *ctlEnv) {
		e.createTable(ctlRows)
		e.exec("CREATE TABLE ctl_gate (x int)")
		e.exec("INSERT INTO ctl_gate VALUES (1)")
		e.holdActiveSession()
		flag := filepath.Join(t.TempDir(), "throttle")
		ctlFlag(t, flag, true)
		o := e.options()
		o.ThrottleFlagFile = flag
		o.ThrottleQuery = "SELECT count(*) FROM ctl_gate"
		o.MaxLoad = "Threads_running=0"
		r := ctlStart(t, o)

		has := func(s status.Snapshot, parts ...string) bool {
			for _, p := range parts {
				if !strings.Contains(s.Throttle, p) {
					return false
				}
			}
			return true
		}
		fileReason, queryReason, loadReason := "flag file "+flag+" exists", "throttle query returned 1", "load: Threads_running="
		r.waitFor("all three reasons", 20*time.Second, func(s status.Snapshot) bool {
			return s.State == "copying" && has(s, fileReason, queryReason, loadReason)
		})
		if got := r.send("throttle-query=?"); got != o.ThrottleQuery+"\n" {
			t.Errorf("throttle-query=? answered %q", got)
		}
		if got := r.send("max-load=?"); got != "Threads_running=0\n" {
			t.Errorf("max-load=? answered %q", got)
		}

		ctlFlag(t, flag, false)
		r.waitFor("the flag file's reason to go", 5*time.Second, func(s status.Snapshot) bool {
			return !has(s, fileReason) && has(s, queryReason, loadReason)
		})
		e.exec("DELETE FROM ctl_gate")
		r.waitFor("the query's reason to go", 5*time.Second, func(s status.Snapshot) bool {
			return !has(s, queryReason) && has(s, loadReason)
		})
		r.holds("nothing copied while max-load holds the copy", 500*time.Millisecond, func(s status.Snapshot) bool {
			return s.RowsCopied == 0 && has(s, loadReason)
		})
		r.expect("max-load=", "OK\n")
		r.expect("max-load=?", "\n")
		r.waitFor("the copy to start", 10*time.Second, func(s status.Snapshot) bool { return s.RowsCopied > 0 })
		e.assertDone(r.wait(time.Minute))
	})
}

// TestThrottleCriticalLoad: critical load aborts the run (after the
// re-check): exit code 1, the error says why, nothing is left behind.
func TestThrottleCriticalLoad(t *testing.T) {
	ctlBoth(t, func(t *testing.T, e *ctlEnv) {
		e.createTable(2000)
		origDef, origSum := e.definition("t"), e.checksum("t")
		e.holdActiveSession()
		flag := filepath.Join(t.TempDir(), "throttle")
		ctlFlag(t, flag, true) // the copy cannot finish first
		o := e.options()
		o.ThrottleFlagFile = flag
		o.CriticalLoad = "Threads_running=0"
		o.CriticalLoadInterval = 300 * time.Millisecond
		r := ctlStart(t, o)
		res := r.wait(time.Minute)
		e.assertAborted(r, res, migration.ExitFailed, "critical load reached (Threads_running=", origDef, origSum)
		if got := e.logs.matching("critical load reached; checking again"); got == "none" {
			t.Errorf("no log line of the re-check after CriticalLoadInterval")
		}

		// A variable the server does not know is invalid input, refused
		// before the run starts (not a critical load a second later).
		o.CriticalLoad = "Threads_runing=1000"
		o.SocketFile = ""
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := migration.Run(ctx, o)
		if migration.ExitCode(err) != migration.ExitUsage || err == nil || !strings.Contains(err.Error(), "--critical-load: cannot read Threads_runing") {
			t.Errorf("critical load on an unknown variable: exit code %d, error %v; want invalid input naming the variable", migration.ExitCode(err), err)
		}
		e.assertNothingLeft("t")
	})
}

// TestControlSocket drives a run through its control socket: pause/resume,
// chunk-size, throttle-query, pause-all/resume-all with a writer, the
// status forms, errors, settings, and abort.
func TestControlSocket(t *testing.T) {
	ctlBoth(t, func(t *testing.T, e *ctlEnv) {
		// Chunks grow up to doubling per chunk under chunk-time below, and
		// take milliseconds: the copy must outlast the few the test
		// watches.
		rows := 10 * ctlRows
		e.createTable(rows)
		flag := filepath.Join(t.TempDir(), "throttle")
		ctlFlag(t, flag, true)
		o := e.options()
		o.ThrottleFlagFile = flag
		r := ctlStart(t, o)
		s := r.waitFor("the copy held by the flag file", 20*time.Second, func(s status.Snapshot) bool {
			return s.State == "copying" && strings.HasPrefix(s.Throttle, "flag file ")
		})
		if s.RowsCopied != 0 || s.RowsEstimate <= 0 || s.Percent != 0 || s.ETA != "unknown" || s.Elapsed <= 0 || s.Backlog < 0 || s.LagMillis < 0 {
			t.Errorf("status json before the copy: %+v", s)
		}

		// The status forms and help.
		if got := r.send("status"); !strings.HasPrefix(got, "copying: copied 0/") || !strings.Contains(got, "throttled: flag file ") ||
			!strings.Contains(got, "\nchunk-size=50\n") || !strings.Contains(got, "\nmax-lag-millis=1500\n") {
			t.Errorf("status answered:\n%s", got)
		}
		if got := r.send("STATUS JSON"); !strings.HasPrefix(got, `{"state":"copying",`) || strings.Count(got, "\n") != 1 {
			t.Errorf("STATUS JSON answered %q", got)
		}
		if got := r.send("sup"); !strings.HasPrefix(got, "copying 0.0%, ETA unknown, throttled: flag file ") {
			t.Errorf("sup answered %q", got)
		}
		if got := r.send("help"); !strings.Contains(got, "chunk-size=N") || !strings.Contains(got, "pause-all") {
			t.Errorf("help answered:\n%s", got)
		}

		// pause holds the copy with the operator's reason, resume releases it.
		r.expect("pause", "OK\n")
		ctlFlag(t, flag, false)
		r.waitFor("the operator's reason alone", 5*time.Second, func(s status.Snapshot) bool { return s.Throttle == "operator throttle" })
		r.holds("nothing copied while paused", 300*time.Millisecond, func(s status.Snapshot) bool { return s.RowsCopied == 0 })
		r.expect("resume", "OK\n")
		r.waitFor("the copy to start", 10*time.Second, func(s status.Snapshot) bool { return s.RowsCopied > 0 })
		r.expect("throttle", "OK\n")
		x := r.settled("rows_copied after pause", 300*time.Millisecond, ctlCopied)
		if x%ctlChunkSize != 0 {
			t.Errorf("rows_copied = %d with chunks of %d rows", x, ctlChunkSize)
		}

		// chunk-size takes effect on the next chunk.
		r.expect("chunk-size=?", "50\n")
		r.expect("chunk-size=7", "OK\n")
		r.expect("chunk-size=?", "7\n")
		for round := 0; ; round++ {
			r.expect("no-throttle", "OK\n")
			r.waitFor("the copy to go on", 10*time.Second, func(s status.Snapshot) bool { return s.RowsCopied > x })
			r.expect("pause", "OK\n")
			y := r.settled("rows_copied after pause", 300*time.Millisecond, ctlCopied)
			if (y-x)%7 != 0 {
				t.Fatalf("after chunk-size=7 the copy went from %d to %d rows: not in chunks of 7", x, y)
			}
			// A multiple of 350 rows could also be chunks of 50: go again.
			done := (y-x)%ctlChunkSize != 0 || round == 3
			x = y
			if done {
				break
			}
		}

		// A throttle query set over the socket throttles; clearing it releases.
		r.expect("throttle-query=SELECT 1", "OK\n")
		r.expect("throttle-query=?", "SELECT 1\n")
		r.expect("resume", "OK\n")
		r.waitFor("the throttle query's reason", 5*time.Second, func(s status.Snapshot) bool { return s.Throttle == "throttle query returned 1" })
		r.holds("nothing copied while the query throttles", 300*time.Millisecond, func(s status.Snapshot) bool { return s.RowsCopied == x })
		r.expect("throttle-query=", "OK\n")
		r.waitFor("the copy to go on", 10*time.Second, func(s status.Snapshot) bool { return s.RowsCopied > x })
		r.expect("pause", "OK\n")
		x = r.settled("rows_copied after pause", 300*time.Millisecond, ctlCopied)
		s = r.status()
		if _, err := time.ParseDuration(s.ETA); err != nil || s.RowsCopied != x || s.Percent <= 0 || s.Percent >= 100 ||
			s.RowsPerSecond <= 0 || s.RowsEstimate < int64(rows)*9/10 || s.State != "copying" {
			t.Errorf("status json in the middle of the copy: %+v", s)
		}

		// pause-all also stops the applier: a write waits in the backlog,
		// not in the shadow, until resume-all.
		r.expect("pause-all", "OK\n")
		ev := r.settled("events_applied after pause-all", 500*time.Millisecond, ctlApplied)
		newRows := "SELECT count(*) FROM " + ctlShadow + " WHERE id > " + strconv.Itoa(rows)
		if e.pg {
			e.exec(fmt.Sprintf("INSERT INTO t SELECT i, 1, 'new' FROM generate_series(%d, %d) i", rows+1, rows+40))
		} else {
			e.exec(fmt.Sprintf("INSERT INTO t SELECT seq, 1, 'new' FROM seq_%d_to_%d", rows+1, rows+40))
		}
		s = r.holds("nothing applied while paused", time.Second, func(s status.Snapshot) bool {
			return s.EventsApplied == ev && s.RowsCopied == x
		})
		if s.Backlog <= 0 || !strings.Contains(s.Throttle, "operator pause-all") {
			t.Errorf("status while everything is paused: backlog %d, throttle %q; want a backlog and the pause-all reason", s.Backlog, s.Throttle)
		}
		if n := e.str(newRows); n != "0" {
			t.Errorf("%s rows written during pause-all reached the shadow", n)
		}
		r.expect("resume-all", "OK\n")
		if e.pg {
			// The snapshot copy holds the applier until the copy ends:
			// the writes wait in the backlog (checked at the end).
			r.holds("nothing applied before the snapshot copy ends", 500*time.Millisecond, func(s status.Snapshot) bool { return s.EventsApplied == ev })
		} else {
			r.waitFor("the writes to be applied", 10*time.Second, func(s status.Snapshot) bool { return s.EventsApplied >= ev+40 })
			if n := e.str(newRows); n != "40" {
				t.Errorf("%s of the 40 rows written during pause-all reached the shadow after resume-all", n)
			}
		}
		if s := r.status(); s.RowsCopied != x || !strings.Contains(s.Throttle, "operator throttle") {
			t.Errorf("resume-all ended the operator's pause too: %s", s)
		}

		// Bad input gets one error line; settings read back what was set.
		r.expectError("bogus", "unknown command")
		r.expectError("chunk-size=-1", "chunk-size")
		r.expectError("chunk-size=many", "chunk-size")
		r.expectError("chunk-size", "needs a value")
		r.expectError("chunk-time=soon", "chunk-time")
		r.expectError("max-lag-millis=-5", "max-lag-millis")
		r.expectError("max-load=Threads_running", "bad load limit")
		r.expectError("critical-load=x=y", "bad load limit")
		r.expectError("critical-load=Threads_runing=1000", "cannot read Threads_runing")
		r.expectError("max-load=Threads_running=10,No_such_variable=1", "cannot read No_such_variable")
		r.expectError("status xml", "unknown status format")
		r.expectError("pause now", "takes no argument")
		r.expectError("abort=1", "takes no value")
		r.expect("chunk-size=?", "7\n")
		r.expect("max-lag-millis=800", "OK\n")
		r.expect("max-lag-millis=?", "800\n")
		r.expect("chunk-time=?", "0s\n")
		r.expect("chunk-time=250ms", "OK\n")
		r.expect("chunk-time=?", "250ms\n")
		// Chunks take milliseconds: aiming at 250ms, the size grows (at
		// most doubling per chunk) from 7.
		x = r.copyMore(x, 100)
		if got, err := strconv.Atoi(strings.TrimSpace(r.send("chunk-size=?"))); err != nil || got <= 14 {
			t.Errorf("chunk-size=? after some chunks with chunk-time=250ms: %d (%v); want it grown from 7", got, err)
		}
		// A chunk size the operator gives is kept: it ends the adapting.
		r.expect("chunk-size=9", "OK\n")
		r.expect("chunk-time=?", "0s\n")
		x = r.copyMore(x, 50)
		r.expect("chunk-size=?", "9\n")
		r.expect("critical-load=Threads_running=100000", "OK\n")
		r.expect("critical-load=?", "Threads_running=100000\n")

		// abort: exit code 4, nothing left, the original as it was.
		origDef, origSum := e.definition("t"), e.checksum("t")
		r.expect("abort", "OK\n")
		e.assertAborted(r, r.wait(time.Minute), migration.ExitAborted, "aborted by the operator", origDef, origSum)
		if _, err := control.Send(r.sock, "status", time.Second); err == nil {
			t.Errorf("the control socket still answers after the run")
		}
	})
}

// TestPostponeCutOver: with the postpone flag file, the run copies, then
// waits at cut-over (state "postponing cut-over", ETA due) while writers
// go on and the applier keeps applying; unpostpone (mysql) or deleting the
// file (postgres) releases it, and the new table holds what a reference
// table written in the same transactions holds.
func TestPostponeCutOver(t *testing.T) {
	ctlBoth(t, func(t *testing.T, e *ctlEnv) {
		const rows = 5000
		e.createTable(rows, "ref")
		postpone := filepath.Join(t.TempDir(), "postpone")
		ctlFlag(t, postpone, true)
		w := ctlStartWriters(e, rows, 2)
		o := e.options()
		o.ChunkSize = 500
		o.PostponeCutOverFlagFile = postpone
		r := ctlStart(t, o)

		s := r.waitFor("the postponed cut-over", 30*time.Second, func(s status.Snapshot) bool { return s.State == ctlPostponing })
		if s.ETA != "due" || s.Percent != 100 || s.RowsCopied == 0 {
			t.Errorf("status while postponing: %+v; want ETA due, 100%% and rows copied", s)
		}
		if sup := r.send("sup"); !strings.HasPrefix(sup, ctlPostponing+" 100.0%, ETA due") {
			t.Errorf("sup answered %q", sup)
		}
		// It stays there, and the applier keeps the shadow current.
		before := s.EventsApplied
		s = r.holds("postponing", 2*time.Second, func(s status.Snapshot) bool { return s.State == ctlPostponing && s.ETA == "due" })
		if s.EventsApplied <= before {
			t.Errorf("events applied stayed at %d while postponing for 2s with writers going (%s)", before, w)
		}
		// Released while everything is paused, the cut-over still waits
		// for resume-all.
		r.expect("pause-all", "OK\n")
		ev := r.settled("events_applied after pause-all", 300*time.Millisecond, ctlApplied)
		if e.pg {
			ctlFlag(t, postpone, false)
		} else {
			r.expect("unpostpone", "OK\n")
		}
		r.holds("postponing while paused", time.Second, func(s status.Snapshot) bool {
			return s.State == ctlPostponing && s.EventsApplied == ev
		})
		r.expect("resume-all", "OK\n")
		res := r.wait(time.Minute)
		time.Sleep(300 * time.Millisecond) // writes to the new table too
		w.stop()
		if msg := w.failure(); msg != "" {
			t.Errorf("writers: %s", msg)
		}
		e.assertDone(res)
		if res.res.EventsApplied == 0 {
			t.Errorf("Result.EventsApplied = 0 with writers going")
		}
		t.Logf("writes: %s; events applied: %d", w, res.res.EventsApplied)
		if got, want := e.checksum("t"), e.checksum("ref"); got != want {
			t.Errorf("checksum of t = %s, of ref = %s: the new table lost or changed rows", got, want)
		}
		e.assertNothingLeft("_t_old", "ref", "t")
	})
}

// ctlWriters insert, update and delete rows of t and ref in the same
// transactions.
type ctlWriters struct {
	e      *ctlEnv
	db     *sql.DB
	nextID atomic.Int64
	ops    [3]atomic.Int64 // insert, update, delete
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	errs []string
}

func ctlStartWriters(e *ctlEnv, maxID int64, n int) *ctlWriters {
	e.t.Helper()
	w := &ctlWriters{e: e, db: e.db}
	if e.pg {
		// Simple protocol: no statement prepared against the table before
		// the swap is used after it.
		db, err := sql.Open("pgx", e.pgs.DSN(e.name)+"&default_query_exec_mode=simple_protocol")
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { db.Close() })
		w.db = db
	}
	w.nextID.Store(maxID)
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	for i := range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.loop(ctx, rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))))
		}()
	}
	e.t.Cleanup(w.stop)
	return w
}

func (w *ctlWriters) stop() {
	w.cancel()
	w.wg.Wait()
}

func (w *ctlWriters) String() string {
	return fmt.Sprintf("insert=%d update=%d delete=%d", w.ops[0].Load(), w.ops[1].Load(), w.ops[2].Load())
}

func (w *ctlWriters) failure() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.errs, "; ")
}

func (w *ctlWriters) loop(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		op := rng.IntN(3)
		for attempt := 0; ; attempt++ {
			err := w.apply(ctx, rng, op)
			if err != nil && ctx.Err() != nil {
				return
			}
			if err != nil && ctlRetryable(err) && attempt < 20 {
				continue
			}
			if err != nil {
				w.mu.Lock()
				w.errs = append(w.errs, err.Error())
				w.mu.Unlock()
				return
			}
			w.ops[op].Add(1)
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (w *ctlWriters) apply(ctx context.Context, rng *rand.Rand, op int) error {
	var query string
	var args []any
	id := 1 + rng.Int64N(w.nextID.Load())
	switch op {
	case 0:
		query = "INSERT INTO %s (id, v, s) VALUES (?, ?, ?)"
		args = []any{w.nextID.Add(1), rng.IntN(1000), fmt.Sprintf("ins-%d", rng.IntN(1e6))}
	case 1:
		query = "UPDATE %s SET v = ?, s = ? WHERE id = ?"
		args = []any{rng.IntN(1000), fmt.Sprintf("upd-%d", rng.IntN(1e6)), id}
	default:
		query = "DELETE FROM %s WHERE id = ?"
		args = []any{id}
	}
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n [2]int64
	for i, table := range []string{"t", "ref"} {
		res, err := tx.ExecContext(ctx, w.e.bind(fmt.Sprintf(query, table)), args...)
		if err != nil {
			return err
		}
		if n[i], err = res.RowsAffected(); err != nil {
			return err
		}
	}
	if n[0] != n[1] {
		return fmt.Errorf("%s %v changed %d rows of t, %d of ref", fmt.Sprintf(query, "t"), args, n[0], n[1])
	}
	return tx.Commit()
}

// ctlRetryable: deadlock, lock wait timeout, serialization failure.
func ctlRetryable(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number == 1213 || me.Number == 1205 || me.Number == 1412
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40P01" || pe.Code == "40001"
	}
	return false
}
