// Package faults holds osc's fault and bad-input integration tests: every
// way a run can be refused, fail or be killed must leave the original table
// exactly as it was, writable, and nothing of osc's behind (or say clearly
// what it left and how to clean it up).
//
// The tests run against the shared MariaDB primary+replica of the harness.
// Other packages use the same primary concurrently, so these tests only
// change global settings on the replica, and only work in their own
// databases.
package faults

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// TestMain is harness.Main plus removing the osc binary built for the CLI
// tests (harness.Main exits the process, so nothing could run after it).
func TestMain(m *testing.M) {
	code := m.Run()
	if oscBin.dir != "" {
		os.RemoveAll(oscBin.dir)
	}
	if err := harness.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
	}
	os.Exit(code)
}

// env is one test's database on the shared primary.
type env struct {
	my     *harness.MySQL
	schema string
	db     *sql.DB
}

func newEnv(t *testing.T) *env {
	t.Helper()
	my := harness.MariaDB(t)
	name, db := my.NewDatabase(t)
	return &env{my: my, schema: name, db: db}
}

func (e *env) exec(t *testing.T, stmts ...string) {
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

func (e *env) count(t *testing.T, table string) int64 {
	t.Helper()
	var n int64
	if err := e.db.QueryRow("SELECT COUNT(*) FROM " + harness.QuoteIdent(table)).Scan(&n); err != nil {
		t.Fatalf("counting rows of %s: %v", table, err)
	}
	return n
}

func (e *env) exists(t *testing.T, table string) bool {
	t.Helper()
	var n int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", e.schema, table).Scan(&n); err != nil {
		t.Fatalf("looking up %s: %v", table, err)
	}
	return n > 0
}

// options are migration.Options for table in this env, logging to an
// observer that the test can inspect (and that is dumped if the test fails).
func (e *env) options(t *testing.T, table, alter string) (migration.Options, *observer.ObservedLogs) {
	t.Helper()
	log, logs := observedLogger(t)
	return migration.Options{
		Host: e.my.Host, Port: e.my.Port, User: e.my.User, Password: e.my.Password,
		Database: e.schema, Table: table, Alter: alter,
		Logger: log,
	}, logs
}

// observedLogger records osc's logs in memory. It never writes to t after
// the test ends (a background goroutine of osc may still log), and prints
// what it recorded if the test failed.
func observedLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		var b strings.Builder
		for _, en := range logs.All() {
			fmt.Fprintf(&b, "%s %s %s", en.Time.Format("15:04:05.000"), en.Level.CapitalString(), en.Message)
			for k, v := range en.ContextMap() {
				if k == "shadow_definition" || k == "columns" {
					continue
				}
				fmt.Fprintf(&b, " %s=%v", k, v)
			}
			b.WriteByte('\n')
		}
		t.Logf("osc logs:\n%s", b.String())
	})
	return zap.New(core), logs
}

// run runs osc in-process and checks the exit code and that the error
// says what it should.
func run(t *testing.T, o migration.Options, wantCode int, wantPhrases ...string) (*migration.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := migration.Run(ctx, o)
	checkOutcome(t, res, err, wantCode, wantPhrases...)
	return res, err
}

func checkOutcome(t *testing.T, res *migration.Result, err error, wantCode int, wantPhrases ...string) {
	t.Helper()
	if res == nil {
		t.Fatalf("Run returned a nil Result (err %v)", err)
	}
	code := migration.ExitCode(err)
	if code != wantCode || res.ExitCode != code {
		t.Fatalf("exit code %d (Result.ExitCode %d), want %d; error: %v", code, res.ExitCode, wantCode, err)
	}
	if err == nil {
		if len(wantPhrases) > 0 {
			t.Fatalf("Run succeeded, want an error mentioning %q", wantPhrases)
		}
		return
	}
	if res.Error != err.Error() {
		t.Errorf("Result.Error %q differs from the returned error %q", res.Error, err.Error())
	}
	msg := strings.ToLower(err.Error())
	for _, p := range wantPhrases {
		if !strings.Contains(msg, strings.ToLower(p)) {
			t.Errorf("error does not mention %q:\n%v", p, err)
		}
	}
	t.Logf("exit %d: %v", code, err)
}

// tableState is what must not change when osc refuses or fails.
type tableState struct {
	create   string
	checksum string
}

func (e *env) state(t *testing.T, table string) tableState {
	t.Helper()
	var s tableState
	if err := e.db.QueryRow("SHOW CREATE TABLE "+harness.QuoteIdent(table)).Scan(new(string), &s.create); err != nil {
		t.Fatalf("SHOW CREATE TABLE %s: %v", table, err)
	}
	cols := harness.Columns(t, e.db, table)
	s.checksum = harness.Checksum(t, e.db, table, cols, nil)
	return s
}

var autoIncRe = regexp.MustCompile(` AUTO_INCREMENT=\d+`)

// stripAutoIncrement removes the table option AUTO_INCREMENT=N from a
// definition: the counter moves with every insert.
func stripAutoIncrement(def string) string { return autoIncRe.ReplaceAllString(def, "") }

// helperTables are the names osc derives from a table name: shadow,
// changelog, old table, and the cut-over sentry (which is also the name
// the original passes through during the swap).
func helperTables(table string) []string {
	return []string{"_" + table + "_new", "_" + table + "_osc", "_" + table + "_old", table + "_osc_swap"}
}

// assertUntouched checks that table has the same definition and data as
// before, that it is writable (insert runs an INSERT into it, after the
// comparison), and that none of osc's helper tables exist except those
// listed in keep (put there by the test).
func (e *env) assertUntouched(t *testing.T, table string, before tableState, insert string, keep ...string) {
	t.Helper()
	after := e.state(t, table)
	if after.create != before.create {
		t.Errorf("definition of %s changed:\nbefore: %s\nafter:  %s", table, before.create, after.create)
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
	e.assertNoHelpers(t, table, keep...)
}

func (e *env) assertNoHelpers(t *testing.T, table string, keep ...string) {
	t.Helper()
	for _, h := range helperTables(table) {
		kept := false
		for _, k := range keep {
			kept = kept || k == h
		}
		if got := e.exists(t, h); got != kept {
			if kept {
				t.Errorf("%s was dropped, but it was not osc's to drop", h)
			} else {
				t.Errorf("%s was left behind", h)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// The osc binary, built once per test process.

var oscBin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// repoRoot is the module root, from this file's location (or the working
// directory when built with -trimpath).
func repoRoot(t *testing.T) string {
	t.Helper()
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, d := range starts {
		for ; ; d = filepath.Dir(d) {
			if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/osc-dev/osc\n")) {
				return d
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	t.Fatalf("cannot find the osc module root from %v", starts)
	return ""
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	for _, p := range []string{filepath.Join(os.Getenv("GOROOT"), "bin", "go"), "/usr/local/go/bin/go"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return "go"
}

// oscBinary builds ./cmd/osc once per test process.
func oscBinary(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	oscBin.once.Do(func() {
		oscBin.dir, oscBin.err = os.MkdirTemp("", "osc-faults-bin-")
		if oscBin.err != nil {
			return
		}
		path := filepath.Join(oscBin.dir, "osc")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool(), "build", "-o", path, "./cmd/osc")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			oscBin.err = fmt.Errorf("go build ./cmd/osc: %v\n%s", err, out)
			return
		}
		oscBin.path = path
	})
	if oscBin.err != nil {
		t.Fatal(oscBin.err)
	}
	return oscBin.path
}

// cliResult is one finished run of the binary.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs the osc binary with args and extra environment variables.
func runCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	bin := oscBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("running osc %q: %v\nstderr:\n%s", args, err, r.stderr)
	}
	return r
}

// cliArgs are the connection arguments for this env, without a password.
func (e *env) cliArgs(table, alter string, extra ...string) []string {
	args := []string{"--host", e.my.Host, "--port", fmt.Sprint(e.my.Port), "--user", e.my.User,
		"--database", e.schema, "--table", table, "--alter", alter}
	return append(args, extra...)
}

// waitFor polls cond every interval until it is true or timeout passes.
func waitFor(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
