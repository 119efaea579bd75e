package pgdb

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/osc-dev/osc/applier"
	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/replication"
	"github.com/osc-dev/osc/verify"
)

// capturing is an engine with the shadow created and capture started, as a
// run has them when the copy begins.
type capturing struct {
	e      *Engine
	db     *sql.DB
	dbName string
	stream replication.Stream
}

// startCapture creates t with ddl and the rows of fill, the shadow with
// clauses, and starts capture; before runs just before capture starts.
func startCapture(t *testing.T, ddl, fill, clauses string, before func(db *sql.DB)) *capturing {
	t.Helper()
	e, db, dbName := prepareShadow(t, clauses, func(c *Config) {
		c.MaxSlotWALBytes = 10 << 30
		c.Logger = zaptest.NewLogger(t)
	}, ddl, fill)
	if before != nil {
		before(db)
	}
	stream, err := e.StartCapture(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !e.SnapshotCopy() {
		t.Fatal("SnapshotCopy is false")
	}
	return &capturing{e: e, db: db, dbName: dbName, stream: stream}
}

// holders lists osc's client sessions idle inside a transaction (the
// copy's holder is the only one: nothing else here writes markers).
func (c *capturing) holders(t *testing.T) []string {
	t.Helper()
	return harness.Strings(t, c.db, `SELECT pid || ' xmin ' || coalesce(backend_xmin::text, '-') FROM pg_stat_activity
		WHERE datname = $1 AND application_name = 'osc' AND backend_type = 'client backend'
			AND state LIKE 'idle in transaction%'`, c.dbName)
}

func (c *capturing) one(t *testing.T, query string, args ...any) string {
	t.Helper()
	return strings.Join(harness.Strings(t, c.db, query, args...), ",")
}

// digest sums up the rows of t's columns in a table, in key order.
func digest(table string) string {
	return `SELECT count(*) || ':' || coalesce(md5(string_agg(concat_ws(',', id, v, n, md5(big)), '|' ORDER BY id)), '') FROM ONLY ` + table
}

// inSnapshot runs a query of one value in a snapshot (by name).
func (c *capturing) inSnapshot(t *testing.T, name, query string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := c.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT "+lit(name)); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(ctx, "ROLLBACK")
	var s string
	if err := conn.QueryRowContext(ctx, query).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

type openGate struct{}

func (openGate) Wait(ctx context.Context) error { return ctx.Err() }

// catchUp applies the stream up to a sync marker written now.
func (c *capturing) catchUp(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reached := make(chan struct{})
	a := applier.New(c.stream, c.e.Writer(), func(_ context.Context, m replication.Marker) error {
		if m.Kind == "sync" && m.Value == "end" {
			close(reached)
		}
		return nil
	}, 1000)
	failed := make(chan error, 1)
	go func() { failed <- a.Run(ctx) }()
	if err := c.e.WriteMarker(ctx, "sync", "end"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case err := <-failed:
		t.Fatalf("applier: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the applier did not reach the marker within 60s")
	}
	t.Logf("applied %d row changes", a.Applied())
}

const snapDDL = "CREATE TABLE t (id int PRIMARY KEY, v text, n int, big text)"

// bigValue is about 3 kB that does not compress, so it is TOASTed, and an
// update that leaves it alone streams it as unchanged.
const bigValue = "(SELECT string_agg(md5(g::text || %s), '') FROM generate_series(1, 100) g)"

// TestSnapshotCopyIsExact: with an application writing all along (inserts,
// updates, deletes, key changes, in transactions running while the slot
// is created and while chunks are copied concurrently), the copy holds
// exactly the table as of the slot's snapshot, however much of it changed
// meanwhile, and replaying the stream from the consistent point after it
// makes the shadow equal the table.
func TestSnapshotCopyIsExact(t *testing.T) {
	fill := "INSERT INTO t SELECT g, 'v' || g, g, " + fmt.Sprintf(bigValue, "g::text") + " FROM generate_series(1, 3000) g WHERE g % 3 <> 0;" +
		"INSERT INTO t SELECT g, 'fixed', 1, 'small' FROM generate_series(10001, 10010) g"
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var writes, failures int
	write := func(db *sql.DB) {
		defer wg.Done()
		r := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			default:
			}
			tx, err := db.Begin()
			if err != nil {
				failures++
				continue
			}
			for range 1 + r.IntN(3) {
				id := 1 + r.IntN(3000)
				switch r.IntN(5) {
				case 0:
					_, err = tx.Exec("INSERT INTO t VALUES ($1, 'ins', $2, "+fmt.Sprintf(bigValue, "$3::text")+") ON CONFLICT (id) DO NOTHING", id, r.IntN(100), fmt.Sprint(r.Int()))
				case 1:
					_, err = tx.Exec("UPDATE t SET v = $2, n = n + 1 WHERE id = $1", id, fmt.Sprint("upd", r.IntN(1000)))
				case 2:
					_, err = tx.Exec("DELETE FROM t WHERE id = $1", id)
				case 3:
					// A key change leaving the TOASTed value unchanged.
					_, err = tx.Exec("UPDATE t SET id = $2 WHERE id = $1 AND NOT EXISTS (SELECT FROM t WHERE id = $2)", id, 1+r.IntN(3000))
				case 4:
					_, err = tx.Exec("UPDATE t SET big = "+fmt.Sprintf(bigValue, "$2::text")+" WHERE id = $1", id, fmt.Sprint(r.Int()))
				}
				if err != nil {
					break
				}
			}
			if err != nil {
				tx.Rollback()
				failures++
				continue
			}
			if tx.Commit() == nil {
				writes++
			}
		}
	}
	c := startCapture(t, snapDDL, fill, "ADD COLUMN z int NOT NULL DEFAULT 9", func(db *sql.DB) {
		wg.Add(1)
		go write(db)
		time.Sleep(300 * time.Millisecond) // transactions run while the slot is created
	})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	snap := c.e.snap.current()
	if snap == "" {
		t.Fatal("no snapshot held after StartCapture")
	}
	if h := c.holders(t); len(h) != 1 || strings.HasSuffix(h[0], " -") {
		t.Fatalf("osc sessions idle in a transaction: %v, want the snapshot's holder with an xmin", h)
	}
	want := c.inSnapshot(t, snap, digest("t"))
	// Rows the writer leaves alone, changed between the snapshot and the
	// copy of their (last) chunk: the copy must not see any of it.
	for _, q := range []string{
		"UPDATE t SET v = 'changed', big = 'changed' WHERE id = 10005",
		"DELETE FROM t WHERE id = 10006",
		"UPDATE t SET id = 10100 WHERE id = 10007",
		"INSERT INTO t VALUES (10200, 'new', 1, 'new')",
	} {
		if _, err := c.db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)

	ctx := context.Background()
	indexes := `SELECT coalesce(string_agg(i.indexrelid::regclass || CASE WHEN i.indisprimary THEN ' primary' ELSE '' END, ', '), 'none')
		FROM pg_index i WHERE i.indrelid = '` + c.e.qt(c.e.names.shadow) + `'::regclass`
	if got := c.one(t, indexes); got != "none" {
		t.Errorf("the shadow has indexes during the copy: %s", got)
	}
	cp := copier.New(c.e.Source(), openGate{}, 37, 4)
	if err := cp.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.one(t, digest(c.e.qt(c.e.names.shadow))); got != want {
		t.Errorf("the shadow after the copy is not the table as of the snapshot:\n got %s\nwant %s", got, want)
	}
	if got := c.one(t, `SELECT string_agg(id || ' ' || v, ', ' ORDER BY id) FROM `+c.e.qt(c.e.names.shadow)+` WHERE id > 10000`); got != "10001 fixed, 10002 fixed, 10003 fixed, 10004 fixed, 10005 fixed, 10006 fixed, 10007 fixed, 10008 fixed, 10009 fixed, 10010 fixed" {
		t.Errorf("the copy saw changes made after the snapshot: %s", got)
	}
	if now := c.one(t, digest("t")); now == want {
		t.Error("the table did not change during the copy: the test proves nothing")
	}

	if err := c.e.EndCopy(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := c.one(t, indexes), indexName("n", "t_pkey")+" primary"; got != want {
		t.Errorf("the shadow's indexes after EndCopy: %s, want its key only: %s", got, want)
	}
	if h := c.holders(t); len(h) != 0 {
		t.Errorf("osc sessions still idle in a transaction after EndCopy: %v", h)
	}
	if _, err := c.e.Source().Copy(ctx, nil, copier.Key{"1"}); err == nil {
		t.Error("a chunk was copied after EndCopy")
	}

	close(stop)
	wg.Wait()
	t.Logf("the application committed %d transactions (%d rolled back)", writes, failures)
	if writes < 20 {
		t.Errorf("only %d writes: the test proves little", writes)
	}
	c.catchUp(t)
	if got, want := c.one(t, digest(c.e.qt(c.e.names.shadow))), c.one(t, digest("t")); got != want {
		t.Errorf("the shadow after catching up differs from the table:\n got %s\nwant %s", got, want)
	}
	if got := c.one(t, "SELECT count(*) FROM "+c.e.qt(c.e.names.shadow)+" WHERE z <> 9"); got != "0" {
		t.Errorf("%s shadow rows without the new column's default", got)
	}
	if err := c.e.Cleanup(ctx, false, false); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotReleased: the holder's transaction (and its xmin) ends with
// the copy, and on every other path: Cleanup after a failed copy, Cleanup
// or Close without a copy.
func TestSnapshotReleased(t *testing.T) {
	fill := "INSERT INTO t SELECT g, 'v', g, 'b' FROM generate_series(1, 500) g"
	ctx := context.Background()
	check := func(t *testing.T, c *capturing, end func() error) {
		t.Helper()
		// A worker stopped by another's failure leaves its connection in
		// a transaction until the pool closes it, in the background (and
		// the server notices after): wait a little for the count.
		settled := func(want int) []string {
			h := c.holders(t)
			for deadline := time.Now().Add(5 * time.Second); len(h) != want && time.Now().Before(deadline); h = c.holders(t) {
				time.Sleep(50 * time.Millisecond)
			}
			return h
		}
		if h := settled(1); len(h) != 1 {
			t.Fatalf("osc sessions idle in a transaction: %v, want the snapshot's holder", h)
		}
		if err := end(); err != nil {
			t.Fatal(err)
		}
		if h := settled(0); len(h) != 0 {
			t.Errorf("osc sessions still idle in a transaction: %v", h)
		}
	}
	t.Run("cleanup", func(t *testing.T) {
		c := startCapture(t, snapDDL, fill, "ADD COLUMN z int", nil)
		check(t, c, func() error { return c.e.Cleanup(ctx, false, false) })
	})
	t.Run("close", func(t *testing.T) {
		c := startCapture(t, snapDDL, fill, "ADD COLUMN z int", nil)
		check(t, c, c.e.Close)
	})
	t.Run("failed copy", func(t *testing.T) {
		c := startCapture(t, snapDDL, fill, "ADD CONSTRAINT n_small CHECK (n < 300)", nil)
		err := copier.New(c.e.Source(), openGate{}, 100, 2).Run(ctx)
		if err == nil || !strings.Contains(err.Error(), "does not fit the new definition") {
			t.Fatalf("copy: %v, want the CHECK violation", err)
		}
		check(t, c, func() error { return c.e.Cleanup(ctx, false, false) })
	})
}

// TestSnapshotCopyLocksNothingBetweenChunks: neither the holder nor the
// copy keeps a lock on the table between chunks, so DDL by others (and the
// application queued behind it) never waits for the whole copy.
func TestSnapshotCopyLocksNothingBetweenChunks(t *testing.T) {
	c, _, _, n := firstChunk(t)
	if n != 100 {
		t.Fatalf("Copy: %d rows", n)
	}
	tx, err := c.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec("LOCK TABLE t IN ACCESS EXCLUSIVE MODE NOWAIT"); err != nil {
		t.Fatalf("the table is locked between chunks: %v", err)
	}
}

// firstChunk captures a table of 500 rows and copies its first chunk of
// 100 rows: it returns the chunk's end, the copy's end and the rows
// copied.
func firstChunk(t *testing.T) (c *capturing, end, last copier.Key, n int64) {
	t.Helper()
	c = startCapture(t, snapDDL, "INSERT INTO t SELECT g, 'v', g, 'b' FROM generate_series(1, 500) g", "ADD COLUMN z int", nil)
	ctx := context.Background()
	src := c.e.Source()
	last, ok, err := src.Max(ctx)
	if err != nil || !ok {
		t.Fatalf("Max: %v %v", ok, err)
	}
	if end, _, err = src.Boundary(ctx, nil, 100, last); err != nil {
		t.Fatal(err)
	}
	if n, err = src.Copy(ctx, nil, end); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	return c, end, last, n
}

// TestStreamFailureStopsTheCopy: the applier is held during the copy, so
// it would see a failed stream only after the copy; the copy's next chunk
// reports it instead.
func TestStreamFailureStopsTheCopy(t *testing.T) {
	c := startCapture(t, snapDDL, "INSERT INTO t SELECT g, 'v', g, 'b' FROM generate_series(1, 500) g", "ADD COLUMN z int", nil)
	ctx := context.Background()
	if _, err := c.db.Exec("TRUNCATE t"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for c.e.reader.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the stream did not fail on the TRUNCATE")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err := c.e.Source().Copy(ctx, nil, copier.Key{"100"})
	if err == nil || !strings.Contains(err.Error(), "TRUNCATE") {
		t.Errorf("Copy: %v, want the stream's failure", err)
	}
}

// TestRepairWaitsOutRowLocks: a repair runs while the applier applies the
// stream, so it reads the table under row locks: it waits for a row an
// application transaction is updating and copies the version it commits.
func TestRepairWaitsOutRowLocks(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id int PRIMARY KEY, v text)", "ADD COLUMN z int")
	if _, err := db.Exec("INSERT INTO t SELECT g, 'old' FROM generate_series(1, 10) g"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO "_t_new" (id, v) VALUES (5, 'stale'), (11, 'outside')`); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec("UPDATE t SET v = 'new' WHERE id = 5"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Repair(ctx, verify.Chunk{End: copier.Key{"10"}}) }()
	select {
	case err := <-done:
		t.Fatalf("the repair finished while a row of its chunk was being updated: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := rows(t, db, `SELECT string_agg(id || v, ',' ORDER BY id) FROM "_t_new" WHERE id IN (4, 5, 11)`); got != "4old,5new,11outside" {
		t.Errorf("shadow after the repair: %s", got)
	}
	if got := rows(t, db, `SELECT count(*) FROM "_t_new"`); got != "11" {
		t.Errorf("%s shadow rows, want 11", got)
	}
}

// TestCopyWithoutSnapshot: Copy refuses to run outside the snapshot
// rather than copy the table's latest rows without locks.
func TestCopyWithoutSnapshot(t *testing.T) {
	e, _ := shadowEngine(t, "CREATE TABLE t (id int PRIMARY KEY, v text)", "ADD COLUMN z int")
	_, err := e.Source().Copy(context.Background(), nil, copier.Key{"10"})
	if err == nil || !strings.Contains(err.Error(), "snapshot") {
		t.Errorf("Copy without capture: %v", err)
	}
}

// TestCopyNoticesARewrite: the copy holds no lock between chunks, so
// someone's VACUUM FULL can rewrite the table mid-copy and move its rows
// to other positions; EndCopy must refuse to go on.
func TestCopyNoticesARewrite(t *testing.T) {
	c, end, last, _ := firstChunk(t)
	ctx := context.Background()
	if _, err := c.db.Exec("VACUUM FULL t"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.e.Source().Copy(ctx, end, last); err != nil {
		t.Fatal(err)
	}
	if err := c.e.EndCopy(ctx); err == nil || !strings.Contains(err.Error(), "file was replaced during the copy") {
		t.Fatalf("EndCopy after a VACUUM FULL mid-copy: %v, want the rewrite named", err)
	}
}

// TestCopyChunksHoldTheirSize: chunks are ranges of row positions, yet
// each holds exactly its size in rows of the snapshot, on a table whose
// rows are stored out of key order, between dead rows and behind newer
// versions the snapshot does not see; together they hold the table.
func TestCopyChunksHoldTheirSize(t *testing.T) {
	fill := "INSERT INTO t SELECT g, 'v', g, 'b' FROM generate_series(1, 600) g ORDER BY random();" +
		"DELETE FROM t WHERE id % 3 = 0;" +
		"UPDATE t SET n = -n WHERE id % 5 = 0"
	c := startCapture(t, snapDDL, fill, "ADD COLUMN z int", nil)
	want := c.inSnapshot(t, c.e.snap.current(), digest("t"))
	if _, err := c.db.Exec("UPDATE t SET v = 'after' WHERE id % 7 = 0"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	src := c.e.Source()
	last, ok, err := src.Max(ctx)
	if err != nil || !ok {
		t.Fatalf("Max: %v %v", ok, err)
	}
	var after copier.Key
	var sizes []int64
	for done := false; !done; {
		var end copier.Key
		end, done, err = src.Boundary(ctx, after, 7, last)
		if err != nil {
			t.Fatal(err)
		}
		n, err := src.Copy(ctx, after, end)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n)
		after = end
	}
	var total int64
	for i, n := range sizes {
		total += n
		if n != 7 && (i < len(sizes)-2 || n > 7) {
			t.Fatalf("chunk %d of %d holds %d rows, want 7: %v", i, len(sizes), n, sizes)
		}
	}
	if total != 400 {
		t.Errorf("the chunks hold %d rows, want 400", total)
	}
	if got := c.one(t, digest(c.e.qt(c.e.names.shadow))); got != want {
		t.Errorf("the shadow after the copy is not the table as of the snapshot:\n got %s\nwant %s", got, want)
	}
}
