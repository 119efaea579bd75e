package faults

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/osc-dev/osc/migration"
)

// kill -9 mid-copy on PostgreSQL: nothing of osc's can clean up, but the
// server ends its sessions, and the temporary slot goes with the
// walsender's. The original table is untouched and writable throughout
// (the application keeps writing to it and to the reference table t_ref);
// the publication and the shadow table stay behind, and a rerun of the
// very same command sweeps them (osc's names are deterministic, the
// shadow carries osc's comment, and the run's advisory lock proves that
// no other run owns them), then applies the change with every row intact.

const pgKillRows = 6000

func TestPGKillMidCopy(t *testing.T) {
	t.Parallel()
	bin := oscBinary(t)
	e := newPGEnv(t)
	e.createT(t, pgKillRows, true)
	before := e.definition(t, "t")
	a, stopApp := startPGApp(t, e, pgKillRows)

	flag := filepath.Join(t.TempDir(), "throttle")
	alter := "ADD COLUMN added text NOT NULL DEFAULT 'new', ADD CONSTRAINT n_positive CHECK (n > 0)"
	args := e.cliArgs("t", alter, "--execute", "--chunk-size", "100", "--throttle-flag-file", flag)
	p := startCLI(t, bin, e.pwEnv(), args...)
	copied := pgPauseCLICopy(t, e, p, flag, pgKillRows, 1000)
	sessions := e.oscBackends(t)
	if len(sessions) < 3 || !strings.Contains(strings.Join(sessions, ","), "walsender") {
		t.Fatalf("osc's sessions on the server: %v, want its pool, applier and walsender", sessions)
	}
	p.kill9(t)
	killed := time.Now()
	t.Logf("killed osc with %d of %d rows copied; its sessions were %v", copied, pgKillRows, sessions)

	// The server ends the dead client's sessions; the temporary slot goes
	// with its walsender.
	var left []string
	if !waitFor(20*time.Second, 50*time.Millisecond, func() bool {
		left = e.oscBackends(t)
		return len(left) == 0
	}) {
		t.Errorf("sessions of the killed osc still on the server after 20s: %v", left)
	}
	if !waitFor(10*time.Second, 50*time.Millisecond, func() bool {
		return e.queryInt(t, `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'osc\_%'`) == 0
	}) {
		t.Errorf("the killed osc's temporary slot is still there: %v", e.leftovers(t, "t"))
	}
	// What osc created itself is left: the shadow and the publication.
	e.assertNoLeftovers(t, "t", "table _t_new", "publication osc_")

	// The original: the same relation, and it equals the reference while
	// the application writes to both (UPDATE and DELETE included, which a
	// published table without replica identity would refuse).
	if got := e.definition(t, "t"); got != before {
		t.Errorf("t changed:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	time.Sleep(300 * time.Millisecond)
	a.mu.Lock()
	if a.err != nil || !a.lastWrite.After(killed) {
		t.Errorf("the application could not write after the kill (last write %v, kill %v): %v", a.lastWrite.Format("15:04:05.000"), killed.Format("15:04:05.000"), a.err)
	}
	a.mu.Unlock()
	e.assertMatchesRef(t)

	// The same command again, without the flag file: it sweeps the
	// leftovers, says so, and applies the change.
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	r := runCLI(t, e.pwEnv(), args...)
	if r.code != migration.ExitApplied {
		t.Fatalf("rerun: exit %d; stderr:\n%s", r.code, r.stderr)
	}
	t.Logf("rerun applied the change in %v", time.Since(began).Round(time.Millisecond))
	for _, want := range []string{"dropped the shadow table of an earlier run", "dropped the publication of an earlier run"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the rerun's log does not say %q; stderr:\n%s", want, r.stderr)
		}
	}
	time.Sleep(300 * time.Millisecond)
	stopApp()
	a.check(t)
	if cols := e.columns(t, "t"); cols[len(cols)-1] != "added" {
		t.Fatalf("columns after the rerun: %v", cols)
	}
	if n := e.queryInt(t, "SELECT count(*) FROM t WHERE added <> 'new'"); n != 0 {
		t.Errorf("%d rows without the new column's default", n)
	}
	if n := e.queryInt(t, "SELECT count(*) FROM pg_constraint WHERE conrelid = 't'::regclass AND conname = 'n_positive'"); n != 1 {
		t.Errorf("the new CHECK constraint is missing on t")
	}
	e.assertMatchesRef(t)
	e.assertNoLeftovers(t, "t", "table _t_old")
}

// TestPGSignalDuringCopy: SIGTERM or SIGINT mid-copy stops osc with a
// failure exit code after it removed everything it created (slot,
// publication, shadow); the original is untouched and writable.
func TestPGSignalDuringCopy(t *testing.T) {
	t.Parallel()
	bin := oscBinary(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			e := newPGEnv(t)
			const rows = 4000
			e.createT(t, rows, false)
			before := e.state(t, "t")
			flag := filepath.Join(t.TempDir(), "throttle")
			p := startCLI(t, bin, e.pwEnv(), e.cliArgs("t", "ADD COLUMN added int NOT NULL DEFAULT 1",
				"--execute", "--chunk-size", "100", "--throttle-flag-file", flag)...)
			copied := pgPauseCLICopy(t, e, p, flag, rows, 500)
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			sent := time.Now()
			var err error
			select {
			case err = <-p.exited:
				p.exited <- err
			case <-time.After(60 * time.Second):
				t.Fatalf("osc did not exit within 60s of %v; output:\n%s", sig, p.output.String())
			}
			code := p.cmd.ProcessState.ExitCode()
			t.Logf("%v with %d of %d rows copied: exit %d after %v", sig, copied, rows, code, time.Since(sent).Round(time.Millisecond))
			if code != migration.ExitFailed {
				t.Errorf("exit code %d (%v), want %d", code, err, migration.ExitFailed)
			}
			if out := p.output.String(); !strings.Contains(out, "interrupted") || !strings.Contains(out, "unchanged and authoritative") {
				t.Errorf("the output does not say the run was interrupted and the table is unchanged:\n%s", out)
			}
			e.assertUntouched(t, "t", before, pgInsertT)
			if left := e.oscBackends(t); len(left) != 0 {
				t.Errorf("osc's sessions outlived it: %v", left)
			}
		})
	}
}
