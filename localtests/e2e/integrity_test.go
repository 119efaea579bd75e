package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/osc-dev/osc/localtests/harness"
)

// The source table of the integrity tests. It is latin1 (so CONVERT TO
// CHARACTER SET really transcodes), with a utf8mb4 column holding emoji, a
// nullable INT, a column that one case drops, and secondary indexes of
// several shapes, which osc builds after the copy (their definitions must
// come back exactly).
const integritySchema = `CREATE TABLE t (
	id BIGINT NOT NULL,
	n INT NULL,
	v INT NOT NULL,
	s VARCHAR(64) NOT NULL,
	u VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
	d VARCHAR(32) NULL,
	PRIMARY KEY (id),
	KEY n_v (n, v DESC),
	` + "KEY `s pre``fix` (s(10)) COMMENT 'prefix index'" + `
) ENGINE=InnoDB DEFAULT CHARSET=latin1 COLLATE=latin1_swedish_ci`

const (
	preloadRows = 20000
	numWriters  = 4
	writerPause = 2 * time.Millisecond // between a writer's transactions
)

// Non-ASCII text representable in latin1 (MariaDB's latin1 is cp1252, so
// '€' is too).
var latin1Words = []string{"café", "Ærø", "naïve", "Größe", "€uro", "ÿes", "plain", "señor", "Ål"}

var utf8Words = []string{"😀", "👍🏽", "中文", "ñ", "Ω", "👨‍👩‍👧", "ascii"}

type integrityCase struct {
	name  string
	alter string
	// common are the non-key columns present in both shapes: the only ones
	// the writers touch.
	common []string
	// want are substrings SHOW CREATE TABLE t must contain afterwards.
	want []string
	// notWant are substrings it must not contain.
	notWant []string
	// columns is the expected column order afterwards (nil: not checked
	// beyond the comparison with ref).
	columns []string
}

var integrityCases = []integrityCase{
	{
		name:   "add_column_default",
		alter:  "ADD COLUMN extra INT NOT NULL DEFAULT 7",
		common: []string{"n", "v", "s", "u", "d"},
		want:   []string{"`extra` int(11) NOT NULL DEFAULT 7"},
	},
	{
		name:    "drop_column",
		alter:   "DROP COLUMN d",
		common:  []string{"n", "v", "s", "u"},
		notWant: []string{"`d`"},
		columns: []string{"id", "n", "v", "s", "u"},
	},
	{
		name:   "int_to_bigint",
		alter:  "MODIFY v BIGINT NOT NULL",
		common: []string{"n", "v", "s", "u", "d"},
		want:   []string{"`v` bigint(20) NOT NULL"},
	},
	{
		name:   "add_index",
		alter:  "ADD INDEX v_s (v, s)",
		common: []string{"n", "v", "s", "u", "d"},
		want:   []string{"KEY `v_s` (`v`,`s`)"},
	},
	{
		name:    "convert_charset",
		alter:   "CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
		common:  []string{"n", "v", "s", "u", "d"},
		want:    []string{"DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"},
		notWant: []string{"latin1"},
	},
	{
		name:    "reorder_columns",
		alter:   "MODIFY COLUMN s VARCHAR(64) NOT NULL AFTER id, MODIFY COLUMN d VARCHAR(32) NULL FIRST",
		common:  []string{"n", "v", "s", "u", "d"},
		columns: []string{"d", "id", "s", "n", "v", "u"},
	},
}

// TestIntegrityUnderConcurrentWrites runs each ALTER while four writers
// insert, update, delete and move rows (primary key changes). Every write
// goes to t and to a reference table ref (created with the post-ALTER
// shape) in the same transaction, so after the run t, which is then the
// new table, must equal ref exactly.
func TestIntegrityUnderConcurrentWrites(t *testing.T) {
	for _, tc := range integrityCases {
		t.Run(tc.name, func(t *testing.T) { testIntegrity(t, tc) })
	}
}

func testIntegrity(t *testing.T, tc integrityCase) {
	e := newEnv(t)
	e.exec(integritySchema)
	e.exec(fmt.Sprintf(`INSERT INTO t (id, n, v, s, u, d)
		SELECT seq, IF(seq %% 7 = 0, NULL, seq * 3), CAST(seq %% 1000 AS SIGNED) - 500,
			CONCAT(ELT(1 + seq %% 5, 'café', 'Ærø', 'naïve', '€uro', 'plain'), '-', seq),
			IF(seq %% 5 = 0, NULL, CONCAT('ü😀', seq)),
			IF(seq %% 3 = 0, NULL, CONCAT('d', seq))
		FROM seq_1_to_%d`, preloadRows))
	e.exec("CREATE TABLE ref LIKE t")
	e.exec("ALTER TABLE ref " + tc.alter)
	common := strings.Join(append([]string{"id"}, tc.common...), ", ")
	e.exec("INSERT INTO ref (" + common + ") SELECT " + common + " FROM t")
	origCreate := e.showCreate("t")
	wantCreate := strings.Replace(e.showCreate("ref"), "CREATE TABLE `ref`", "CREATE TABLE `t`", 1)
	refColumns := harness.Columns(t, e.db, "ref")

	w := newWriters(e, tc.common, preloadRows)
	wctx, stopWriters := context.WithCancel(context.Background())
	defer stopWriters()
	w.start(wctx, numWriters)
	time.Sleep(200 * time.Millisecond) // writers are in full swing before the run starts

	o := e.options(tc.alter)
	o.ChunkSize = 500
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before := w.snapshot()
	began := time.Now()
	r := <-runAsync(ctx, o)
	took := time.Since(began)
	during := w.snapshot().minus(before)
	time.Sleep(time.Second) // keep writing to the new table for a while
	stopWriters()
	w.wait()
	t.Logf("run took %v (copied %d rows, applied %d events); writes committed during the run: %s; in all: %s; retried after deadlock or lock wait timeout: %d",
		took.Round(time.Millisecond), resField(r, func(x runResult) int64 { return x.res.RowsCopied }),
		resField(r, func(x runResult) int64 { return x.res.EventsApplied }), during, w.snapshot(), w.retries.Load())

	if werr := w.failure(); werr != "" {
		t.Errorf("writers: %s", werr)
	}
	assertApplied(t, r.res, r.err)

	// The writers must have exercised the run, or the comparison proves little.
	if during.total() < 100 {
		t.Errorf("only %d writes committed while the run was going (%s); want at least 100", during.total(), during)
	}
	for op := range numOps {
		if during[op] < 5 {
			t.Errorf("only %d %s writes committed while the run was going; want at least 5 of each kind (%s)", during[op], opNames[op], during)
		}
	}
	if r.res.EventsApplied == 0 {
		t.Errorf("Result.EventsApplied = 0 although the writers committed %d writes during the run", during.total())
	}

	// The copy ran without the secondary indexes (the definition check
	// below shows they came back).
	if got := e.logs.matching("built after the copy"); !strings.Contains(got, "n_v") || !strings.Contains(got, "s pre`fix") {
		t.Errorf("osc did not build the secondary indexes n_v and `s pre``fix` after the copy; log: %s", got)
	}
	// t is now the new table: it must hold exactly what ref holds.
	e.assertSameChecksum("t", "ref", refColumns, []string{"id"})
	if a, b := e.count("t"), e.count("ref"); a != b {
		t.Errorf("t has %d rows, ref has %d", a, b)
	}
	if got := harness.Columns(t, e.db, "t"); !slices.Equal(got, refColumns) {
		t.Errorf("columns of t after the run = %v, want %v (as ref)", got, refColumns)
	}
	if tc.columns != nil && !slices.Equal(refColumns, tc.columns) {
		t.Errorf("test setup: ref's columns = %v, want %v", refColumns, tc.columns)
	}
	gotCreate := e.showCreate("t")
	if gotCreate != wantCreate {
		t.Errorf("SHOW CREATE TABLE t after the run:\n%s\nwant (ref's definition):\n%s", gotCreate, wantCreate)
	}
	for _, s := range tc.want {
		if !strings.Contains(gotCreate, s) {
			t.Errorf("SHOW CREATE TABLE t after the run does not contain %q:\n%s", s, gotCreate)
		}
	}
	for _, s := range tc.notWant {
		if strings.Contains(gotCreate, s) {
			t.Errorf("SHOW CREATE TABLE t after the run contains %q:\n%s", s, gotCreate)
		}
	}
	e.assertCleanedUp("ref")
	if e.tableExists("_t_old") {
		if got, want := e.showCreate("_t_old"), strings.Replace(origCreate, "CREATE TABLE `t`", "CREATE TABLE `_t_old`", 1); got != want {
			t.Errorf("_t_old is not the original table:\n%s\nwant:\n%s", got, want)
		}
	}
}

func resField(r runResult, f func(runResult) int64) int64 {
	if r.res == nil {
		return -1
	}
	return f(r)
}

// Writer operations.
const (
	opInsert = iota
	opUpdate
	opDelete
	opMoveKey // UPDATE that changes the primary key
	numOps
)

var opNames = [numOps]string{"insert", "update", "delete", "key-change"}

type opCounts [numOps]int64

func (c opCounts) total() int64 {
	var n int64
	for _, v := range c {
		n += v
	}
	return n
}

func (c opCounts) minus(d opCounts) opCounts {
	for i := range c {
		c[i] -= d[i]
	}
	return c
}

func (c opCounts) String() string {
	var parts []string
	for i, v := range c {
		parts = append(parts, fmt.Sprintf("%s=%d", opNames[i], v))
	}
	return strings.Join(parts, " ")
}

// writers apply random changes to t and ref in the same transactions.
type writers struct {
	e      *env
	cols   []string
	nextID atomic.Int64 // last id handed out
	done   [numOps]atomic.Int64
	// retries counts transactions retried after a deadlock or lock wait
	// timeout (not counted as writes).
	retries atomic.Int64
	wg      sync.WaitGroup

	mu   sync.Mutex
	errs []string
}

func newWriters(e *env, cols []string, maxID int64) *writers {
	w := &writers{e: e, cols: cols}
	w.nextID.Store(maxID)
	return w
}

func (w *writers) start(ctx context.Context, n int) {
	for i := range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.loop(ctx, rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))))
		}()
	}
}

func (w *writers) wait() { w.wg.Wait() }

func (w *writers) snapshot() opCounts {
	var c opCounts
	for i := range c {
		c[i] = w.done[i].Load()
	}
	return c
}

func (w *writers) fail(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) < 10 {
		w.errs = append(w.errs, fmt.Sprintf(format, args...))
	}
}

// failure is what went wrong in the writers, "" if nothing.
func (w *writers) failure() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.errs, "; ")
}

func (w *writers) loop(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		var op int
		switch p := rng.IntN(100); {
		case p < 30:
			op = opInsert
		case p < 70:
			op = opUpdate
		case p < 85:
			op = opDelete
		default:
			op = opMoveKey
		}
		for attempt := 0; ; attempt++ {
			changed, err := w.apply(ctx, rng, op)
			if err != nil && ctx.Err() != nil {
				return
			}
			if err != nil && retryable(err) && attempt < 20 {
				w.retries.Add(1)
				continue
			}
			if err != nil {
				w.fail("%s: %v", opNames[op], err)
				return
			}
			if changed {
				w.done[op].Add(1)
			}
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(writerPause):
		}
	}
}

// value returns a random value for a column (nil is NULL).
func value(rng *rand.Rand, col string) any {
	switch col {
	case "n":
		if rng.IntN(5) == 0 {
			return nil
		}
		return int32(rng.Uint32()) // any INT, negative ones included
	case "v":
		return rng.Int32N(2_000_000) - 1_000_000
	case "s":
		return fmt.Sprintf("%s %s-%d", latin1Words[rng.IntN(len(latin1Words))], latin1Words[rng.IntN(len(latin1Words))], rng.IntN(1_000_000))
	case "u":
		if rng.IntN(5) == 0 {
			return nil
		}
		return fmt.Sprintf("%s%s%d", utf8Words[rng.IntN(len(utf8Words))], utf8Words[rng.IntN(len(utf8Words))], rng.IntN(1000))
	case "d":
		if rng.IntN(3) == 0 {
			return nil
		}
		return fmt.Sprintf("d%d", rng.IntN(1_000_000))
	}
	panic("no generator for column " + col)
}

// apply runs one random change on t and ref in one transaction, and
// reports whether it changed a row. The two tables must agree on how many
// rows each statement changed: they hold the same rows.
func (w *writers) apply(ctx context.Context, rng *rand.Rand, op int) (changed bool, err error) {
	var query string
	var args []any
	randomID := func() int64 {
		last := w.nextID.Load()
		if rng.IntN(5) == 0 {
			// Recent rows: those the stream alone brings to the new table,
			// and rows changed again soon after being inserted or moved.
			return last - rng.Int64N(50)
		}
		return 1 + rng.Int64N(last)
	}
	switch op {
	case opInsert:
		cols := append([]string{"id"}, w.cols...)
		args = append(args, w.nextID.Add(1))
		for _, c := range w.cols {
			args = append(args, value(rng, c))
		}
		query = "INSERT INTO %s (" + strings.Join(cols, ", ") + ") VALUES (?" + strings.Repeat(", ?", len(w.cols)) + ")"
	case opUpdate:
		// A random subset (at least one) of the columns.
		var sets []string
		for len(sets) == 0 {
			for _, c := range w.cols {
				if rng.IntN(2) == 0 {
					sets = append(sets, c+" = ?")
					args = append(args, value(rng, c))
				}
			}
		}
		args = append(args, randomID())
		query = "UPDATE %s SET " + strings.Join(sets, ", ") + " WHERE id = ?"
	case opDelete:
		args = append(args, randomID())
		query = "DELETE FROM %s WHERE id = ?"
	case opMoveKey:
		// Half of the moves also change a column.
		c := w.cols[rng.IntN(len(w.cols))]
		if rng.IntN(2) == 0 {
			query = "UPDATE %s SET id = ?, " + c + " = ? WHERE id = ?"
			args = append(args, w.nextID.Add(1), value(rng, c), randomID())
		} else {
			query = "UPDATE %s SET id = ? WHERE id = ?"
			args = append(args, w.nextID.Add(1), randomID())
		}
	}
	tx, err := w.e.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	var affected [2]int64
	// Always t first, then ref: a fixed order keeps the writers from
	// deadlocking on each other more than necessary.
	for i, table := range []string{"t", "ref"} {
		res, err := tx.ExecContext(ctx, fmt.Sprintf(query, table), args...)
		if err != nil {
			return false, err
		}
		if affected[i], err = res.RowsAffected(); err != nil {
			return false, err
		}
	}
	if err := tx.Commit(); err != nil {
		return false, err
	}
	if affected[0] != affected[1] {
		w.fail("%s (args %v) changed %d rows of t but %d of ref: t lost or gained rows", abbrev(fmt.Sprintf(query, "t")), args, affected[0], affected[1])
	}
	return affected[0] > 0, nil
}
