// Package harness gives integration tests throwaway database servers, all on
// loopback: a MariaDB primary with a replica attached by GTID (MariaDB), and a
// PostgreSQL primary (wal_level=logical) with a hot standby streaming from it
// (Postgres, in postgres.go).
//
// The servers come from localtests/servers.sh. localtests/test.sh starts one
// set for the whole suite and exports OSC_TEST_MYSQL_* and OSC_TEST_PG_*; when
// those are not set (e.g. `go test ./mysqldb/` by hand), the first call to
// MariaDB or Postgres in a test binary starts a private set (both databases)
// in a temp dir, once per test binary, and Main stops it when the tests are
// done. A watchdog started by servers.sh stops them as well if the test binary
// dies without running Main (panic, timeout, kill).
//
// Typical use:
//
//	func TestMain(m *testing.M) { harness.Main(m) }
//
//	func TestX(t *testing.T) {
//		my := harness.MariaDB(t)
//		name, db := my.NewDatabase(t)
//		...
//		my.WaitReplica(t)
//	}
package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/osc-dev/osc/alter"
)

// Environment variables read by MariaDB (written by servers.sh into DIR/env).
const (
	EnvHost          = "OSC_TEST_MYSQL_HOST"
	EnvPort          = "OSC_TEST_MYSQL_PORT"
	EnvReplicaPort   = "OSC_TEST_MYSQL_REPLICA_PORT"
	EnvUser          = "OSC_TEST_MYSQL_USER"
	EnvPassword      = "OSC_TEST_MYSQL_PASSWORD"
	EnvSocket        = "OSC_TEST_MYSQL_SOCKET"
	EnvReplicaSocket = "OSC_TEST_MYSQL_REPLICA_SOCKET"
	// EnvServersScript overrides where servers.sh is looked for.
	EnvServersScript = "OSC_SERVERS_SH"
	// EnvKeepDatabases, when set to a non-empty value, keeps the databases
	// made by NewDatabase instead of dropping them (for debugging).
	EnvKeepDatabases = "OSC_TEST_KEEP_DB"
)

// ReplicaTimeout is how long WaitReplica waits for the replica to catch up.
var ReplicaTimeout = 60 * time.Second

// MySQL describes a running MariaDB primary+replica for tests.
type MySQL struct {
	Host           string
	Port           int
	ReplicaPort    int
	User, Password string
	Socket         string // primary's unix socket (may be empty for external servers)
	ReplicaSocket  string // replica's unix socket (may be empty)
	Dir            string // servers.sh directory, when this process started the servers

	pools *pools
}

// pools are the harness's own connections to a primary and its replica
// (PostgreSQL: standby), for NewDatabase and the waits.
type pools struct {
	mu      sync.Mutex
	primary *sql.DB
	replica *sql.DB
}

// get returns the primary's or the replica's pool, opened with driver and
// the DSN from dsn the first time.
func (p *pools) get(replica bool, driver string, dsn func() (string, error)) (*sql.DB, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	slot := &p.primary
	if replica {
		slot = &p.replica
	}
	if *slot == nil {
		d, err := dsn()
		if err != nil {
			return nil, err
		}
		db, err := sql.Open(driver, d)
		if err != nil {
			return nil, err
		}
		db.SetMaxIdleConns(2)
		db.SetConnMaxIdleTime(time.Minute)
		*slot = db
	}
	return *slot, nil
}

var (
	// sharedMu guards everything below.
	sharedMu sync.Mutex

	// The servers this process started with servers.sh (once per binary, for
	// both databases); startedBy is "" if none.
	startedBy   string
	startedVars map[string]string // startedBy's DIR/env
	startErr    error             // why starting them failed (not retried)

	sharedMy lazy[*MySQL]
	sharedPG lazy[*PG]
)

// lazy is one database's servers, found or started on first use.
type lazy[S any] struct {
	s     S
	err   error
	done  bool
	shown bool // the whole error was printed once
}

// get returns the servers, setting them up on first use; sharedMu must be
// held. It calls tb.Fatal (never Skip) when they are unavailable.
func (l *lazy[S]) get(tb testing.TB, name string, setup func() (S, error)) S {
	tb.Helper()
	if !l.done {
		l.s, l.err = setup()
		l.done = true
	}
	if l.err != nil {
		if l.shown {
			tb.Fatalf("harness: %s test servers unavailable (details in the first failing test): %v", name, firstLine(l.err))
		}
		l.shown = true
		tb.Fatalf("harness: %s test servers unavailable: %v", name, l.err)
	}
	return l.s
}

// found is a server set found from the environment or started here.
type found interface {
	ping(time.Duration) error
}

// setupServers finds one database's servers: from the environment when
// portKey is set there, else from the servers this process starts.
func setupServers[S found](name, portKey string, fromEnv func(func(string) string) (S, error), setDir func(S, string)) (S, error) {
	var zero S
	if os.Getenv(portKey) != "" {
		s, err := fromEnv(os.Getenv)
		if err != nil {
			return zero, err
		}
		if err := s.ping(30 * time.Second); err != nil {
			return zero, fmt.Errorf("%s=%s is set but the server is not reachable: %v", portKey, os.Getenv(portKey), err)
		}
		return s, nil
	}
	dir, vars, err := startServers()
	if err != nil {
		return zero, err
	}
	if vars[portKey] == "" {
		return zero, fmt.Errorf("%s/env has no %s: servers.sh started no %s", dir, portKey, name)
	}
	s, err := fromEnv(func(k string) string { return vars[k] })
	if err != nil {
		return zero, fmt.Errorf("%s/env: %v", dir, err)
	}
	setDir(s, dir)
	if err := s.ping(30 * time.Second); err != nil {
		return zero, fmt.Errorf("servers started in %s but %s is not reachable: %v", dir, name, err)
	}
	return s, nil
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// MariaDB returns the shared test servers. If OSC_TEST_MYSQL_PORT is set it
// uses those (test.sh starts servers once for the whole suite); otherwise it
// starts its own via servers.sh into a temp dir, once per test binary, and
// stops them at process exit via Main. It calls tb.Fatal (never Skip) when
// servers cannot start.
func MariaDB(tb testing.TB) *MySQL {
	tb.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	return sharedMy.get(tb, "MariaDB", func() (*MySQL, error) {
		return setupServers("MariaDB", EnvPort, fromEnv, func(s *MySQL, dir string) { s.Dir = dir })
	})
}

// Main is for TestMain: runs m and stops any servers this process started.
func Main(m *testing.M) {
	code := m.Run()
	if err := Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
	}
	os.Exit(code)
}

// Stop stops the servers this process started, if any. Main calls it.
func Stop() error {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedMy.s != nil && sharedMy.s.pools != nil {
		sharedMy.s.pools.close()
	}
	if sharedPG.s != nil && sharedPG.s.pools != nil {
		sharedPG.s.pools.close()
	}
	dir := startedBy
	startedBy, startedVars, startErr = "", nil, nil
	sharedMy, sharedPG = lazy[*MySQL]{}, lazy[*PG]{}
	if dir == "" {
		return nil
	}
	out, err := runScript(2*time.Minute, nil, "stop", dir)
	if err != nil {
		return fmt.Errorf("servers.sh stop %s: %v\n%s", dir, err, out)
	}
	return nil
}

// startServers starts this process's servers (MariaDB and PostgreSQL) with
// servers.sh, the first time it is called, and returns their directory and
// DIR/env. A failure is remembered: later calls return the same error.
// sharedMu must be held.
func startServers() (dir string, vars map[string]string, err error) {
	if startedVars != nil || startErr != nil {
		return startedBy, startedVars, startErr
	}
	defer func() {
		if err != nil {
			startErr = err
		}
	}()

	if out, err := runScript(10*time.Minute, nil, "install"); err != nil {
		return "", nil, fmt.Errorf("servers.sh install: %v\n%s", err, out)
	}
	dir, err = os.MkdirTemp("", "osc-test-")
	if err != nil {
		return "", nil, err
	}
	env := []string{"OSC_SERVERS_WATCH_PID=" + strconv.Itoa(os.Getpid())}
	began := time.Now()
	out, err := runScript(5*time.Minute, env, "start", dir)
	if took := time.Since(began); err == nil && took > 15*time.Second {
		fmt.Fprintf(os.Stderr, "harness: starting the test servers took %v:\n%s", took.Round(time.Millisecond), out)
	}
	if err != nil {
		// start stops what it started when it fails, but not when it is
		// killed (timeout): stop, before the directory and its pids go.
		if _, serr := os.Stat(filepath.Join(dir, ".osc-test-servers")); serr == nil {
			if stopOut, stopErr := runScript(2*time.Minute, nil, "stop", dir); stopErr != nil {
				out += fmt.Sprintf("\nservers.sh stop %s: %v\n%s", dir, stopErr, stopOut)
			}
		}
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("servers.sh start %s: %v\n%s", dir, err, out)
	}
	startedBy = dir
	vars, err = readEnvFile(filepath.Join(dir, "env"))
	if err != nil {
		return "", nil, err
	}
	startedVars = vars
	return dir, vars, nil
}

func fromEnv(get func(string) string) (*MySQL, error) {
	s := &MySQL{
		Host:          get(EnvHost),
		User:          get(EnvUser),
		Password:      get(EnvPassword),
		Socket:        get(EnvSocket),
		ReplicaSocket: get(EnvReplicaSocket),
		pools:         &pools{},
	}
	defaultLogin(&s.Host, &s.User, &s.Password)
	var err error
	if s.Port, err = envPort(get, EnvPort, true); err != nil {
		return nil, err
	}
	if s.ReplicaPort, err = envPort(get, EnvReplicaPort, false); err != nil {
		return nil, err
	}
	return s, nil
}

// defaultLogin fills in the test servers' address and login (osc/osc).
func defaultLogin(host, user, password *string) {
	if *host == "" {
		*host = "127.0.0.1"
	}
	if *user == "" {
		*user = "osc"
		if *password == "" {
			*password = "osc"
		}
	}
}

// envPort reads a port variable; an optional one may be unset (0).
func envPort(get func(string) string, key string, required bool) (int, error) {
	v := get(key)
	if v == "" && !required {
		return 0, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("bad %s: %v", key, err)
	}
	return p, nil
}

func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: bad line %q", path, line)
		}
		vars[k] = v
	}
	return vars, sc.Err()
}

// ServersScript returns the path of localtests/servers.sh.
func ServersScript() (string, error) {
	var candidates []string
	if p := os.Getenv(EnvServersScript); p != "" {
		candidates = append(candidates, p)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		candidates = append(candidates, filepath.Join(filepath.Dir(file), "..", "servers.sh"))
	}
	// With -trimpath the source path is not absolute: walk up from the
	// working directory (a package directory inside the module) instead.
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			candidates = append(candidates, filepath.Join(d, "localtests", "servers.sh"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return filepath.Clean(c), nil
		}
	}
	return "", fmt.Errorf("localtests/servers.sh not found (tried %s); set %s", strings.Join(candidates, ", "), EnvServersScript)
}

func runScript(timeout time.Duration, env []string, args ...string) (string, error) {
	script, err := ServersScript()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// The servers redirect their output away from ours; this is a safety net
	// so a stray inherited pipe can never hang us.
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	return out.String(), err
}

// DSN returns a go-sql-driver DSN for the primary over TCP, with
// parseTime=false, multiStatements=false, interpolateParams=true.
func (s *MySQL) DSN(database string) string {
	return s.dsn(s.Port, database)
}

// ReplicaDSN is DSN for the replica.
func (s *MySQL) ReplicaDSN(database string) string {
	return s.dsn(s.ReplicaPort, database)
}

// Config returns the driver config behind DSN, for tests that need to tweak it.

func (s *MySQL) config(port int, database string) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User = s.User
	cfg.Passwd = s.Password
	cfg.Net = "tcp"
	cfg.Addr = net.JoinHostPort(s.Host, strconv.Itoa(port))
	cfg.DBName = database
	cfg.ParseTime = false
	cfg.MultiStatements = false
	cfg.InterpolateParams = true
	cfg.Timeout = 10 * time.Second
	return cfg
}

func (s *MySQL) dsn(port int, database string) string {
	return s.config(port, database).FormatDSN()
}

// Open opens the primary (database may be ""), pings it, and closes it at tb.Cleanup.
func (s *MySQL) Open(tb testing.TB, database string) *sql.DB {
	tb.Helper()
	return openDSN(tb, s.DSN(database))
}

// OpenReplica opens the replica (database may be ""), closed at tb.Cleanup.
func (s *MySQL) OpenReplica(tb testing.TB, database string) *sql.DB {
	tb.Helper()
	return openDSN(tb, s.ReplicaDSN(database))
}

func openDSN(tb testing.TB, dsn string) *sql.DB {
	tb.Helper()
	return openDriver(tb, "mysql", dsn, redact(dsn))
}

// openDriver opens and pings a database/sql handle, closed at tb.Cleanup;
// where names the server in error messages (never the password).
func openDriver(tb testing.TB, driver, dsn, where string) *sql.DB {
	tb.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		tb.Fatalf("harness: open %s: %v", where, err)
	}
	tb.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		tb.Fatalf("harness: ping %s: %v", where, err)
	}
	return db
}

func redact(dsn string) string {
	if cfg, err := mysql.ParseDSN(dsn); err == nil {
		return cfg.Addr + "/" + cfg.DBName
	}
	return "(dsn)"
}

func (s *MySQL) ping(timeout time.Duration) error {
	db, err := s.pool(false)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = db.PingContext(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pool is one of the harness's pools to this server set.
func (s *MySQL) pool(replica bool) (*sql.DB, error) {
	return s.pools.get(replica, "mysql", func() (string, error) {
		port := s.Port
		if replica {
			if port = s.ReplicaPort; port == 0 {
				return "", fmt.Errorf("no replica configured (%s not set)", EnvReplicaPort)
			}
		}
		return s.dsn(port, ""), nil
	})
}

func (p *pools) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, db := range []*sql.DB{p.primary, p.replica} {
		if db != nil {
			db.Close()
		}
	}
	p.primary, p.replica = nil, nil
}

func (s *MySQL) admin(tb testing.TB, replica bool) *sql.DB {
	tb.Helper()
	if s.pools == nil {
		s.pools = &pools{}
	}
	db, err := s.pool(replica)
	if err != nil {
		tb.Fatalf("harness: %v", err)
	}
	return db
}

var dbSeq atomic.Int64

// DatabaseName derives a unique database name from a test name: "t_", the
// test name with every run of other characters than [A-Za-z0-9] made one
// "_", and a random suffix; at most 63 bytes, which fits both MySQL (64) and
// PostgreSQL (63).
func DatabaseName(testName string) string {
	var b strings.Builder
	lastUnderscore := false
	for _, r := range testName {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !ok {
			if !lastUnderscore {
				b.WriteByte('_')
			}
			lastUnderscore = true
			continue
		}
		b.WriteRune(r)
		lastUnderscore = false
	}
	base := strings.Trim(b.String(), "_")
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	suffix := fmt.Sprintf("_%s%d", hex.EncodeToString(rnd[:]), dbSeq.Add(1))
	const prefix = "t_"
	if room := 63 - len(prefix) - len(suffix); len(base) > room {
		base = base[:room]
	}
	return prefix + base + suffix
}

// NewDatabase creates a fresh uniquely-named database (name derived from
// tb.Name(), sanitized, <=64 chars) on the primary, drops it at tb.Cleanup,
// and returns its name and a *sql.DB for it.
func (s *MySQL) NewDatabase(tb testing.TB) (string, *sql.DB) {
	tb.Helper()
	admin := s.admin(tb, false)
	name := DatabaseName(tb.Name())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+QuoteIdent(name)); err != nil {
		tb.Fatalf("harness: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if os.Getenv(EnvKeepDatabases) != "" {
			tb.Logf("harness: keeping database %s (%s is set)", name, EnvKeepDatabases)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+QuoteIdent(name)); err != nil {
			tb.Logf("harness: drop database %s: %v", name, err)
		}
	})
	// Registered after the drop, so it is closed before the drop runs.
	db := s.Open(tb, name)
	return name, db
}

// WaitReplica waits until the replica has applied everything the primary has
// written so far (gtid_binlog_pos on the primary vs gtid_slave_pos on the
// replica) and fails tb after ReplicaTimeout.
func (s *MySQL) WaitReplica(tb testing.TB) {
	tb.Helper()
	if err := s.waitReplica(ReplicaTimeout); err != nil {
		tb.Fatalf("harness: WaitReplica: %v", err)
	}
}

// WaitReplicaTimeout is WaitReplica returning an error instead of failing a
// test, for tests that expect the replica to lag.
func (s *MySQL) WaitReplicaTimeout(timeout time.Duration) error {
	return s.waitReplica(timeout)
}

func (s *MySQL) waitReplica(timeout time.Duration) error {
	if s.pools == nil {
		s.pools = &pools{}
	}
	primary, err := s.pool(false)
	if err != nil {
		return err
	}
	replica, err := s.pool(true)
	if err != nil {
		return err
	}
	// Queries get their own (generous) timeout so that a short wait on a
	// loaded machine reports the replica's state rather than a query timeout.
	query := func(db *sql.DB, q string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var v string
		err := db.QueryRowContext(ctx, q).Scan(&v)
		return v, err
	}
	deadline := time.Now().Add(timeout)
	target, err := query(primary, "SELECT @@GLOBAL.gtid_binlog_pos")
	if err != nil {
		return fmt.Errorf("primary gtid_binlog_pos: %v", err)
	}
	want, err := parseGTIDPos(target)
	if err != nil {
		return err
	}
	for delay := time.Millisecond; ; delay = min(delay*2, 50*time.Millisecond) {
		got, err := query(replica, "SELECT @@GLOBAL.gtid_slave_pos")
		if err != nil {
			return fmt.Errorf("replica gtid_slave_pos (primary at %q): %v", target, err)
		}
		have, err := parseGTIDPos(got)
		if err != nil {
			return err
		}
		if gtidReached(have, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replica did not catch up within %v: primary at %q, replica at %q; %s",
				timeout, target, got, s.replicaState())
		}
		time.Sleep(delay)
	}
}

// replicaState summarizes SHOW SLAVE STATUS for error messages.
func (s *MySQL) replicaState() string {
	st, err := s.slaveStatus()
	if err != nil {
		return "SHOW SLAVE STATUS: " + err.Error()
	}
	if st == nil {
		return "replica has no replication configured"
	}
	var parts []string
	for _, k := range []string{"Slave_IO_Running", "Slave_SQL_Running", "Last_IO_Error", "Last_SQL_Error", "Seconds_Behind_Master"} {
		parts = append(parts, k+"="+st[k])
	}
	return strings.Join(parts, " ")
}

// SlaveStatus returns the replica's SHOW SLAVE STATUS as column -> value
// (nil if replication is not configured).
func (s *MySQL) SlaveStatus(tb testing.TB) map[string]string {
	tb.Helper()
	st, err := s.slaveStatus()
	if err != nil {
		tb.Fatalf("harness: SHOW SLAVE STATUS: %v", err)
	}
	return st
}

func (s *MySQL) slaveStatus() (map[string]string, error) {
	if s.pools == nil {
		s.pools = &pools{}
	}
	db, err := s.pool(true)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	if !rows.Next() {
		return nil, rows.Err()
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, err
	}
	st := make(map[string]string, len(cols))
	for i, c := range cols {
		st[c] = vals[i].String
	}
	return st, rows.Err()
}

// parseGTIDPos parses a MariaDB GTID position ("0-1-10,1-1-5") into
// domain -> seq_no.
func parseGTIDPos(pos string) (map[uint32]uint64, error) {
	m := map[uint32]uint64{}
	for _, g := range strings.Split(pos, ",") {
		g = strings.TrimSpace(g)
		if g == "" {
			continue
		}
		f := strings.Split(g, "-")
		if len(f) != 3 {
			return nil, fmt.Errorf("bad GTID %q in %q", g, pos)
		}
		d, err1 := strconv.ParseUint(f[0], 10, 32)
		n, err2 := strconv.ParseUint(f[2], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("bad GTID %q in %q: %v", g, pos, err)
		}
		m[uint32(d)] = n
	}
	return m, nil
}

func gtidReached(have, want map[uint32]uint64) bool {
	for d, n := range want {
		if have[d] < n {
			return false
		}
	}
	return true
}

// QuoteIdent backtick-quotes a MySQL identifier.
func QuoteIdent(name string) string { return alter.QuoteIdent(name, alter.MySQL) }

// quoteTable quotes "table" or "schema.table".
func quoteTable(table string) string {
	if schema, name, ok := strings.Cut(table, "."); ok {
		return QuoteIdent(schema) + "." + QuoteIdent(name)
	}
	return QuoteIdent(table)
}

// ChecksumQuery returns the SQL that Checksum runs: one SHA-256 per row over
// the hex bytes of each column (NULL distinct from every value), ordered by key.
func ChecksumQuery(table string, columns []string, key []string) string {
	parts := make([]string, len(columns))
	for i, c := range columns {
		q := QuoteIdent(c)
		// CONCAT(x) keeps a string's own charset/bytes (so HEX shows charset
		// and binary differences) and renders numbers/temporals as text
		// (HEX of a number alone would truncate it to an integer).
		parts[i] = fmt.Sprintf("IF(%s IS NULL, 'N', CONCAT('V', HEX(CONCAT(%s))))", q, q)
	}
	if len(key) == 0 {
		key = columns
	}
	order := make([]string, len(key))
	for i, k := range key {
		order[i] = QuoteIdent(k)
	}
	return fmt.Sprintf("SELECT SHA2(CONCAT_WS(',', %s), 256) FROM %s ORDER BY %s",
		strings.Join(parts, ", "), quoteTable(table), strings.Join(order, ", "))
}

// Checksum returns a deterministic full-table checksum of table (optionally
// "schema.table") over the given columns, ordered by the given key columns
// (all columns if key is empty), so two tables can be compared exactly,
// including NULLs, binary bytes and charsets. The result is "ROWS:SHA256".
func Checksum(tb testing.TB, db *sql.DB, table string, columns []string, key []string) string {
	tb.Helper()
	if len(columns) == 0 {
		tb.Fatalf("harness: Checksum(%s): no columns", table)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rows, err := db.QueryContext(ctx, ChecksumQuery(table, columns, key))
	if err != nil {
		tb.Fatalf("harness: Checksum(%s): %v", table, err)
	}
	defer rows.Close()
	h := sha256.New()
	n := 0
	var row []byte
	for rows.Next() {
		if err := rows.Scan(&row); err != nil {
			tb.Fatalf("harness: Checksum(%s): %v", table, err)
		}
		h.Write(row)
		h.Write([]byte{'\n'})
		n++
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("harness: Checksum(%s): %v", table, err)
	}
	return fmt.Sprintf("%d:%x", n, h.Sum(nil))
}

// Strings runs a query of one column and returns its values as text (NULL
// as "NULL"), failing tb on any error.
func Strings(tb testing.TB, db *sql.DB, query string, args ...any) []string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		tb.Fatalf("harness: %s: %v", query, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s sql.NullString
		if err := rows.Scan(&s); err != nil {
			tb.Fatalf("harness: %s: %v", query, err)
		}
		if !s.Valid {
			s.String = "NULL"
		}
		out = append(out, s.String)
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("harness: %s: %v", query, err)
	}
	return out
}

// Columns returns the column names of table (optionally "schema.table"; else
// in the connection's current database) in ordinal order.
func Columns(tb testing.TB, db *sql.DB, table string) []string {
	tb.Helper()
	schemaExpr, name := "DATABASE()", table
	var args []any
	if s, n, ok := strings.Cut(table, "."); ok {
		schemaExpr, name = "?", n
		args = append(args, s)
	}
	args = append(args, name)
	cols := Strings(tb, db, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "+
		schemaExpr+" AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION", args...)
	if len(cols) == 0 {
		tb.Fatalf("harness: Columns(%s): table not found or has no columns", table)
	}
	return cols
}
