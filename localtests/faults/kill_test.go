package faults

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// kill -9 mid-copy: the original table is untouched and writable, osc's
// helper tables are left behind (nothing can clean up after SIGKILL), a
// rerun refuses until told to drop them, and with the flag it applies the
// change with every row intact. The dead process's binlog dump connection
// must not get in the way.

const killRows = 60000

func TestKillMidCopy(t *testing.T) {
	bin := oscBinary(t)
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (
		id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
		name VARCHAR(64) NOT NULL,
		n BIGINT NOT NULL,
		note TEXT NULL,
		created DATETIME NOT NULL
	) ENGINE=InnoDB`,
		fmt.Sprintf(`INSERT INTO t (id, name, n, note, created)
		SELECT seq, CONCAT('name-', seq), seq * 7919, IF(seq %% 5 = 0, NULL, REPEAT('note', seq %% 20)),
			'2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_%d`, killRows))
	origCols := harness.Columns(t, e.db, "t")
	before := e.state(t, "t")
	alter := "ADD COLUMN added VARCHAR(20) NOT NULL DEFAULT 'new', ADD KEY k_n (n)"
	pwEnv := []string{"OSC_PASSWORD=" + e.my.Password}

	p := startCLI(t, bin, pwEnv, e.cliArgs("t", alter, "--execute", "--chunk-size", "100")...)
	shadowRows := func() int64 {
		var n int64
		if err := e.db.QueryRow("SELECT COUNT(*) FROM _t_new").Scan(&n); err != nil {
			return -1
		}
		return n
	}
	if !p.waitFor(60*time.Second, 2*time.Millisecond, func() bool { return shadowRows() >= 2000 }) {
		t.Fatalf("osc did not start copying within 60s (shadow rows %d); output:\n%s", shadowRows(), p.output.String())
	}
	// Its connections, to follow them on the server after the kill.
	conns := serverConnections(t, e, localPorts(t, p.cmd.Process.Pid))
	if !hasCommand(conns, "Binlog Dump") {
		t.Fatalf("no Binlog Dump connection of osc found among %v", conns)
	}
	p.kill9(t)
	copied := shadowRows()
	t.Logf("killed osc with %d of %d rows copied; it had %d server connections", copied, killRows, len(conns))
	if copied < 2000 || copied >= killRows {
		t.Errorf("killed with %d rows in the shadow: not mid-copy", copied)
	}

	// The original is untouched and writable; the helpers stay behind.
	e.assertUntouched(t, "t", before, "", "_t_new", "_t_osc")
	e.exec(t, "INSERT INTO t (id, name, n, created) VALUES (1000000, 'probe', 0, NOW())", "DELETE FROM t WHERE id = 1000000")

	// The dead process's connections go away, the binlog dump included, once
	// the server notices (a write to the binlog makes the dump thread send).
	waitGone(t, e, conns)
	st := e.my.SlaveStatus(t)
	if st["Slave_IO_Running"] != "Yes" || st["Slave_SQL_Running"] != "Yes" {
		t.Errorf("replication broke: IO %s, SQL %s, %s %s", st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_IO_Error"], st["Last_SQL_Error"])
	}
	e.my.WaitReplica(t)

	// A plain rerun refuses and names the flag; it drops nothing.
	r := runCLI(t, pwEnv, e.cliArgs("t", alter, "--execute", "--chunk-size", "100")...)
	if r.code != migration.ExitRefused || !strings.Contains(r.stderr, "--initially-drop-shadow-table") {
		t.Fatalf("rerun without the flag: exit %d, want %d naming --initially-drop-shadow-table; stderr:\n%s", r.code, migration.ExitRefused, r.stderr)
	}
	if !e.exists(t, "_t_new") || !e.exists(t, "_t_osc") {
		t.Errorf("a refused rerun dropped the leftovers")
	}
	if got := harness.Checksum(t, e.db, "t", origCols, nil); got != before.checksum {
		t.Errorf("a refused rerun changed the data: %s, before %s", got, before.checksum)
	}

	// With the flag it drops them and applies the change.
	began := time.Now()
	r = runCLI(t, pwEnv, e.cliArgs("t", alter, "--execute", "--chunk-size", "100", "--initially-drop-shadow-table")...)
	if r.code != migration.ExitApplied {
		t.Fatalf("rerun with --initially-drop-shadow-table: exit %d; stderr:\n%s", r.code, r.stderr)
	}
	t.Logf("rerun applied the change in %v", time.Since(began).Round(time.Millisecond))
	cols := harness.Columns(t, e.db, "t")
	if len(cols) != len(origCols)+1 || cols[len(cols)-1] != "added" {
		t.Fatalf("columns after the rerun: %v", cols)
	}
	if got := harness.Checksum(t, e.db, "t", origCols, nil); got != before.checksum {
		t.Errorf("data after the rerun: checksum %s, before %s", got, before.checksum)
	}
	var wrong int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM t WHERE added <> 'new'").Scan(&wrong); err != nil {
		t.Fatal(err)
	}
	if wrong != 0 {
		t.Errorf("%d rows without the new column's default", wrong)
	}
	if got := harness.Checksum(t, e.db, "_t_old", origCols, nil); got != before.checksum {
		t.Errorf("_t_old (the original) checksum %s, before %s", got, before.checksum)
	}
	e.assertNoHelpers(t, "t", "_t_old")
}

// proc is a running osc binary.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	output *bytes.Buffer
	exited chan error // receives Wait's result once, and keeps it there
}

func startCLI(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(bin, args...), output: &bytes.Buffer{}, exited: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.exited <- <-p.exited
	})
	return p
}

// waitFor is waitFor that fails the test if osc exits meanwhile.
func (p *proc) waitFor(timeout, interval time.Duration, cond func() bool) bool {
	p.t.Helper()
	var exited bool
	var err error
	ok := waitFor(timeout, interval, func() bool {
		select {
		case err = <-p.exited:
			p.exited <- err
			exited = true
			return true
		default:
		}
		return cond()
	})
	if exited {
		p.t.Fatalf("osc exited early (%v); output:\n%s", err, p.output.String())
	}
	return ok
}

// kill9 sends SIGKILL and checks that the process died of it.
func (p *proc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-p.exited
	p.exited <- err
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("osc was not killed by SIGKILL: %v; output:\n%s", err, p.output.String())
	}
}

func hasCommand(conns []serverConn, command string) bool {
	for _, c := range conns {
		if c.command == command {
			return true
		}
	}
	return false
}

// waitGone waits until the server has dropped conns, nudging the binlog
// with writes to a table of the test's own so that a dump thread tries to
// send and finds its client gone.
func waitGone(t *testing.T, e *env, conns []serverConn) {
	t.Helper()
	ids := map[string]bool{}
	for _, c := range conns {
		ids[c.id] = true
	}
	e.exec(t, "CREATE TABLE IF NOT EXISTS nudge (id INT PRIMARY KEY) ENGINE=InnoDB")
	var lingering []serverConn
	gone := waitFor(20*time.Second, 200*time.Millisecond, func() bool {
		e.exec(t, "INSERT INTO nudge VALUES (1)", "DELETE FROM nudge")
		lingering = nil
		for _, c := range processlist(t, e) {
			if ids[c.id] {
				lingering = append(lingering, c)
			}
		}
		return len(lingering) == 0
	})
	if !gone {
		t.Errorf("connections of the killed osc still on the server after 20s: %v", lingering)
	}
}

// localPorts returns the local TCP ports of pid's sockets (Linux).
func localPorts(t *testing.T, pid int) map[int]bool {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("listing osc's file descriptors: %v", err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	ports := map[int]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			_, port, ok := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseInt(port, 16, 32); ok && err == nil {
				ports[int(p)] = true
			}
		}
		f.Close()
	}
	if len(ports) == 0 {
		t.Fatalf("no TCP sockets found for osc (pid %d)", pid)
	}
	return ports
}

type serverConn struct{ id, command, host, state string }

func (c serverConn) String() string {
	return fmt.Sprintf("{id %s %s from %s: %s}", c.id, c.command, c.host, c.state)
}

func processlist(t *testing.T, e *env) []serverConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := e.db.QueryContext(ctx, "SELECT ID, COMMAND, COALESCE(HOST, ''), COALESCE(STATE, '') FROM information_schema.PROCESSLIST")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []serverConn
	for rows.Next() {
		var c serverConn
		if err := rows.Scan(&c.id, &c.command, &c.host, &c.state); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// serverConnections are the server's connections coming from the given
// local ports of this machine.
func serverConnections(t *testing.T, e *env, ports map[int]bool) []serverConn {
	t.Helper()
	var out []serverConn
	for _, c := range processlist(t, e) {
		_, port, err := net.SplitHostPort(c.host)
		if err != nil {
			continue
		}
		if p, err := strconv.Atoi(port); err == nil && ports[p] {
			out = append(out, c)
		}
	}
	return out
}

// TestKillDuringCutOver kills osc while its cut-over attempt holds the
// sentry and waits for the table lock (a long read transaction keeps it
// waiting): the original stays in place, whole and writable, never renamed
// half-synced; a rerun refuses until told to drop what was left, then
// applies the change.
func TestKillDuringCutOver(t *testing.T) {
	bin := oscBinary(t)
	e := newCutoverTable(t)
	before := e.state(t, "t")
	cols := harness.Columns(t, e.db, "t")
	alter := "ADD COLUMN added INT NOT NULL DEFAULT 42"
	pwEnv := []string{"OSC_PASSWORD=" + e.my.Password}

	// A read-only transaction: no row locks (the copy is not blocked) but
	// a metadata lock that makes LOCK TABLES ... WRITE wait.
	tx, err := e.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback() })
	var n int
	if err := tx.QueryRow("SELECT COUNT(*) FROM t WHERE id <= 10").Scan(&n); err != nil {
		t.Fatal(err)
	}

	p := startCLI(t, bin, pwEnv, e.cliArgs("t", alter, "--execute", "--cut-over-lock-timeout-seconds", "20", "--cut-over-attempts", "1")...)
	var waiting []serverConn
	if !p.waitFor(60*time.Second, 5*time.Millisecond, func() bool {
		if !e.exists(t, "t_osc_swap") {
			return false
		}
		waiting = nil
		for _, c := range serverConnections(t, e, localPorts(t, p.cmd.Process.Pid)) {
			if strings.Contains(c.state, "metadata lock") {
				waiting = append(waiting, c)
			}
		}
		return len(waiting) > 0
	}) {
		t.Fatalf("osc did not reach the cut-over lock within 60s; output:\n%s", p.output.String())
	}
	conns := serverConnections(t, e, localPorts(t, p.cmd.Process.Pid))
	p.kill9(t)
	t.Logf("killed osc while %v waited for the table lock", waiting)

	// The application's transaction ends; the dead connection's queued lock
	// may be granted briefly, then the server drops it.
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, e, conns)
	e.assertUntouched(t, "t", before, "", "_t_new", "_t_osc", "t_osc_swap")
	var sentryRows int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM t_osc_swap").Scan(&sentryRows); err != nil || sentryRows != 0 {
		t.Errorf("the sentry t_osc_swap: %d rows, %v", sentryRows, err)
	}
	e.exec(t, "INSERT INTO t (id, v, n) VALUES (1000000, 'probe', 0)", "DELETE FROM t WHERE id = 1000000")

	r := runCLI(t, pwEnv, e.cliArgs("t", alter, "--execute")...)
	if r.code != migration.ExitRefused || !strings.Contains(r.stderr, "--initially-drop-") {
		t.Fatalf("rerun without flags: exit %d, want %d naming a flag; stderr:\n%s", r.code, migration.ExitRefused, r.stderr)
	}
	r = runCLI(t, pwEnv, e.cliArgs("t", alter, "--execute", "--initially-drop-shadow-table")...)
	t.Logf("rerun with --initially-drop-shadow-table: exit %d", r.code)
	switch {
	case r.code == migration.ExitRefused && strings.Contains(r.stderr, "t_osc_swap") && strings.Contains(r.stderr, "--initially-drop-old-table"):
		r = runCLI(t, pwEnv, e.cliArgs("t", alter, "--execute", "--initially-drop-shadow-table", "--initially-drop-old-table")...)
		if r.code != migration.ExitApplied {
			t.Fatalf("rerun with both flags: exit %d; stderr:\n%s", r.code, r.stderr)
		}
	case r.code != migration.ExitApplied:
		t.Fatalf("rerun with --initially-drop-shadow-table: exit %d; stderr:\n%s", r.code, r.stderr)
	}
	if got := harness.Checksum(t, e.db, "t", cols, nil); got != before.checksum {
		t.Errorf("data after the rerun: checksum %s, before %s", got, before.checksum)
	}
	if got := harness.Columns(t, e.db, "t"); got[len(got)-1] != "added" {
		t.Errorf("columns after the rerun: %v", got)
	}
	e.assertNoHelpers(t, "t", "_t_old")
}
