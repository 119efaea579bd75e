package faults

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/osc-dev/osc/migration"
)

// TestPGCutOverWaitsForMaintenanceOutsideTheLock: a session holds SHARE
// UPDATE EXCLUSIVE on the shadow table for 6s, as an autovacuum or ANALYZE
// of the freshly filled shadow does, while osc reaches its locks. osc must
// wait for it before it takes the table's exclusive lock: the swap's
// rename needs the shadow, and a wait for it under the table's lock would
// stall every application write for up to the lock timeout. The attempts
// fail and are retried; the application never queues behind osc.
func TestPGCutOverWaitsForMaintenanceOutsideTheLock(t *testing.T) {
	e := newPGEnv(t)
	e.createT(t, pgCutoverRows, true)
	a, stopApp := startPGApp(t, e, pgCutoverRows, 1)

	o, logs := e.options(t, "t", "ADD COLUMN added int NOT NULL DEFAULT 42")
	o.CutOverLockTimeout = pgCutoverLockTimeout
	o.CutOverAttempts = 20
	// Held at the postponed cut-over, once the shadow's indexes are built.
	o.PostponeCutOverFlagFile = filepath.Join(t.TempDir(), "postpone")
	if err := os.WriteFile(o.PostponeCutOverFlagFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	done, resume := startPGPausedAtCopy(t, e, o, pgCutoverRows)
	resume()
	if !waitFor(60*time.Second, 20*time.Millisecond, func() bool { return logs.FilterMessageSnippet("postponing cut-over").Len() > 0 }) {
		t.Fatal("the run did not reach the postponed cut-over")
	}

	ctx := context.Background()
	maint := pgSession(t, e)
	tx, err := maint.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE _t_new IN SHARE UPDATE EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	held := time.Now()
	if err := os.Remove(o.PostponeCutOverFlagFile); err != nil {
		t.Fatal(err)
	}
	if !waitFor(60*time.Second, 20*time.Millisecond, func() bool {
		return failedAttempts(logs) >= 2 && time.Since(held) >= pgLongTxHold
	}) {
		t.Fatalf("expected at least 2 failed lock attempts while the shadow was held; saw %d", failedAttempts(logs))
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var r runOutcome
	select {
	case r = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not finish within 2 minutes of the release")
	}
	checkOutcome(t, r.res, r.err, migration.ExitApplied)
	time.Sleep(300 * time.Millisecond)
	stopApp()
	a.check(t)
	a.mu.Lock()
	if limit := pgCutoverLockTimeout / 2; a.worst > limit {
		t.Errorf("an application %s waited %v (more than %v): it queued behind osc's lock while osc waited for the shadow", a.worstWhat, a.worst, limit)
	}
	a.mu.Unlock()
	e.assertMatchesRef(t)
	e.assertNoLeftovers(t, "t", "table _t_old")
}
