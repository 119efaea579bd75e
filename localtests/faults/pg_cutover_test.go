package faults

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/osc-dev/osc/migration"
)

// Cut-over on PostgreSQL against a long transaction. osc's lock request
// (SHARE for the verification view, ACCESS EXCLUSIVE for the swap) waits
// behind the transaction's lock, and every other session's request on the
// table queues behind osc's: for at most the lock timeout, after which osc
// withdraws, the queue drains, and osc retries later. The application
// (plain single-row reads and writes, which never time out on their own)
// must never wait much longer than one lock timeout; the original stays in
// place between attempts; nothing the application or the long transaction
// wrote is lost.

const (
	pgCutoverRows        = 5000
	pgCutoverLockTimeout = time.Second
	// pgLatencyMargin is what an application statement may take beyond
	// the lock timeout (the drain under the lock, the swap, a busy machine).
	pgLatencyMargin = 700 * time.Millisecond
	// pgLongTxHold is how long the long transaction holds its lock.
	pgLongTxHold = 6 * time.Second
)

// pgSession is a dedicated connection for a test's own transaction.
func pgSession(t *testing.T, e *pgEnv) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, e.dsn())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// TestPGCutOverWaitsOutLongTransaction: a transaction holds a lock on t
// for 6s while osc reaches its locks, then writes row 1 (and its copy in
// t_ref) and commits. osc's attempts fail and are retried; the
// application never stalls beyond the lock timeout; once the transaction
// commits osc completes, and t equals the reference.
//
// An open UPDATE transaction holds ROW EXCLUSIVE, which conflicts with the
// verification's SHARE lock: the verification's lock attempts fail. A
// transaction that read row 1 FOR UPDATE holds ROW SHARE, which conflicts
// only with the swap's ACCESS EXCLUSIVE: the verification passes and the
// cut-over attempts fail.
func TestPGCutOverWaitsOutLongTransaction(t *testing.T) {
	update := []string{
		"UPDATE t SET v = 'long-tx', n = n + 1000000 WHERE id = 1",
		"UPDATE t_ref SET v = 'long-tx', n = n + 1000000 WHERE id = 1",
	}
	cases := []struct {
		name       string
		begin, end []string // statements at the start and at the end of the transaction
		failing    string   // the lock attempts that fail while it is open
	}{
		{name: "open UPDATE transaction", begin: update, failing: "verification lock attempt failed"},
		{name: "SELECT FOR UPDATE then UPDATE", begin: []string{"SELECT id FROM t WHERE id = 1 FOR UPDATE"}, end: update, failing: "cut-over attempt failed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newPGEnv(t)
			e.createT(t, pgCutoverRows, true)
			before := e.definition(t, "t")
			a, stopApp := startPGApp(t, e, pgCutoverRows, 1)

			o, logs := e.options(t, "t", "ADD COLUMN added int NOT NULL DEFAULT 42")
			o.CutOverLockTimeout = pgCutoverLockTimeout
			o.CutOverAttempts = 20
			done, resume := startPGPausedAtCopy(t, e, o, pgCutoverRows)

			ctx := context.Background()
			long := pgSession(t, e)
			tx, err := long.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range c.begin {
				if _, err := tx.Exec(ctx, s); err != nil {
					t.Fatalf("long transaction: %s: %v", s, err)
				}
			}
			held := time.Now()
			resume()

			failing := func() int { return logs.FilterMessageSnippet(c.failing).Len() }
			if !waitFor(60*time.Second, 20*time.Millisecond, func() bool {
				return failing() >= 2 && time.Since(held) >= pgLongTxHold
			}) {
				t.Fatalf("expected at least 2 failed lock attempts (%q) while the transaction was open; saw %d (%d in all)", c.failing, failing(), failedAttempts(logs))
			}
			select {
			case r := <-done:
				t.Fatalf("Run returned while the long transaction still held the table: %v", r.err)
			default:
			}
			if n, m := failing(), failedAttempts(logs); n != m {
				t.Errorf("%d of the %d failed lock attempts are not %q", m-n, m, c.failing)
			}
			if got := e.definition(t, "t"); got != before {
				t.Errorf("while osc retried, t is no longer the original relation:\n%s", got)
			}
			failedBeforeCommit := failedAttempts(logs)
			for _, s := range c.end {
				if _, err := tx.Exec(ctx, s); err != nil {
					t.Fatalf("long transaction: %s: %v", s, err)
				}
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatalf("committing the long transaction: %v", err)
			}
			committed := time.Now()

			var r runOutcome
			select {
			case r = <-done:
			case <-time.After(2 * time.Minute):
				t.Fatal("Run did not finish within 2 minutes of the transaction's commit")
			}
			finished := time.Now()
			checkOutcome(t, r.res, r.err, migration.ExitApplied)
			if !r.res.Applied {
				t.Errorf("Result.Applied is false")
			}
			t.Logf("Run took %v; %d lock attempts (%s) failed while the transaction was open (held %v), %d in all; done %v after the commit",
				r.took.Round(time.Millisecond), failedBeforeCommit, c.failing, committed.Sub(held).Round(time.Millisecond),
				failedAttempts(logs), finished.Sub(committed).Round(time.Millisecond))

			// The application goes on writing to the new table.
			time.Sleep(300 * time.Millisecond)
			stopApp()
			a.check(t)
			a.mu.Lock()
			if limit := pgCutoverLockTimeout + pgLatencyMargin; a.worst > limit {
				t.Errorf("an application %s waited %v, more than the lock timeout %v + %v", a.worstWhat, a.worst, pgCutoverLockTimeout, pgLatencyMargin)
			}
			if a.worst < pgCutoverLockTimeout/3 {
				t.Errorf("the application never queued behind osc's lock requests (worst wait %v): the test measured nothing", a.worst)
			}
			if !a.lastWrite.After(finished) {
				t.Errorf("the application wrote nothing after the cut-over")
			}
			a.mu.Unlock()

			if cols := e.columns(t, "t"); cols[len(cols)-1] != "added" {
				t.Fatalf("columns after the cut-over: %v", cols)
			}
			if n := e.queryInt(t, "SELECT count(*) FROM t WHERE added IS DISTINCT FROM 42"); n != 0 {
				t.Errorf("%d rows without the new column's default", n)
			}
			var v string
			if err := e.db.QueryRow("SELECT v FROM t WHERE id = 1").Scan(&v); err != nil || v != "long-tx" {
				t.Errorf("row 1 after the cut-over: %q, %v; want the long transaction's write", v, err)
			}
			e.assertMatchesRef(t)
			e.assertNoLeftovers(t, "t", "table _t_old")
		})
	}
}

// TestPGCutOverGivesUp: a read transaction that never ends holds ACCESS
// SHARE on t, which blocks only the swap's ACCESS EXCLUSIVE lock: the
// verification goes through, every cut-over attempt times out, and Run
// gives up (1) with the original in place (the same relation), unchanged
// apart from the application's writes, and nothing of osc's behind.
func TestPGCutOverGivesUp(t *testing.T) {
	e := newPGEnv(t)
	e.createT(t, pgCutoverRows, true)
	before := e.definition(t, "t")
	a, stopApp := startPGApp(t, e, pgCutoverRows)

	o, logs := e.options(t, "t", "ADD COLUMN added int NOT NULL DEFAULT 42")
	o.CutOverLockTimeout = pgCutoverLockTimeout
	o.CutOverAttempts = 2
	done, resume := startPGPausedAtCopy(t, e, o, pgCutoverRows)

	ctx := context.Background()
	reader := pgSession(t, e)
	tx, err := reader.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM t WHERE id <= 10").Scan(&n); err != nil {
		t.Fatal(err)
	}
	resume()

	var r runOutcome
	select {
	case r = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not give up within 2 minutes")
	}
	t.Logf("Run took %v", r.took.Round(time.Millisecond))
	checkOutcome(t, r.res, r.err, migration.ExitFailed, "cut-over failed after 2 attempts", "lock not granted within the lock timeout", "unchanged and authoritative")
	if r.res.Applied {
		t.Errorf("Result.Applied is true")
	}
	if n := logs.FilterMessageSnippet("cut-over attempt failed").Len(); n != 1 {
		t.Errorf("%d cut-over retry warnings, want 1 (2 attempts)", n)
	}
	if n := logs.FilterMessage("verified: the shadow table matches the table").Len(); n != 1 {
		t.Errorf("the verification did not complete before the cut-over (%d)", n)
	}

	// With the transaction still open: the same relation, the same
	// definition, every write of the application, and nothing of osc's.
	time.Sleep(300 * time.Millisecond)
	stopApp()
	a.check(t)
	a.mu.Lock()
	if limit := pgCutoverLockTimeout + pgLatencyMargin; a.worst > limit {
		t.Errorf("an application %s waited %v, more than the lock timeout %v + %v", a.worstWhat, a.worst, pgCutoverLockTimeout, pgLatencyMargin)
	}
	if a.worst < pgCutoverLockTimeout/3 {
		t.Errorf("the application never queued behind osc's lock requests (worst wait %v): the test measured nothing", a.worst)
	}
	a.mu.Unlock()
	if got := e.definition(t, "t"); got != before {
		t.Errorf("t changed:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	e.assertMatchesRef(t)
	e.assertNoLeftovers(t, "t")
	e.exec(t, pgInsertT)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}
