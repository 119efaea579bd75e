package pgdb

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/verify"
)

func (e *Engine) openView(ctx context.Context) (verify.View, error) {
	return e.VerifyView(ctx, 2*time.Second, func(context.Context) error { return nil }, func() {})
}

// TestVerifyFindsAndRepairsDifferences runs verification on an integer key
// (an analyzed table: once the whole table differs, both sides are hashed
// in one scan each, into key buckets) and on a text key (a range query per
// chunk).
func TestVerifyFindsAndRepairsDifferences(t *testing.T) {
	for _, tc := range []struct {
		name, keyType string
		idOf          string // the id of row i, in SQL
		keyOf         string // a key literal, from an int
		prepare       string
		chunks        int // compared when some differ
	}{
		// Six buckets, and a seventh for the shadow's extra row past the last.
		{name: "integer key, swept", keyType: "int", idOf: "i", keyOf: "%d", prepare: "ANALYZE t", chunks: 7},
		{name: "text key, chunked", keyType: "text", idOf: "lpad(i::text, 5, '0')", keyOf: "'%05d'", chunks: 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testVerify(t, tc.keyType, tc.idOf, func(n int) string { return fmt.Sprintf(tc.keyOf, n) }, tc.prepare, tc.chunks)
		})
	}
}

func testVerify(t *testing.T, keyType, idOf string, key func(int) string, prepare string, chunks int) {
	e, db := shadowEngine(t, "CREATE TABLE t (id "+keyType+" PRIMARY KEY, name text, n int, d numeric(10,2))",
		"ALTER COLUMN n TYPE bigint, ADD COLUMN z int NOT NULL DEFAULT 9")
	if _, err := db.Exec(`INSERT INTO t SELECT ` + idOf + `, 'café' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE i END, i / 3.0 FROM generate_series(1, 3000) i`); err != nil {
		t.Fatal(err)
	}
	if prepare != "" {
		if _, err := db.Exec(prepare); err != nil {
			t.Fatal(err)
		}
	}
	// A faithful copy, as the copy's SQL would make it.
	if _, err := db.Exec(`INSERT INTO _t_new (id, name, n, d) SELECT id, name, n, d FROM t`); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	opts := verify.Options{ChunkSize: 400, Rounds: 3}
	res, err := verify.Run(ctx, e.openView, e.Repair, opts, zap.NewNop())
	if err != nil || res.Repaired != 0 || res.Chunks != 1 {
		t.Fatalf("a faithful copy: err %v, result %+v; want the whole table compared at once, equal", err, res)
	}
	// A changed value, a NULL that was not, an empty string that was NULL,
	// a missing row and an extra row past the last key: what a lost or
	// misapplied event would leave.
	for _, stmt := range []string{
		"UPDATE t SET name = NULL WHERE id = " + key(700),
		"UPDATE _t_new SET name = '' WHERE id = " + key(700),
		"UPDATE _t_new SET name = 'cafe5' WHERE id = " + key(5),
		"UPDATE _t_new SET n = NULL WHERE id = " + key(1200),
		"DELETE FROM _t_new WHERE id = " + key(2222),
		"INSERT INTO _t_new (id, name, n, d) VALUES (" + key(9999) + ", 'x', 1, 1)",
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := verify.Run(ctx, e.openView, func(context.Context, verify.Chunk) error { return nil }, opts, zap.NewNop()); err == nil ||
		!strings.Contains(err.Error(), "5 chunk(s)") || res.Chunks != chunks {
		t.Fatalf("unrepaired differences: got %v after comparing %d chunks, want a failure counting 5 chunks of %d", err, res.Chunks, chunks)
	}
	res, err = verify.Run(ctx, e.openView, e.Repair, opts, zap.NewNop())
	if err != nil || res.Repaired != 5 {
		t.Fatalf("repair: err %v, result %+v; want 5 chunks repaired", err, res)
	}
	if got := rows(t, db, `SELECT count(*) FROM t FULL JOIN _t_new s USING (id)
		WHERE s.id IS NULL OR t.id IS NULL OR (t.name, t.n, t.d) IS DISTINCT FROM (s.name, s.n, s.d)`); got != "0" {
		t.Fatalf("after repair %s rows differ", got)
	}
}

// TestVerifySeesEveryColumnType changes one value at a time in the shadow,
// for each kind of column the row hash treats differently (hashed as a
// value, compared as text, under a case-insensitive collation), and
// expects verification to find it.
func TestVerifySeesEveryColumnType(t *testing.T) {
	e, db := shadowEngine(t, `CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
		CREATE TABLE t (id int PRIMARY KEY, b bool, c "char", i2 int2, i4 int4, i8 int8, o oid, tx text, bp char(5), vc varchar(10),
			ci text COLLATE ci, tm time, ts timestamp, tz timestamptz, u uuid, n numeric, d date, f float8, j jsonb, a int[])`,
		"ADD COLUMN z int")
	if _, err := db.Exec(`INSERT INTO t SELECT i, i % 2 = 0, 'x', i, i, i, i, 't' || i, 'b' || i, 'v' || i, 'abc', '10:00', '2026-01-01', '2026-01-01 00:00+00',
		md5(i::text)::uuid, 1.5, '2026-01-01', 0.5, '{"k": 1}', '{1,2}' FROM generate_series(1, 100) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`ANALYZE t; INSERT INTO _t_new (id, b, c, i2, i4, i8, o, tx, bp, vc, ci, tm, ts, tz, u, n, d, f, j, a)
		SELECT id, b, c, i2, i4, i8, o, tx, bp, vc, ci, tm, ts, tz, u, n, d, f, j, a FROM t`); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	opts := verify.Options{ChunkSize: 10, Rounds: 1}
	noRepair := func(context.Context, verify.Chunk) error { return nil }
	if _, err := verify.Run(ctx, e.openView, noRepair, opts, zap.NewNop()); err != nil {
		t.Fatalf("a faithful copy: %v", err)
	}
	for col, value := range map[string]string{
		"b": "NOT b", "c": `'y'`, "i2": "i2 + 1", "i4": "NULL", "i8": "-i8", "o": "(o::int8 + 1)::oid", "tx": "tx || ' '", "bp": "'B' || id",
		"vc": "upper(vc)", "ci": "'ABC'", "tm": "'10:00:01'", "ts": "ts + interval '1 microsecond'", "tz": "tz - interval '1 hour'",
		"u": "md5('x')::uuid", "n": "1.50", "d": "'infinity'", "f": "-0.5", "j": `'{"k": 1.0}'`, "a": "'{2,1}'",
	} {
		if _, err := db.Exec("UPDATE _t_new SET " + col + " = " + value + " WHERE id = 42"); err != nil {
			t.Fatal(err)
		}
		if _, err := verify.Run(ctx, e.openView, noRepair, opts, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "1 chunk(s)") {
			t.Errorf("column %s set to %s in the shadow: verification says %v, want one chunk differing", col, value, err)
		}
		if _, err := db.Exec("UPDATE _t_new s SET " + col + " = t." + col + " FROM t WHERE s.id = 42 AND t.id = 42"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLockTxWaitsOutMaintenance: the maintenance lock waits up to twice
// deadlock_timeout (1s here), which is when the deadlock check has
// cancelled an autovacuum in the way, even with a shorter lock timeout;
// the caller's later lock waits get the lock timeout.
func TestLockTxWaitsOutMaintenance(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id int PRIMARY KEY)", "ADD COLUMN z int")
	ctx := context.Background()
	for _, tc := range []struct {
		hold time.Duration
		ok   bool
	}{{1400 * time.Millisecond, true}, {3 * time.Second, false}} {
		holder, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		// An ANALYZE holds this lock as an autovacuum would.
		if _, err := holder.Exec("LOCK TABLE _t_new IN SHARE UPDATE EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(tc.hold, func() { holder.Commit() })
		start := time.Now()
		tx, err := e.lockTx(ctx, time.Second)
		took := time.Since(start)
		if !tc.ok {
			if err == nil || !isLockTimeout(err) || took > 2500*time.Millisecond {
				t.Errorf("maintenance holding the lock for %v: lockTx returned %v after %v, want a lock timeout after about 2s", tc.hold, err, took)
			}
			if tx != nil {
				tx.Rollback(ctx)
			}
			time.Sleep(tc.hold - took)
			continue
		}
		if err != nil {
			t.Fatalf("maintenance holding the lock for %v: lockTx failed after %v: %v", tc.hold, took, err)
		}
		var timeout string
		if err := tx.QueryRow(ctx, "SHOW lock_timeout").Scan(&timeout); err != nil {
			t.Fatal(err)
		}
		tx.Rollback(ctx)
		if took < tc.hold-100*time.Millisecond || timeout != "1s" {
			t.Errorf("lockTx took %v (the lock was held %v) and left lock_timeout %s, want it granted on release and 1s after", took, tc.hold, timeout)
		}
	}
}
