package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// holdReplication takes an exclusive lock, shared by every test process
// using the same servers, on the replication into one replica, and holds
// it until the test ends. Tests that stop a replica's replay, or that need
// it running, take it: `go test` runs packages in parallel against the
// same servers, and one package restarting replay would undo another's
// stopped replica (and the reverse).
func holdReplication(tb testing.TB, host string, port int) {
	tb.Helper()
	path := filepath.Join(os.TempDir(), fmt.Sprintf("osc-test-replication-%s-%d.lock", host, port))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	// flock locks belong to the open file, so goroutines of one process
	// exclude each other too.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() }) // closing releases the lock
}

// HoldReplica serialises the tests that stop the MariaDB replica or need
// it applying; see holdReplication.
func (m *MySQL) HoldReplica(tb testing.TB) { holdReplication(tb, m.Host, m.ReplicaPort) }

// HoldStandby serialises the tests that pause the PostgreSQL standby's
// replay or need it replaying; see holdReplication.
func (p *PG) HoldStandby(tb testing.TB) { holdReplication(tb, p.Host, p.StandbyPort) }
