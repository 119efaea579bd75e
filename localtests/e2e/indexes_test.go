package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// TestCancelDuringIndexBuild cancels a run while the shadow's secondary
// indexes are being built after the copy. The ALTER adds an index on a
// virtual column whose expression is slow (hashing 120 KB per row), so the
// build takes seconds. The server does not stop an ALTER when its client goes away: a
// cancelled run must kill it, then drop the shadow, leaving the table as it
// was.
func TestCancelDuringIndexBuild(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE t (id INT NOT NULL PRIMARY KEY, c VARCHAR(20) NOT NULL)`)
	e.exec("INSERT INTO t (id, c) SELECT seq, CONCAT('c', seq) FROM seq_1_to_10000")
	origCreate := e.showCreate("t")
	origSum := harness.Checksum(t, e.db, "t", []string{"id", "c"}, []string{"id"})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := runAsync(ctx, e.options("ADD COLUMN h VARCHAR(128) AS (SHA2(REPEAT(c, 20000), 512)) VIRTUAL, ADD KEY h (h)"))
	building := func() bool {
		return e.queryString(`SELECT COUNT(*) FROM information_schema.PROCESSLIST
			WHERE INFO LIKE 'ALTER TABLE%_t_new%ADD KEY%LOCK=NONE'`) != "0"
	}
	waitFor(t, "the index build", building, func() string { return e.logs.matching(" ") })

	cancel()
	cancelled := time.Now()
	for building() && time.Since(cancelled) < 10*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	// Left running, the build takes about 2.5 s on two cores.
	if took := time.Since(cancelled); took > time.Second {
		t.Errorf("the index build went on for %v after the run was cancelled; it must be killed", took.Round(time.Millisecond))
	}
	var r runResult
	select {
	case r = <-run:
	case <-time.After(30 * time.Second):
		t.Fatal("the cancelled run did not return within 30 s")
	}
	if r.err == nil || migration.ExitCode(r.err) == migration.ExitApplied {
		t.Fatalf("a run cancelled during the index build returned %v (exit %d), want a failure", r.err, migration.ExitCode(r.err))
	}
	if got := e.showCreate("t"); got != origCreate {
		t.Errorf("t after the cancelled run:\n%s\nwant the original:\n%s", got, origCreate)
	}
	if got := harness.Checksum(t, e.db, "t", []string{"id", "c"}, []string{"id"}); got != origSum {
		t.Errorf("t's checksum changed from %s to %s", origSum, got)
	}
	if tables := harness.Strings(t, e.db, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"); !slices.Equal(tables, []string{"t"}) {
		t.Errorf("tables after the cancelled run = %v, want only t; log: %s", tables, strings.ReplaceAll(e.logs.matching("drop"), "\n", "; "))
	}
}

// TestIndexesDuringCopy: with IndexesDuringCopy the shadow keeps its
// secondary indexes through the copy, and the result is the same table.
func TestIndexesDuringCopy(t *testing.T) {
	e := newEnv(t)
	e.exec("CREATE TABLE t (id INT NOT NULL PRIMARY KEY, k INT NOT NULL, c VARCHAR(20) NOT NULL, KEY k (k), KEY kc (k, c(5)))")
	e.exec("INSERT INTO t SELECT seq, seq % 97, CONCAT('c', seq) FROM seq_1_to_5000")
	const alter = "ADD COLUMN x INT NOT NULL DEFAULT 0, ADD KEY x (x)"
	e.exec("CREATE TABLE ref LIKE t")
	e.exec("ALTER TABLE ref " + alter)
	want := strings.Replace(e.showCreate("ref"), "CREATE TABLE `ref`", "CREATE TABLE `t`", 1)
	sum := harness.Checksum(t, e.db, "t", []string{"id", "k", "c"}, []string{"id"})

	o := e.options(alter)
	o.IndexesDuringCopy = true
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := migration.Run(ctx, o)
	assertApplied(t, res, err)
	if got := e.logs.matching("secondary indexes"); got != "none" {
		t.Errorf("with IndexesDuringCopy osc still deferred the indexes: %s", got)
	}
	if got := e.showCreate("t"); got != want {
		t.Errorf("t after the run:\n%s\nwant:\n%s", got, want)
	}
	if got := harness.Checksum(t, e.db, "t", []string{"id", "k", "c"}, []string{"id"}); got != sum {
		t.Errorf("t's checksum over the original columns changed from %s to %s", sum, got)
	}
	e.assertCleanedUp("ref")
}
