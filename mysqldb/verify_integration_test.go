package mysqldb

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/verify"
)

type noGate struct{}

func (noGate) Wait(context.Context) error { return nil }

func (e *Engine) openView(ctx context.Context) (verify.View, error) {
	return e.VerifyView(ctx, 2*time.Second, func(context.Context) error { return nil }, func() {})
}

func TestVerifyFindsAndRepairsDifferences(t *testing.T) {
	e, db := shadowEngine(t, `CREATE TABLE t (id INT NOT NULL PRIMARY KEY, name VARCHAR(20) CHARACTER SET latin1 NULL, n INT NULL, d DECIMAL(10,2) NULL)`,
		"MODIFY n BIGINT NULL, CONVERT TO CHARACTER SET utf8mb4, MODIFY d DECIMAL(12,4) NULL")
	if _, err := db.Exec("INSERT INTO t SELECT seq, CONCAT(CONVERT(X'636166E9' USING latin1), seq), IF(seq % 7 = 0, NULL, seq), seq / 3 FROM seq_1_to_3000"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := copier.New(e.Source(), noGate{}, 500, 1).Run(ctx); err != nil {
		t.Fatal(err)
	}
	opts := verify.Options{ChunkSize: 400, Rounds: 3}
	res, err := verify.Run(ctx, e.openView, e.Repair, opts, zap.NewNop())
	if err != nil || res.Repaired != 0 || res.Chunks != 1 {
		t.Fatalf("a faithful copy: err %v, result %+v; want the whole table compared at once, equal", err, res)
	}
	// A changed value, a NULL that was not, an empty string that was NULL,
	// a missing row and an extra row past the last key: what a lost or
	// misapplied event would leave.
	for _, stmt := range []string{
		"UPDATE t SET name = NULL WHERE id = 700",
		"UPDATE _t_new SET name = '' WHERE id = 700",
		"UPDATE _t_new SET name = 'cafe5' WHERE id = 5",
		"UPDATE _t_new SET n = NULL WHERE id = 1200",
		"DELETE FROM _t_new WHERE id = 2222",
		"INSERT INTO _t_new (id, name, n, d) VALUES (9999, 'x', 1, 1)",
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := verify.Run(ctx, e.openView, func(context.Context, verify.Chunk) error { return nil }, opts, zap.NewNop()); err == nil ||
		!strings.Contains(err.Error(), "5 chunk(s)") || res.Chunks != 8 {
		t.Fatalf("unrepaired differences: got %v after comparing %d chunks, want a failure counting 5 chunks of 8", err, res.Chunks)
	}
	res, err = verify.Run(ctx, e.openView, e.Repair, opts, zap.NewNop())
	if err != nil || res.Repaired != 5 {
		t.Fatalf("repair: err %v, result %+v; want 5 chunks repaired", err, res)
	}
	diff := harness.Strings(t, db, `SELECT COUNT(*) FROM t LEFT JOIN _t_new s ON s.id = t.id
		WHERE s.id IS NULL OR NOT (CONVERT(t.name USING utf8mb4) <=> s.name) OR NOT (t.n <=> s.n) OR NOT (t.d <=> s.d)`)
	extra := harness.Strings(t, db, "SELECT COUNT(*) FROM _t_new s LEFT JOIN t ON t.id = s.id WHERE t.id IS NULL")
	if diff[0] != "0" || extra[0] != "0" {
		t.Fatalf("after repair %s rows differ and %s extra rows remain", diff[0], extra[0])
	}
}

// TestKillOnCancel: a statement cancelled by its context is killed on the
// server (a verification checksum or an index build would otherwise run
// on to its end, holding its snapshot or its locks).
func TestKillOnCancel(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY)", "ADD COLUMN z INT NULL")
	ctx := context.Background()
	c, err := e.data.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id, err := connID(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = e.killOnCancel(cctx, id, func(ctx context.Context) error {
		_, err := c.ExecContext(ctx, "DO SLEEP(10)")
		return err
	})
	if took := time.Since(start); err == nil || took > 3*time.Second {
		t.Fatalf("cancelled after 300ms: returned %v after %v, want the context's error within a few seconds", err, took)
	}
	if got := harness.Strings(t, db, "SELECT COMMAND FROM information_schema.PROCESSLIST WHERE ID = ?", id); len(got) != 1 || got[0] != "Sleep" {
		t.Errorf("the cancelled statement's connection is %v, want idle (Sleep)", got)
	}
}
