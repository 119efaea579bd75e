package pgoutput

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// holder imports the slot's exported snapshot into a read-only REPEATABLE
// READ transaction that stays open, as pgdb does for its copy.
type holder struct {
	conn *pgx.Conn
}

func (f *fixture) holder(t *testing.T) (*holder, func(ctx context.Context, name string) error) {
	h := &holder{}
	return h, func(ctx context.Context, name string) error {
		c, err := pgx.Connect(ctx, f.pg.DSN(f.dbName))
		if err != nil {
			return err
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		if _, err := c.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '"+name+"'"); err != nil {
			return err
		}
		h.conn = c
		return nil
	}
}

func (h *holder) ids(t *testing.T) string {
	t.Helper()
	var s string
	if err := h.conn.QueryRow(context.Background(), "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestExportedSnapshotIsTheConsistentPoint: a transaction running while the
// slot is created (which waits for it) and committing before its
// consistent point is in the exported snapshot and not in the stream; one
// committing after the slot exists is in the stream and not in the
// snapshot, even while the snapshot is read after it.
func TestExportedSnapshotIsTheConsistentPoint(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	f.exec(t, "INSERT INTO t VALUES (1), (2)")
	running, err := f.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer running.Rollback()
	if _, err := running.Exec("INSERT INTO t VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	h, hold := f.holder(t)
	f.cfg.Snapshot = hold
	started := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		r, err := Start(ctx, f.cfg)
		if err == nil {
			t.Cleanup(func() { r.Close() })
			f.r = r
		}
		started <- err
	}()
	select {
	case err := <-started:
		t.Fatalf("the slot was created while a transaction with a write was running: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := running.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-started; err != nil {
		t.Fatalf("Start: %v", err)
	}
	f.exec(t, "INSERT INTO t VALUES (4)", "DELETE FROM t WHERE id = 1")
	if got := h.ids(t); got != "1,2,3" {
		t.Errorf("the snapshot sees %q, want 1,2,3", got)
	}
	f.expect(t, ins("4"), commit(), del("1"), commit())
}

// TestSnapshotCallbackFails: an error importing the snapshot ends Start
// and the slot goes with the connection.
func TestSnapshotCallbackFails(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	boom := errors.New("cannot hold the snapshot")
	var got string
	f.cfg.Snapshot = func(_ context.Context, name string) error {
		got = name
		return boom
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	r, err := Start(ctx, f.cfg)
	if err == nil {
		r.Close()
		t.Fatal("Start succeeded")
	}
	if !errors.Is(err, boom) {
		t.Errorf("Start: %v, want the callback's error", err)
	}
	if got == "" {
		t.Error("the callback got no snapshot name")
	}
	waitFor(t, "the slot to go", func() bool {
		found, _, _, _ := f.slot(t)
		return !found
	})
}

// TestSnapshotExpiresAtStartReplication: the slot's own snapshot name is
// not importable once streaming starts; the holder's transaction is what
// keeps it.
func TestSnapshotExpiresAtStartReplication(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	var name string
	h, hold := f.holder(t)
	f.cfg.Snapshot = func(ctx context.Context, n string) error {
		name = n
		return hold(ctx, n)
	}
	f.start(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, f.pg.DSN(f.dbName))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '"+name+"'; COMMIT")
	if err == nil || !strings.Contains(err.Error(), "snapshot") {
		t.Errorf("importing the slot's snapshot after START_REPLICATION: %v, want an invalid snapshot", err)
	}
	f.exec(t, "INSERT INTO t VALUES (1)")
	if got := h.ids(t); got != "" {
		t.Errorf("the held snapshot sees %q, want nothing", got)
	}
	f.expect(t, ins("1"), commit())
}

// TestErrReportsTheEnd: Err is nil while the stream runs and reports its
// end at once, before Next has drained what was queued.
func TestErrReportsTheEnd(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	r := f.start(t)
	f.exec(t, "INSERT INTO t VALUES (1)")
	time.Sleep(200 * time.Millisecond)
	if err := r.Err(); err != nil {
		t.Fatalf("Err while streaming: %v", err)
	}
	f.exec(t, "TRUNCATE t")
	waitFor(t, "Err to report the TRUNCATE", func() bool { return r.Err() != nil })
	if err := r.Err(); !errors.Is(err, ErrTableChanged) {
		t.Errorf("Err: %v, want ErrTableChanged", err)
	}
	// What was queued before the failure is still delivered.
	f.expect(t, ins("1"), commit())
	if err := f.expectError(t); !errors.Is(err, ErrTableChanged) {
		t.Errorf("Next: %v", err)
	}
}
