package faults

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// waitOutcome waits for a background Run.
func waitOutcome(t *testing.T, done <-chan runOutcome) runOutcome {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not return within 2 minutes")
	}
	return runOutcome{}
}

// TestDDLMidRunAborts: someone alters the table while osc copies it. The
// change stream sees the DDL and the run stops cleanly: the table keeps
// the other DDL and every row, and nothing of osc's is left.
func TestDDLMidRunAborts(t *testing.T) {
	e := newCutoverTable(t)
	o, _ := e.options(t, "t", "ADD COLUMN added INT NOT NULL DEFAULT 1")
	done, resume := startPausedAtCopy(t, e, o)
	defer resume()
	e.exec(t, "ALTER TABLE t ADD COLUMN sneaky INT NULL")
	r := waitOutcome(t, done)
	checkOutcome(t, r.res, r.err, migration.ExitFailed, "DDL", "unchanged")
	if n := e.count(t, "t"); n != cutoverRows {
		t.Errorf("table has %d rows after the aborted run, want %d", n, cutoverRows)
	}
	if cols := harness.Columns(t, e.db, "t"); cols[len(cols)-1] != "sneaky" {
		t.Errorf("the other DDL's column is missing: %v", cols)
	}
	e.assertNoHelpers(t, "t")
}

// TestBinlogConnectionKilledMidCopy: osc's binlog connection is killed
// twice while writes keep coming. The reader reconnects at the position
// it had reached, so no event is lost or applied twice: the new table
// equals the original at cut-over, and verification had nothing to repair.
func TestBinlogConnectionKilledMidCopy(t *testing.T) {
	e := newCutoverTable(t)
	o, _ := e.options(t, "t", "ADD COLUMN added INT NOT NULL DEFAULT 1")
	done, resume := startPausedAtCopy(t, e, o)
	defer resume()
	killDump := func() {
		t.Helper()
		var dumps []serverConn
		for _, c := range serverConnections(t, e, localPorts(t, os.Getpid())) {
			if c.command == "Binlog Dump" {
				dumps = append(dumps, c)
			}
		}
		if len(dumps) != 1 {
			t.Fatalf("osc's binlog connections: %v, want exactly one", dumps)
		}
		e.exec(t, "KILL "+dumps[0].id)
		// Reconnected: a new dump thread from this process.
		if !waitFor(20*time.Second, 50*time.Millisecond, func() bool {
			for _, c := range serverConnections(t, e, localPorts(t, os.Getpid())) {
				if c.command == "Binlog Dump" && c.id != dumps[0].id {
					return true
				}
			}
			return false
		}) {
			t.Fatal("osc did not reconnect its binlog stream within 20s")
		}
	}
	// Rows already copied (low ids) and not yet copied (high ids) change.
	writes := func(round int) {
		e.exec(t,
			fmt.Sprintf("UPDATE t SET n = n + %d, v = CONCAT(v, '-%d') WHERE id %% 97 = %d", round, round, round),
			fmt.Sprintf("DELETE FROM t WHERE id %% 101 = %d", round),
			fmt.Sprintf("INSERT INTO t (v, n) SELECT CONCAT('new', seq, '-%d'), seq FROM seq_1_to_50", round),
			fmt.Sprintf("UPDATE t SET id = id + %d WHERE id %% 211 = %d", round*10000000, round))
	}
	writes(1)
	killDump()
	writes(2)
	killDump()
	writes(3)
	resume()
	r := waitOutcome(t, done)
	checkOutcome(t, r.res, r.err, migration.ExitApplied)
	cols := []string{"id", "v", "n", "pad"}
	if got, want := harness.Checksum(t, e.db, "t", cols, []string{"id"}), harness.Checksum(t, e.db, "_t_old", cols, []string{"id"}); got != want {
		t.Fatalf("new table %s differs from the original %s", got, want)
	}
	if r.res.RepairedChunks != 0 {
		t.Errorf("verification repaired %d chunks: the stream lost or repeated events across the reconnects", r.res.RepairedChunks)
	}
}
