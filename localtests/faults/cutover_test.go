package faults

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// Cut-over against a long transaction: the transaction's metadata lock
// makes every cut-over attempt time out. Each attempt may stall the
// application for at most the lock timeout; the original table stays in
// place and unlocked between attempts; once the transaction ends the next
// attempt succeeds, and nothing the application wrote is lost.

const (
	cutoverRows        = 20000
	cutoverLockTimeout = time.Second
	// latencyMargin is what an application statement may take beyond the
	// cut-over lock timeout (the drain, the rename, a loaded machine).
	latencyMargin = 700 * time.Millisecond
)

func newCutoverTable(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (
		id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
		v VARCHAR(64) NOT NULL,
		n INT NOT NULL,
		pad CHAR(100) NOT NULL DEFAULT ''
	) ENGINE=InnoDB`,
		fmt.Sprintf("INSERT INTO t (id, v, n, pad) SELECT seq, CONCAT('v', seq), seq, REPEAT('p', seq %% 100) FROM seq_1_to_%d", cutoverRows))
	return e
}

// startPausedAtCopy starts Run in the background with a throttle flag
// file, lets the copy get past the first rows, then pauses it (so that the
// test can set up the long transaction before the cut-over starts).
// resume lets the copy go on.
func startPausedAtCopy(t *testing.T, e *env, o migration.Options) (done <-chan runOutcome, resume func()) {
	t.Helper()
	flag := filepath.Join(t.TempDir(), "throttle")
	o.ThrottleFlagFile = flag
	o.ChunkSize = 100
	o.Execute = true
	ch := make(chan runOutcome, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(func() {
		cancel()
		os.Remove(flag)
	})
	started := time.Now()
	go func() {
		res, err := migration.Run(ctx, o)
		ch <- runOutcome{res, err, time.Since(started)}
	}()
	shadowRows := func() int64 {
		var n int64
		// Only the original rows: the applier adds the application's inserts.
		if err := e.db.QueryRow("SELECT COUNT(*) FROM _t_new WHERE id <= ?", cutoverRows).Scan(&n); err != nil {
			return -1
		}
		return n
	}
	if !waitFor(60*time.Second, 2*time.Millisecond, func() bool { return shadowRows() >= 300 }) {
		t.Fatalf("the copy did not start within 60s (shadow rows: %d)", shadowRows())
	}
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Paused when the count stops moving.
	last := shadowRows()
	if !waitFor(30*time.Second, 300*time.Millisecond, func() bool {
		n := shadowRows()
		same := n == last
		last = n
		return same
	}) {
		t.Fatal("the copy did not pause on the throttle flag file")
	}
	if last >= cutoverRows {
		t.Fatalf("the copy finished (%d rows) before it could be paused; the test cannot hold a transaction at cut-over", last)
	}
	select {
	case r := <-ch:
		t.Fatalf("Run returned while the copy should be paused: %v", r.err)
	default:
	}
	t.Logf("copy paused at %d of %d rows", last, cutoverRows)
	return ch, func() { os.Remove(flag) }
}

type runOutcome struct {
	res  *migration.Result
	err  error
	took time.Duration
}

// holdLongTx opens a transaction that updates row 1 and does not commit.
// The caller commits or rolls back; cleanup rolls back.
func holdLongTx(t *testing.T, e *env) *sql.Tx {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := e.db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback() })
	if _, err := tx.ExecContext(ctx, "UPDATE t SET v = 'long-tx', n = n + 1000000 WHERE id = 1"); err != nil {
		t.Fatalf("long transaction: %v", err)
	}
	return tx
}

// failedAttempts counts osc's failed lock attempts: the brief lock that
// opens the verification view and the cut-over's obey the same timeout and
// retries, and the long transaction meets whichever comes first.
func failedAttempts(logs *observer.ObservedLogs) int {
	return logs.FilterMessageSnippet("attempt failed; the original table is in place and unlocked").Len()
}

// app is an application writing single rows to t every ~20ms over its own
// connection, whose lock waits are long enough that only osc's lock
// timeout decides how long a statement can stall.
type app struct {
	mu        sync.Mutex
	inserted  map[int64]string // id -> v
	updated   map[int64]string // id -> last v written
	updates   map[int64]int    // id -> number of updates (each adds 1 to n)
	worst     time.Duration
	worstStmt string
	worstAt   time.Time
	stmts     int
	lastWrite time.Time
	err       error
}

func startApp(t *testing.T, e *env) (a *app, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := e.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = 60, innodb_lock_wait_timeout = 60"); err != nil {
		t.Fatal(err)
	}
	a = &app{inserted: map[int64]string{}, updated: map[int64]string{}, updates: map[int64]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer conn.Close()
		rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
			v := fmt.Sprintf("app-%d", i)
			sctx, scancel := context.WithTimeout(context.Background(), 90*time.Second)
			began := time.Now()
			var stmt string
			var id int64
			var err error
			if i%2 == 0 {
				stmt = "INSERT"
				var r sql.Result
				r, err = conn.ExecContext(sctx, "INSERT INTO t (v, n) VALUES (?, ?)", v, i)
				if err == nil {
					id, err = r.LastInsertId()
				}
			} else {
				stmt = "UPDATE"
				id = 2 + rng.Int64N(cutoverRows-1) // never row 1, which the long transaction holds
				_, err = conn.ExecContext(sctx, "UPDATE t SET v = ?, n = n + 1 WHERE id = ?", v, id)
			}
			took := time.Since(began)
			scancel()
			a.mu.Lock()
			a.stmts++
			if took > a.worst {
				a.worst, a.worstStmt, a.worstAt = took, stmt, began
			}
			if err != nil {
				a.err = fmt.Errorf("%s (statement %d): %w", stmt, i, err)
				a.mu.Unlock()
				return
			}
			if stmt == "INSERT" {
				a.inserted[id] = v
			} else {
				a.updated[id] = v
				a.updates[id]++
			}
			a.lastWrite = time.Now()
			a.mu.Unlock()
		}
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return a, stop
}

// TestCutOverWaitsOutLongTransaction: attempts fail while a transaction
// holds the table, the application is stalled at most the lock timeout per
// attempt, and the cut-over succeeds once the transaction commits.
func TestCutOverWaitsOutLongTransaction(t *testing.T) {
	e := newCutoverTable(t)
	before := e.state(t, "t")
	a, stopApp := startApp(t, e)

	o, logs := e.options(t, "t", "ADD COLUMN added INT NOT NULL DEFAULT 42")
	o.CutOverLockTimeout = cutoverLockTimeout
	o.CutOverAttempts = 20
	done, resume := startPausedAtCopy(t, e, o)
	tx := holdLongTx(t, e)
	held := time.Now()
	resume()

	// Let a few attempts fail against the transaction.
	if !waitFor(60*time.Second, 20*time.Millisecond, func() bool {
		return failedAttempts(logs) >= 2 && time.Since(held) >= 4*time.Second
	}) {
		t.Fatalf("expected at least 2 failed cut-over attempts; saw %d", failedAttempts(logs))
	}
	select {
	case r := <-done:
		t.Fatalf("Run returned while the long transaction still held the table: %v", r.err)
	default:
	}
	failedBeforeCommit := failedAttempts(logs)
	if err := tx.Commit(); err != nil {
		t.Fatalf("committing the long transaction: %v", err)
	}
	committed := time.Now()

	var r runOutcome
	select {
	case r = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not finish within 2 minutes of the transaction's commit")
	}
	ranFor := time.Since(committed)
	if r.err != nil {
		t.Fatalf("Run failed after the long transaction committed: %v", r.err)
	}
	if !r.res.Applied {
		t.Errorf("Result.Applied is false")
	}
	t.Logf("Run took %v; %d attempts failed before the commit, %d in all; it finished %v after the commit",
		r.took.Round(time.Millisecond), failedBeforeCommit, failedAttempts(logs), ranFor.Round(time.Millisecond))
	if r.took < 2*time.Second {
		t.Errorf("Run took %v: no attempt can have waited on the long transaction", r.took)
	}

	// Writes after the cut-over go to the new table.
	time.Sleep(300 * time.Millisecond)
	stopApp()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		t.Errorf("application write failed: %v", a.err)
	}
	t.Logf("application: %d statements, worst %v (%s at %s)", a.stmts, a.worst.Round(time.Millisecond), a.worstStmt, a.worstAt.Format("15:04:05.000"))
	if limit := cutoverLockTimeout + latencyMargin; a.worst > limit {
		t.Errorf("an application %s stalled %v, more than the cut-over lock timeout %v + %v", a.worstStmt, a.worst, cutoverLockTimeout, latencyMargin)
	}
	if !a.lastWrite.After(committed.Add(ranFor)) {
		t.Errorf("the application wrote nothing after the cut-over")
	}

	// Everything the application and the long transaction wrote is in the
	// new table, and nothing else changed.
	cols := harness.Columns(t, e.db, "t")
	if cols[len(cols)-1] != "added" {
		t.Fatalf("columns after the cut-over: %v", cols)
	}
	if got, want := e.count(t, "t"), int64(cutoverRows+len(a.inserted)); got != want {
		t.Errorf("the new table has %d rows, want %d (%d original + %d inserted by the application)", got, want, cutoverRows, len(a.inserted))
	}
	rows, err := e.db.Query("SELECT id, v, n, pad, added FROM t ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	bad, seen := 0, 0
	for rows.Next() {
		var id, n, added int64
		var v, pad string
		if err := rows.Scan(&id, &v, &n, &pad, &added); err != nil {
			t.Fatal(err)
		}
		seen++
		wantV, wantN, wantPad := fmt.Sprintf("v%d", id), id, strings.Repeat("p", int(id%100))
		switch {
		case id == 1:
			wantV, wantN = "long-tx", 1+1000000
		case id > cutoverRows:
			wantV, wantPad = a.inserted[id], ""
			fmt.Sscanf(wantV, "app-%d", &wantN)
		}
		if u, ok := a.updated[id]; ok {
			wantV, wantN = u, wantN+int64(a.updates[id])
		}
		if v != wantV || n != wantN || pad != wantPad || added != 42 {
			if bad < 10 {
				t.Errorf("row %d is (v %q, n %d, pad %d bytes, added %d), want (%q, %d, %d bytes, 42)", id, v, n, len(pad), added, wantV, wantN, len(wantPad))
			}
			bad++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if bad > 0 {
		t.Errorf("%d of %d rows differ from what was written (%d application inserts, %d rows updated by it)", bad, seen, len(a.inserted), len(a.updated))
	}
	if got := e.state(t, "_t_old"); stripAutoIncrement(strings.Replace(got.create, "`_t_old`", "`t`", 1)) != stripAutoIncrement(before.create) {
		t.Errorf("_t_old is not the original table: %s", got.create)
	}
	e.assertNoHelpers(t, "t", "_t_old")
}

// TestCutOverGivesUp: a transaction that never ends makes every attempt
// fail; Run gives up (1) and leaves the original table as it was, in place,
// writable, and none of osc's tables (shadow, changelog, sentry) behind.
func TestCutOverGivesUp(t *testing.T) {
	e := newCutoverTable(t)
	before := e.state(t, "t")
	o, logs := e.options(t, "t", "ADD COLUMN added INT NOT NULL DEFAULT 42")
	o.CutOverLockTimeout = cutoverLockTimeout
	o.CutOverAttempts = 2
	done, resume := startPausedAtCopy(t, e, o)
	tx := holdLongTx(t, e)
	resume()

	var r runOutcome
	select {
	case r = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not give up within 2 minutes")
	}
	t.Logf("Run took %v", r.took.Round(time.Millisecond))
	checkOutcome(t, r.res, r.err, migration.ExitFailed, "failed after 2 attempts", "Lock wait timeout", "unchanged")
	if r.res.Applied {
		t.Errorf("Result.Applied is true")
	}
	if n := failedAttempts(logs); n != 1 {
		t.Errorf("%d retry warnings, want 1 (2 attempts)", n)
	}
	if r.took < 2*cutoverLockTimeout {
		t.Errorf("Run took %v, less than two attempts of %v each", r.took, cutoverLockTimeout)
	}
	// With the transaction still open: the table is in place, unchanged
	// (the open transaction's change is not visible) and writable.
	e.assertUntouched(t, "t", before, "INSERT INTO t (v, n) VALUES ('after giving up', 0)")
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got, want := e.count(t, "t"), int64(cutoverRows+1); got != want {
		t.Errorf("%d rows, want %d", got, want)
	}
	var v string
	if err := e.db.QueryRow("SELECT v FROM t WHERE id = 1").Scan(&v); err != nil || v != "v1" {
		t.Errorf("row 1 after the rollback: %q, %v", v, err)
	}
}
