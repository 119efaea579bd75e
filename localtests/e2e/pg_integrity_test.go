package e2e

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// The PostgreSQL integrity tests' source table. The key is a plain bigint
// so that the writers can change it; the identity column is a second
// column (an ALWAYS identity cannot be updated). big holds ~10 kB of
// random text in every tenth row (TOASTed, out of line), so updates of
// other columns stream it as an unchanged TOAST value; g is a STORED
// generated column; u is kept unique by the writers.
const pgIntegritySchema = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ecstatic');
CREATE TABLE t (
	id bigint PRIMARY KEY,
	seq bigint GENERATED ALWAYS AS IDENTITY,
	big text,
	doc jsonb,
	tags int[],
	m mood,
	amount numeric(20,6),
	at timestamptz,
	bin bytea,
	n int,
	s text NOT NULL,
	digits text,
	u text,
	d text,
	g bigint GENERATED ALWAYS AS (length(s) * 1000 + coalesce(cardinality(tags), 0)) STORED
);
CREATE INDEX t_s_idx ON t (s);
CREATE SCHEMA want;
CREATE TABLE want.t (
	id bigint PRIMARY KEY,
	seq bigint NOT NULL,
	big text,
	doc jsonb,
	tags int[],
	m mood,
	amount numeric(20,6),
	at timestamptz,
	bin bytea,
	n int,
	s text NOT NULL,
	digits text,
	u text,
	d text,
	g bigint GENERATED ALWAYS AS (length(s) * 1000 + coalesce(cardinality(tags), 0)) STORED
);
CREATE INDEX t_s_idx ON want.t (s);`

// pgPreload fills t with pgPreloadRows rows covering every kind of value,
// NULLs included; big is a different rotation of 10 kB of md5 text in
// every tenth row.
const pgPreload = `INSERT INTO t (id, big, doc, tags, m, amount, at, bin, n, s, digits, u, d)
SELECT i,
	CASE WHEN i % 10 = 0 THEN i || ':' || substr(b, 1 + i % 5000) || substr(b, 1, i % 5000) END,
	CASE WHEN i % 4 <> 0 THEN jsonb_build_object('i', i, 'tag', 'ü"' || i, 'arr', jsonb_build_array(i, i * 2, NULL)) END,
	CASE WHEN i % 6 <> 0 THEN ARRAY[i, NULL, -i] END,
	(enum_range(NULL::mood))[1 + i % 4],
	(i * 1234.567891)::numeric(20,6),
	CASE WHEN i % 9 <> 0 THEN timestamptz '2020-01-01 00:00:00+00' + i * interval '37 minutes 13.123456 seconds' END,
	CASE WHEN i % 5 <> 0 THEN decode(lpad(to_hex(i), 8, '0') || '00ff00', 'hex') END,
	CASE WHEN i % 7 <> 0 THEN (i * 7919) % 2000000 - 1000000 END,
	'row ' || i || ' ''q'' \ ü',
	CASE WHEN i % 8 <> 0 THEN ((i * 31) % 100000)::text END,
	CASE WHEN i % 3 <> 0 THEN 'u-' || i END,
	CASE WHEN i % 2 <> 0 THEN 'd' || i END
FROM generate_series(1, {rows}) i,
	(SELECT string_agg(md5(j::text), '') AS b FROM generate_series(1, 320) j) AS random_text`

const (
	pgPreloadRows = 20000
	pgNumWriters  = 4
	// pgWriterPause keeps the writers' rate (a few hundred writes a
	// second in all) below what the applier sustains on a busy machine:
	// a stream that outruns the applier never lets the run settle.
	pgWriterPause = 20 * time.Millisecond
	// pgPauseWrites is how many writes commit while the copy is held by
	// the throttle flag, before it starts and again in its middle.
	pgPauseWrites = 100
)

// pgAllColumns are t's columns the writers can write (not id, seq, g).
var pgAllColumns = []string{"big", "doc", "tags", "m", "amount", "at", "bin", "n", "s", "digits", "u", "d"}

type pgIntegrityCase struct {
	name  string
	alter string
	// skip are columns of pgAllColumns the writers leave alone (those the
	// ALTER drops).
	skip []string
	// exclude are columns left out of the comparison with want.t (values
	// of a volatile default differ).
	exclude []string
	dropOld bool
	// check asserts what the ALTER itself must have done to t.
	check func(e *pgEnv)
}

var pgIntegrityCases = []pgIntegrityCase{
	{
		name:    "add_column_volatile_default",
		alter:   "ADD COLUMN v double precision DEFAULT random()",
		exclude: []string{"v"},
		check: func(e *pgEnv) {
			if n := e.queryString("SELECT count(*) FROM t WHERE v IS NULL"); n != "0" {
				e.t.Errorf("%s rows of t have v NULL; the default random() must fill every row", n)
			}
			// A volatile default is evaluated per row, not once.
			if r := e.queryString("SELECT count(DISTINCT v) * 2 > count(*) FROM t"); r != "true" {
				e.t.Errorf("v has few distinct values (%s distinct of %s rows): the volatile default was not evaluated per row",
					e.queryString("SELECT count(DISTINCT v) FROM t"), e.queryString("SELECT count(*) FROM t"))
			}
		},
	},
	{
		name:    "drop_column",
		alter:   "DROP COLUMN d",
		skip:    []string{"d"},
		dropOld: true,
	},
	{
		name:  "int_to_bigint",
		alter: "ALTER COLUMN n TYPE bigint",
		check: func(e *pgEnv) {
			if typ := e.queryString("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attname = 'n'"); typ != "bigint" {
				e.t.Errorf("type of t.n = %s, want bigint", typ)
			}
		},
	},
	{
		name:  "add_check",
		alter: "ADD CONSTRAINT c CHECK (amount >= 0 AND length(s) > 0)",
		check: func(e *pgEnv) {
			if v := e.queryString("SELECT convalidated FROM pg_constraint WHERE conrelid = 'public.t'::regclass AND conname = 'c' AND contype = 'c'"); v != "true" {
				e.t.Errorf("t has no validated CHECK constraint c (convalidated: %s)", v)
			}
			// The constraint is enforced on the new table.
			if _, err := e.db.Exec("INSERT INTO t (id, s, amount) VALUES (-1, 'x', -1)"); err == nil || !strings.Contains(err.Error(), `"c"`) {
				e.t.Errorf("inserting a row that violates c into t: err = %v, want a violation of c", err)
			}
		},
	},
	{
		name:  "add_unique",
		alter: "ADD CONSTRAINT u UNIQUE (u)",
		check: func(e *pgEnv) {
			if v := e.queryString(`SELECT count(*) FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid
				WHERE c.conrelid = 'public.t'::regclass AND c.conname = 'u' AND c.contype = 'u' AND i.indisvalid AND i.indisunique`); v != "1" {
				e.t.Errorf("t has no valid unique constraint u")
			}
			if v := e.queryString("SELECT count(DISTINCT u) = count(u) FROM t"); v != "true" {
				e.t.Errorf("t.u holds duplicates")
			}
			var someU string
			if err := e.db.QueryRow("SELECT u FROM t WHERE u IS NOT NULL LIMIT 1").Scan(&someU); err != nil {
				e.t.Fatal(err)
			}
			if _, err := e.db.Exec("INSERT INTO t (id, s, u) VALUES (-1, 'x', $1)", someU); err == nil || !strings.Contains(err.Error(), `"u"`) {
				e.t.Errorf("inserting a duplicate u into t: err = %v, want a violation of u", err)
			}
		},
	},
	{
		name:  "text_to_integer_using",
		alter: "ALTER COLUMN digits TYPE integer USING digits::integer",
		check: func(e *pgEnv) {
			if typ := e.queryString("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attname = 'digits'"); typ != "integer" {
				e.t.Errorf("type of t.digits = %s, want integer", typ)
			}
		},
	},
}

// TestPGIntegrityUnderLoad runs each ALTER while four writers insert,
// update (with and without the TOASTed column), delete, change primary
// keys and move unique values between rows. Every write goes to t and to
// want.t, which has had the ALTER applied up front, in the same
// transaction, so after the run t (then the new table) must hold exactly
// what want.t holds. The throttle flag holds the copy twice, before its
// first chunk and a third of the way through, while the writers go on: the
// writes provably reach the shadow through the stream, on rows copied and
// rows not copied yet.
func TestPGIntegrityUnderLoad(t *testing.T) {
	for _, tc := range pgIntegrityCases {
		t.Run(tc.name, func(t *testing.T) { testPGIntegrity(t, tc) })
	}
}

func testPGIntegrity(t *testing.T, tc pgIntegrityCase) {
	setupStart := time.Now()
	e := newPGEnv(t)
	e.exec(pgIntegritySchema)
	e.exec(strings.ReplaceAll(pgPreload, "{rows}", strconv.Itoa(pgPreloadRows)))
	e.exec("INSERT INTO want.t (id, seq, " + pgIdents(pgAllColumns) + ") SELECT id, seq, " + pgIdents(pgAllColumns) + " FROM t")
	e.exec("ALTER TABLE want.t " + tc.alter)
	e.exec("ANALYZE t")
	if n := e.queryString("SELECT count(*) FROM t WHERE pg_column_size(big) > 2000"); n == "0" {
		t.Fatalf("test setup: no row of t has a big value")
	}
	origDefs := e.pgColumnDefs("t")
	t.Logf("setup took %v", time.Since(setupStart))

	var cols []string
	for _, c := range pgAllColumns {
		if !slices.Contains(tc.skip, c) {
			cols = append(cols, c)
		}
	}
	var compared []string
	for _, c := range harness.PGColumns(t, e.db, "want.t") {
		if !slices.Contains(tc.exclude, c) {
			compared = append(compared, c)
		}
	}

	w := newPGWriters(e, cols, pgPreloadRows)
	wctx, stopWriters := context.WithCancel(context.Background())
	defer stopWriters()
	w.start(wctx, pgNumWriters)
	time.Sleep(200 * time.Millisecond) // writers are in full swing before the run starts

	flag := filepath.Join(t.TempDir(), "throttle")
	pgFlag(t, flag, true)
	o := e.options("t", tc.alter)
	o.ChunkSize = 500
	o.ThrottleFlagFile = flag
	o.DropOldTable = tc.dropOld
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, keptBefore := w.snapshot(), w.bigKept.Load()
	began := time.Now()
	run := runAsync(ctx, o)
	var r runResult
	finished := false

	// The copy of rows that existed before the run: rows with those keys
	// reach the shadow only by the copy (the writers' new keys are higher).
	copied := func() (int64, error) {
		var n int64
		err := e.db.QueryRow(fmt.Sprintf("SELECT count(*) FROM public._t_new WHERE id <= %d", pgPreloadRows)).Scan(&n)
		return n, err
	}
	var pausedBefore, pausedMiddle, copiedAtPause int64
	stage := "capture start"
	if pgWaitFor(t, "the change stream and the shadow table", time.Minute, run, &r, &finished, func() bool {
		return e.pgStreaming() && e.relExists("_t_new")
	}) {
		// 1. Capture runs, the copy is held before its first chunk.
		stage = "held before the copy"
		mark := w.snapshot().total()
		if pgWaitFor(t, "writes while the copy is held", time.Minute, run, &r, &finished, func() bool {
			return w.snapshot().total() >= mark+pgPauseWrites
		}) {
			pausedBefore = w.snapshot().total() - mark
			if n, err := copied(); err != nil || n != 0 {
				t.Errorf("while the throttle flag holds the copy before its first chunk, the shadow has %d copied rows (err %v); want 0", n, err)
			}
		}
		// 2. Let the copy go a third of the way, then hold it again.
		stage = "copying"
		pgFlag(t, flag, false)
		if pgWaitFor(t, "a third of the copy", time.Minute, run, &r, &finished, func() bool {
			n, err := copied()
			return err != nil || n >= pgPreloadRows/3
		}) {
			pgFlag(t, flag, true)
			stage = "held in the middle of the copy"
			time.Sleep(100 * time.Millisecond) // the chunk in flight ends
			mark := w.snapshot().total()
			if pgWaitFor(t, "writes while the copy is held in its middle", time.Minute, run, &r, &finished, func() bool {
				return w.snapshot().total() >= mark+pgPauseWrites
			}) {
				pausedMiddle = w.snapshot().total() - mark
				n, err := copied()
				copiedAtPause = n
				live, _ := strconv.ParseInt(e.queryString(fmt.Sprintf("SELECT count(*) FROM t WHERE id <= %d", pgPreloadRows)), 10, 64)
				if err != nil || n <= 0 || n*10 > live*9 {
					t.Errorf("the copy was not in its middle when held: %d of %d rows copied (err %v)", n, live, err)
				}
			}
			stage = "copying"
			pgFlag(t, flag, false)
		}
	}
	if !finished {
		pgFlag(t, flag, false) // whatever happened above, let the run end
		r = <-run
	}
	took := time.Since(began)
	during, keptDuring := w.snapshot().minus(before), w.bigKept.Load()-keptBefore
	afterRun := w.snapshot()
	time.Sleep(500 * time.Millisecond) // keep writing to the new table for a while
	stopWriters()
	w.wait()
	after := w.snapshot().minus(afterRun)
	t.Logf("run took %v (copied %d rows, applied %d events, verified %d chunks); writes while the copy was held: %d before it, %d in its middle (%d rows copied); during the run: %s; after it: %s; retried: %d; updates leaving a TOASTed big unchanged during the run: %d",
		took.Round(time.Millisecond), resField(r, func(x runResult) int64 { return x.res.RowsCopied }),
		resField(r, func(x runResult) int64 { return x.res.EventsApplied }),
		resField(r, func(x runResult) int64 { return int64(x.res.VerifiedChunks) }),
		pausedBefore, pausedMiddle, copiedAtPause, during, after, w.retries.Load(), keptDuring)

	if werr := w.failure(); werr != "" {
		t.Errorf("writers: %s", werr)
	}
	if r.err != nil {
		t.Logf("the run ended while the test was at stage %q", stage)
	}
	oldTable := "_t_old"
	if tc.dropOld {
		oldTable = ""
	}
	pgAssertApplied(t, r.res, r.err, oldTable)

	// The writers must have exercised every stage, or the comparison
	// proves little.
	for op := range pgNumOps {
		if during[op] < 5 {
			t.Errorf("only %d %s writes committed while the run was going; want at least 5 of each kind (%s)", during[op], pgOpNames[op], during)
		}
	}
	if pausedBefore < pgPauseWrites || pausedMiddle < pgPauseWrites {
		t.Errorf("writes while the copy was held: %d before it, %d in its middle; want %d each", pausedBefore, pausedMiddle, pgPauseWrites)
	}
	if r.res.EventsApplied < pausedBefore+pausedMiddle {
		t.Errorf("Result.EventsApplied = %d, but %d writes committed while the copy was held", r.res.EventsApplied, pausedBefore+pausedMiddle)
	}
	if after[pgOpInsert] == 0 {
		t.Errorf("no insert into the new table succeeded after the run (%s)", after)
	}
	if keptDuring == 0 {
		t.Errorf("no update during the run left a TOASTed big unchanged: the stream's unchanged TOAST values went untested")
	}

	// t is now the new table: it must hold exactly what want.t holds.
	e.assertSameRows("t", "want.t", compared, []string{"id"})
	if a, b := e.count("t"), e.count("want.t"); a != b {
		t.Errorf("t has %d rows, want.t has %d", a, b)
	}
	// Its definition is want.t's, but for the identity column.
	gotDefs, wantDefs := e.pgColumnDefs("t"), e.pgColumnDefs("want.t")
	const identity = "seq bigint NOT NULL IDENTITY a"
	if i := slices.Index(gotDefs, identity); i < 0 {
		t.Errorf("t.seq is no longer GENERATED ALWAYS AS IDENTITY: columns %v", gotDefs)
	} else {
		gotDefs[i] = "seq bigint NOT NULL"
	}
	if !slices.Equal(gotDefs, wantDefs) {
		t.Errorf("columns of t after the run:\n  %s\nwant (as want.t):\n  %s", strings.Join(gotDefs, "\n  "), strings.Join(wantDefs, "\n  "))
	}
	if got, want := e.pgConstraints("t"), e.pgConstraints("want.t"); !slices.Equal(got, want) {
		t.Errorf("constraints of t after the run = %v, want %v (as want.t)", got, want)
	}
	if got, want := e.pgIndexes("t"), e.pgIndexes("want.t"); !slices.Equal(got, want) {
		t.Errorf("indexes of t after the run = %v, want %v (as want.t)", got, want)
	}
	// The identity sequence went with the column and continues past every
	// value: rows inserted after the swap got new values.
	if seq := e.queryString("SELECT pg_get_serial_sequence('public.t', 'seq')"); seq != "public.t_seq_seq" {
		t.Errorf("sequence of t.seq = %s, want public.t_seq_seq", seq)
	}
	if v := e.queryString("SELECT count(DISTINCT seq) = count(*) FROM t"); v != "true" {
		t.Errorf("t.seq holds duplicates: the identity sequence did not continue where the original's was")
	}
	if v := e.queryString("SELECT (SELECT last_value FROM public.t_seq_seq) >= (SELECT max(seq) FROM t)"); v != "true" {
		t.Errorf("the identity sequence of t is behind the column's values")
	}
	if tc.check != nil {
		tc.check(e)
	}
	if tc.dropOld {
		e.assertNoLeftovers("t")
	} else {
		e.assertNoLeftovers("t", "_t_old")
		if got := e.pgColumnDefs("_t_old"); !slices.Equal(got, origDefs) {
			t.Errorf("_t_old is not the original table: columns %v, want %v", got, origDefs)
		}
	}
}

// Writer operations.
const (
	pgOpInsert = iota
	pgOpUpdate
	pgOpDelete
	pgOpMoveKey    // UPDATE that changes the primary key
	pgOpMoveUnique // a value of u moves from one row to another
	pgNumOps
)

var pgOpNames = [pgNumOps]string{"insert", "update", "delete", "key-change", "unique-move"}

type pgOpCounts [pgNumOps]int64

func (c pgOpCounts) total() int64 {
	var n int64
	for _, v := range c {
		n += v
	}
	return n
}

func (c pgOpCounts) minus(d pgOpCounts) pgOpCounts {
	for i := range c {
		c[i] -= d[i]
	}
	return c
}

func (c pgOpCounts) String() string {
	var parts []string
	for i, v := range c {
		parts = append(parts, fmt.Sprintf("%s=%d", pgOpNames[i], v))
	}
	return strings.Join(parts, " ")
}

// pgWriters apply random changes to t and want.t in the same transactions,
// with literal SQL (the same text fits t before and after the ALTER).
type pgWriters struct {
	e     *pgEnv
	cols  []string
	conns []*pgx.Conn
	// nextID is the last id handed out, nextU the last fresh unique value.
	nextID, nextU atomic.Int64
	done          [pgNumOps]atomic.Int64
	retries       atomic.Int64 // transactions retried after a deadlock or serialization failure
	bigKept       atomic.Int64 // committed updates that left a TOASTed big unchanged
	wg            sync.WaitGroup

	mu   sync.Mutex
	errs []string
}

func newPGWriters(e *pgEnv, cols []string, maxID int64) *pgWriters {
	w := &pgWriters{e: e, cols: cols}
	w.nextID.Store(maxID)
	return w
}

func (w *pgWriters) start(ctx context.Context, n int) {
	for range n {
		w.conns = append(w.conns, w.e.connect(nil))
	}
	for i, c := range w.conns {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.loop(ctx, c, rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))))
		}()
	}
}

func (w *pgWriters) wait() { w.wg.Wait() }

func (w *pgWriters) snapshot() pgOpCounts {
	var c pgOpCounts
	for i := range c {
		c[i] = w.done[i].Load()
	}
	return c
}

func (w *pgWriters) fail(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) < 10 {
		w.errs = append(w.errs, fmt.Sprintf(format, args...))
	}
}

func (w *pgWriters) failure() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.errs, "; ")
}

func (w *pgWriters) loop(ctx context.Context, conn *pgx.Conn, rng *rand.Rand) {
	for ctx.Err() == nil {
		var op int
		switch p := rng.IntN(100); {
		case p < 25:
			op = pgOpInsert
		case p < 60:
			op = pgOpUpdate
		case p < 72:
			op = pgOpDelete
		case p < 87:
			op = pgOpMoveKey
		default:
			op = pgOpMoveUnique
			if !slices.Contains(w.cols, "u") {
				op = pgOpUpdate
			}
		}
		for attempt := 0; ; attempt++ {
			// Stopping never interrupts a transaction: one canceled in
			// flight could still commit on the server while the test
			// already compares the tables.
			actx, cancel := context.WithTimeout(context.Background(), time.Minute)
			changed, keptBig, err := w.apply(actx, conn, rng, op)
			cancel()
			if err != nil && pgRetryable(err) && attempt < 20 {
				w.retries.Add(1)
				continue
			}
			if err != nil {
				w.fail("%s: %v", pgOpNames[op], err)
				return
			}
			if changed {
				w.done[op].Add(1)
				if keptBig {
					w.bigKept.Add(1)
				}
			}
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pgWriterPause):
		}
	}
}

var pgMoods = []string{"sad", "ok", "happy", "ecstatic"}

// value returns a random SQL literal for a column.
func (w *pgWriters) value(rng *rand.Rand, col string) string {
	null := func(oneIn int) bool { return rng.IntN(oneIn) == 0 }
	switch col {
	case "big":
		switch rng.IntN(10) {
		case 0:
			return "NULL"
		case 1, 2, 3, 4, 5:
			return pgLit(fmt.Sprintf("short ü %d", rng.IntN(1000)))
		}
		b := make([]byte, 7600) // random, so incompressible: ~10 kB of text
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return pgLit(base64.StdEncoding.EncodeToString(b))
	case "doc":
		if null(5) {
			return "NULL"
		}
		return pgLit(fmt.Sprintf(`{"n": %d, "s": "ü\"'%d", "a": [1, null, {"x": %.3f}]}`, rng.Int64(), rng.IntN(100), rng.Float64()))
	case "tags":
		switch rng.IntN(6) {
		case 0:
			return "NULL"
		case 1:
			return "'{}'"
		}
		return fmt.Sprintf("'{%d,NULL,%d}'", rng.Int32(), -rng.Int32N(1000))
	case "m":
		if null(5) {
			return "NULL"
		}
		return pgLit(pgMoods[rng.IntN(len(pgMoods))])
	case "amount":
		if null(8) {
			return "NULL"
		}
		return fmt.Sprintf("%d.%06d", rng.Int64N(100_000_000_000_000), rng.IntN(1_000_000))
	case "at":
		switch rng.IntN(20) {
		case 0, 1, 2:
			return "NULL"
		case 3:
			return "'infinity'"
		case 4:
			return "'-infinity'"
		}
		ts := time.Unix(rng.Int64N(4_000_000_000), rng.Int64N(1e9)).UTC()
		return pgLit(ts.Format("2006-01-02 15:04:05.999999") + fmt.Sprintf("%+03d:%02d", rng.IntN(27)-13, 15*rng.IntN(4)))
	case "bin":
		if null(5) {
			return "NULL"
		}
		b := make([]byte, rng.IntN(40))
		for i := range b {
			if rng.IntN(3) > 0 {
				b[i] = byte(rng.Uint32())
			}
		}
		return pgLit(`\x` + hex.EncodeToString(b))
	case "n":
		if null(5) {
			return "NULL"
		}
		return strconv.Itoa(int(rng.Int32()) - rng.IntN(1<<30))
	case "s":
		return pgLit(fmt.Sprintf(`it's \ "ü" 😀 %d`, rng.IntN(1_000_000)))
	case "digits":
		if null(6) {
			return "NULL"
		}
		return pgLit(strconv.Itoa(int(rng.Int32()) - rng.IntN(1<<30)))
	case "u":
		if null(4) {
			return "NULL"
		}
		return pgLit(fmt.Sprintf("w-%d", w.nextU.Add(1)))
	case "d":
		if null(3) {
			return "NULL"
		}
		return pgLit(fmt.Sprintf("d-%d", rng.IntN(1_000_000)))
	}
	panic("no generator for column " + col)
}

// apply runs one random change on t and want.t in one transaction, and
// reports whether it changed a row (and, for an update, whether it left
// big unchanged). The two tables hold the same rows: every statement must
// change as many rows of one as of the other.
func (w *pgWriters) apply(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, op int) (changed, keptBig bool, err error) {
	randomID := func() int64 {
		last := w.nextID.Load()
		if rng.IntN(5) == 0 {
			// Recent rows: those the stream alone brings to the shadow.
			return last - rng.Int64N(50)
		}
		return 1 + rng.Int64N(last)
	}
	// The ids this transaction touches, locked (advisory, in order) before
	// anything else: in READ COMMITTED an UPDATE of t could otherwise miss
	// a row whose insert commits before the same UPDATE reaches want.t.
	// (REPEATABLE READ is no way out: a transaction whose snapshot predates
	// the swap does not see the rows the applier wrote to the shadow, the
	// caveat of every table rewrite in PostgreSQL.)
	var ids []int64
	newID := func() int64 { id := w.nextID.Add(1); ids = append(ids, id); return id }
	oldID := func() int64 { id := randomID(); ids = append(ids, id); return id }
	var id, a, b int64
	switch op {
	case pgOpInsert:
		id = newID()
	case pgOpUpdate, pgOpDelete:
		id = oldID()
	case pgOpMoveKey:
		a, b = oldID(), newID()
	case pgOpMoveUnique:
		a, b = oldID(), oldID()
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	for _, id := range ids {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", id)); err != nil {
			return false, false, err
		}
	}
	// both runs a statement on t and on want.t. An UPDATE that leaves a
	// TOASTed big as it was counts in keptBig: the stream carries big as
	// an unchanged TOAST value then.
	both := func(format string) (int64, error) {
		var n [2]int64
		for i, table := range []string{"public.t", "want.t"} {
			q := strings.ReplaceAll(format, "%T", table)
			if i == 0 && strings.HasPrefix(format, "UPDATE") && !strings.Contains(format, "big = ") {
				rows, err := tx.Query(ctx, q+" RETURNING pg_column_size(big) > 2000")
				if err != nil {
					return 0, err
				}
				for rows.Next() {
					var toasted *bool
					if err := rows.Scan(&toasted); err != nil {
						rows.Close()
						return 0, err
					}
					n[0]++
					keptBig = keptBig || toasted != nil && *toasted
				}
				if err := rows.Err(); err != nil {
					return 0, err
				}
				continue
			}
			tag, err := tx.Exec(ctx, q)
			if err != nil {
				return 0, err
			}
			n[i] = tag.RowsAffected()
		}
		if n[0] != n[1] {
			w.fail("%s changed %d rows of t but %d of want.t: t lost or gained rows", abbrev(format), n[0], n[1])
		}
		return n[0], nil
	}
	var n int64
	switch op {
	case pgOpInsert:
		vals := make([]string, len(w.cols))
		for i, c := range w.cols {
			vals[i] = w.value(rng, c)
		}
		var seq int64
		err = tx.QueryRow(ctx, fmt.Sprintf("INSERT INTO public.t (id, %s) VALUES (%d, %s) RETURNING seq",
			pgIdents(w.cols), id, strings.Join(vals, ", "))).Scan(&seq)
		if err != nil {
			return false, false, err
		}
		_, err = tx.Exec(ctx, fmt.Sprintf("INSERT INTO want.t (id, seq, %s) VALUES (%d, %d, %s)",
			pgIdents(w.cols), id, seq, strings.Join(vals, ", ")))
		n = 1
	case pgOpUpdate:
		// A random subset (at least one) of the columns; big is in it only
		// now and then, so that most updates stream it unchanged.
		var sets []string
		for len(sets) == 0 {
			for _, c := range w.cols {
				p := 3
				if c == "big" {
					p = 8
				}
				if rng.IntN(p) == 0 {
					sets = append(sets, c+" = "+w.value(rng, c))
				}
			}
		}
		n, err = both(fmt.Sprintf("UPDATE %%T SET %s WHERE id = %d", strings.Join(sets, ", "), id))
	case pgOpDelete:
		n, err = both(fmt.Sprintf("DELETE FROM %%T WHERE id = %d", id))
	case pgOpMoveKey:
		// Half of the moves also change a column.
		set := ""
		if rng.IntN(2) == 0 {
			c := w.cols[rng.IntN(len(w.cols))]
			set = ", " + c + " = " + w.value(rng, c)
		}
		n, err = both(fmt.Sprintf("UPDATE %%T SET id = %d%s WHERE id = %d", b, set, a))
	case pgOpMoveUnique:
		// Row a's value goes to row b, a gets a fresh one: u stays unique
		// after every statement. It counts when the value reached b.
		var old *string
		err = tx.QueryRow(ctx, fmt.Sprintf("SELECT u FROM public.t WHERE id = %d FOR UPDATE", a)).Scan(&old)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && (old == nil || a == b) {
			return false, false, nil
		}
		if err != nil {
			return false, false, err
		}
		if _, err = both(fmt.Sprintf("UPDATE %%T SET u = %s WHERE id = %d", pgLit(fmt.Sprintf("w-%d", w.nextU.Add(1))), a)); err != nil {
			return false, false, err
		}
		n, err = both(fmt.Sprintf("UPDATE %%T SET u = %s WHERE id = %d", pgLit(*old), b))
	}
	if err != nil {
		return false, false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, false, err
	}
	return n > 0, keptBig && n > 0, nil
}

// pgTypeCol is a column of the round-trip table and SQL literals of values
// it must carry exactly, NULL among them.
type pgTypeCol struct {
	name, typ string
	vals      []string
}

const pgTypesSchema = `
CREATE TYPE color AS ENUM ('red', 'green', 'blue', 'it''s');
CREATE TYPE pair AS (a int, b text);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);`

var pgTypeCols = []pgTypeCol{
	{"c_smallint", "smallint", []string{"-32768", "32767", "0", "NULL"}},
	{"c_int", "int", []string{"-2147483648", "2147483647", "0", "NULL"}},
	{"c_bigint", "bigint", []string{"-9223372036854775808", "9223372036854775807", "-1", "NULL"}},
	{"c_numeric", "numeric", []string{"'NaN'", "'Infinity'", "'-Infinity'", "0.000000000000000000001", "-123456789012345678901234567890.123456789", "1.10", "NULL"}},
	{"c_real", "real", []string{"'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "3.4028235e+38", "1.17549435e-38", "0.1", "1.0000001", "NULL"}},
	{"c_double", "double precision", []string{"'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "0.1", "1.7976931348623157e308", "5e-324", "0.30000000000000004", "1.0000000000000002", "NULL"}},
	{"c_text", "text", []string{`E'tab\there\nnewline'`, `'quote''s'`, `'back\slash \\ two'`, `'ünïcödé 😀 中文'`, "''", "'NULL'", `'"dq" {braces} ,comma (paren)'`, "NULL"}},
	{"c_varchar", "varchar(10)", []string{"'abc'", "'ü😀'", "''", "'exactly10!'", "'trail  '", "NULL"}},
	{"c_char", "char(5)", []string{"'ab'", "''", "'abcde'", "'ü'", "NULL"}},
	{"c_bytea", "bytea", []string{`'\x'`, `'\x00'`, `'\x000102ff00'`, `'\x5c27'`, `'\xdeadbeef'`, "NULL"}},
	{"c_bool", "boolean", []string{"true", "false", "NULL"}},
	{"c_date", "date", []string{"'2024-02-29'", "'2024-12-03'", "'infinity'", "'-infinity'", "'0044-03-15 BC'", "'5874897-12-31'", "NULL"}},
	{"c_time", "time", []string{"'00:00:00'", "'23:59:59.999999'", "'24:00:00'", "'12:34:56.5'", "NULL"}},
	{"c_timetz", "timetz", []string{"'00:00:00+00'", "'23:59:59.999999-15:59'", "'12:00:00+14'", "'01:02:03.456+05:30'", "NULL"}},
	{"c_timestamp", "timestamp", []string{"'2024-02-29 12:34:56.789012'", "'2024-12-03 01:02:03'", "'infinity'", "'-infinity'", "'4713-01-01 00:00:00 BC'", "'294276-12-31 23:59:59.999999'", "NULL"}},
	{"c_timestamptz", "timestamptz", []string{"'2024-02-29 12:34:56.789012+05:45'", "'2024-12-03 01:02:03-03:30'", "'infinity'", "'-infinity'", "'1900-01-01 00:00:00+00'", "'2038-01-19 03:14:08+00'", "NULL"}},
	{"c_interval", "interval", []string{"'1 year 2 mons 3 days 04:05:06.789'", "'-1 days -02:03:04'", "'1 day -1 hour'", "'-1 mons +3 days'", "'0'", "'-1 year +2 mons -3 days +04:05:06'", "'178000000 years'", "NULL"}},
	{"c_uuid", "uuid", []string{"'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'00000000-0000-0000-0000-000000000000'", "NULL"}},
	{"c_inet", "inet", []string{"'192.168.0.1/24'", "'::1'", "'2001:db8::1/64'", "'10.0.0.1'", "NULL"}},
	{"c_cidr", "cidr", []string{"'192.168.0.0/24'", "'2001:db8::/32'", "'10.0.0.0/8'", "NULL"}},
	{"c_macaddr", "macaddr", []string{"'08:00:2b:01:02:03'", "'ff:ff:ff:ff:ff:ff'", "NULL"}},
	{"c_json", "json", []string{`'{"b": 1,   "a": 2, "b": 3}'`, `'[1, 2.50, "x\u00e9", 1e400]'`, "'null'", `'"str"'`, `'  {"x" : [ ] }  '`, "NULL"}},
	{"c_jsonb", "jsonb", []string{`'{"b": 1, "a": {"c": [1, 2.50, null]}}'`, "'[]'", `'"ü\"q"'`, "'1e400'", "NULL"}},
	{"c_xml", "xml", []string{`'<a x="1">text &amp; more</a>'`, `'<?xml version="1.0"?><r/>'`, "'plain text'", "NULL"}},
	{"c_intarr", "int[]", []string{"'{1,NULL,3}'", "'{}'", "'{-2147483648}'", "'[0:2]={1,2,3}'", "NULL"}},
	{"c_textarr", "text[]", []string{`'{"a,b","c\"d","NULL",NULL,"","back\\slash","ü {x}"}'`, "'{}'", `'{"  spaced  "}'`, "NULL"}},
	{"c_int2d", "int[][]", []string{"'{{1,2},{3,NULL}}'", "'{{-1}}'", "'{}'", "NULL"}},
	{"c_enum", "color", []string{"'red'", "'it''s'", "'blue'", "NULL"}},
	{"c_enumarr", "color[]", []string{"'{red,blue}'", `'{"it''s",NULL}'`, "'{}'", "NULL"}},
	{"c_comp", "pair", []string{`'(1,"a,b")'`, "'(,)'", `'(-5,"quote""d \\ x")'`, `'(0,"")'`, "NULL"}},
	{"c_domain", "posint", []string{"1", "2147483647", "NULL"}},
	{"c_int4range", "int4range", []string{"'[1,10)'", "'empty'", "'(,5]'", "'[3,)'", "NULL"}},
	{"c_tstzrange", "tstzrange", []string{"'[2024-01-01 00:00+00,2024-06-01 12:00+02)'", "'(,infinity]'", "'empty'", "NULL"}},
	{"c_money", "money", []string{"12.34", "-0.01", "'92233720368547758.07'", "NULL"}},
	{"c_bit", "bit(8)", []string{"B'10101010'", "B'00000000'", "NULL"}},
	{"c_varbit", "varbit", []string{"B''", "B'1'", "B'101010101010101010101'", "NULL"}},
	{"c_tsvector", "tsvector", []string{"'a fat cat:1A sat:2B,3'", `'''quoted word'':1'`, "''", "NULL"}},
	{"c_point", "point", []string{"'(1.5,-2.25)'", "'(0.1,0.30000000000000004)'", "'(0,0)'", "NULL"}},
}

// pgTypeKeys are the text half of the round-trip table's primary key.
var pgTypeKeys = []string{"a", "ü", "x'y", "with,comma", "", "NULL", `back\slash`}

// TestPGTypesRoundTrip writes values of every common type (extremes,
// special values, NULLs) through the change stream: rows are inserted,
// updated (whole and in part), moved to other keys and deleted while the
// throttle flag holds the copy, so the stream alone brings them to the
// shadow; each write goes to want.tt in the same transaction. After the
// cut-over every value of tt must read exactly as want.tt's. The second
// case gives the database session defaults that change how values are
// printed (DateStyle, IntervalStyle, extra_float_digits, TimeZone,
// bytea_output), as a DBA may have set them.
func TestPGTypesRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings []string
	}{
		{"server_defaults", nil},
		{"database_session_defaults", []string{"DateStyle = 'SQL, DMY'", "IntervalStyle = 'sql_standard'",
			"extra_float_digits = 0", "TimeZone = 'America/St_Johns'", "bytea_output = 'escape'"}},
	} {
		t.Run(tc.name, func(t *testing.T) { testPGTypes(t, tc.settings) })
	}
}

func testPGTypes(t *testing.T, settings []string) {
	e := newPGEnv(t)
	for _, s := range settings {
		e.exec("ALTER DATABASE " + harness.PGQuoteIdent(e.name) + " SET " + s)
	}
	defs := []string{"id int NOT NULL", "k text NOT NULL"}
	var cols []string
	for _, c := range pgTypeCols {
		defs = append(defs, c.name+" "+c.typ)
		cols = append(cols, c.name)
	}
	e.exec(pgTypesSchema + "CREATE TABLE tt (" + strings.Join(defs, ", ") + ", PRIMARY KEY (id, k));" +
		"CREATE SCHEMA want; CREATE TABLE want.tt (LIKE public.tt INCLUDING ALL);")
	// The writer's session has the database's defaults; the comparison's
	// prints every value exactly and the same way.
	wc := e.connect(nil)
	cmp := e.connect(map[string]string{"extra_float_digits": "3", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
		"TimeZone": "UTC", "bytea_output": "hex"})
	if len(settings) > 0 {
		var ds string
		if err := wc.QueryRow(context.Background(), "SHOW DateStyle").Scan(&ds); err != nil || ds != "SQL, DMY" {
			t.Fatalf("test setup: the database's DateStyle does not apply to new sessions (%q, %v)", ds, err)
		}
	}

	rowVals := func(r int) []string {
		v := make([]string, len(pgTypeCols))
		for i, c := range pgTypeCols {
			v[i] = c.vals[(r+i)%len(c.vals)]
		}
		return v
	}
	key := func(r int) string { return pgLit(pgTypeKeys[r%len(pgTypeKeys)]) }
	writes := 0
	// write runs statements (with %T for the table) on tt and want.tt in
	// one transaction; each must change as many rows of one as of the other.
	write := func(stmts ...string) {
		t.Helper()
		ctx := context.Background()
		tx, err := wc.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		for _, st := range stmts {
			var n [2]int64
			for i, table := range []string{"public.tt", "want.tt"} {
				tag, err := tx.Exec(ctx, strings.ReplaceAll(st, "%T", table))
				if err != nil {
					t.Fatalf("%s: %v", abbrev(st), err)
				}
				n[i] = tag.RowsAffected()
			}
			if n[0] != n[1] || n[0] != 1 {
				t.Fatalf("%s changed %d rows of tt and %d of want.tt; want 1 each", abbrev(st), n[0], n[1])
			}
			writes++
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	insert := func(r int) string {
		return fmt.Sprintf("INSERT INTO %%T (id, k, %s) VALUES (%d, %s, %s)", strings.Join(cols, ", "), r, key(r), strings.Join(rowVals(r), ", "))
	}
	// update sets the columns i with i%every == phase to row r2's values.
	update := func(r int, k string, r2, every, phase int) string {
		var sets []string
		for i, v := range rowVals(r2) {
			if i%every == phase {
				sets = append(sets, cols[i]+" = "+v)
			}
		}
		return fmt.Sprintf("UPDATE %%T SET %s WHERE id = %d AND k = %s", strings.Join(sets, ", "), r, k)
	}
	const copied, streamed = 30, 40 // rows before the run; rows the stream inserts
	for r := 1; r <= copied; r++ {
		write(insert(r))
	}

	flag := filepath.Join(t.TempDir(), "throttle")
	pgFlag(t, flag, true)
	defer pgFlag(t, flag, false)
	o := e.options("tt", "ADD COLUMN note text NOT NULL DEFAULT 'n'")
	o.ThrottleFlagFile = flag
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := runAsync(ctx, o)
	var r runResult
	finished := false
	if pgWaitFor(t, "the change stream and the shadow table", time.Minute, run, &r, &finished, func() bool {
		return e.pgStreaming() && e.relExists("_tt_new")
	}) {
		for i := 0; i < streamed; i++ {
			row := 1000 + i
			write(insert(row))
			// The same row again, in part and then whole, in one
			// transaction and in separate ones.
			write(update(row, key(row), row+3, 2, i%2), update(row, key(row), row+5, 3, 0))
			write(update(row, key(row), row+7, 1, 0))
			switch i % 5 {
			case 0: // a new key, text part included
				write(fmt.Sprintf("UPDATE %%T SET id = %d, k = %s WHERE id = %d AND k = %s", row+5000, key(row+1), row, key(row)))
			case 1: // a new key and new values
				write(fmt.Sprintf("UPDATE %%T SET id = %d, %s WHERE id = %d AND k = %s", row+5000,
					strings.TrimPrefix(strings.SplitN(update(row, key(row), row+2, 1, 0), " WHERE ", 2)[0], "UPDATE %T SET "), row, key(row)))
			case 2:
				write(fmt.Sprintf("DELETE FROM %%T WHERE id = %d AND k = %s", row, key(row)))
			}
		}
		// Rows not copied yet: the copy brings their new values.
		for row := 1; row <= copied; row += 3 {
			write(update(row, key(row), row+4, 1, 0))
		}
		pgFlag(t, flag, false)
	}
	if !finished {
		pgFlag(t, flag, false)
		r = <-run
	}
	pgAssertApplied(t, r.res, r.err, "_tt_old")
	t.Logf("copied %d rows, applied %d events; %d writes while the copy was held", r.res.RowsCopied, r.res.EventsApplied, writes-copied)
	if r.res.EventsApplied < int64(writes-copied) {
		t.Errorf("Result.EventsApplied = %d, want at least the %d writes made while the copy was held", r.res.EventsApplied, writes-copied)
	}

	// Every value, compared as text printed the same way on both sides.
	asText := make([]string, len(cols))
	for i, c := range cols {
		asText[i] = harness.PGQuoteIdent(c) + "::text"
		if c == "c_xml" {
			// xml's output function (the stream's text form, as for
			// PostgreSQL's own logical replication) drops a default XML
			// declaration that xml::text keeps: compare what clients read.
			asText[i] = "textin(xml_out(c_xml))"
		}
	}
	read := func(table string) map[string][]*string {
		rows, err := cmp.Query(context.Background(), fmt.Sprintf("SELECT ROW(id, k)::text, %s FROM %s",
			strings.Join(asText, ", "), pgQualified(table)))
		if err != nil {
			t.Fatalf("reading %s: %v", table, err)
		}
		m := map[string][]*string{}
		for rows.Next() {
			vals := make([]*string, len(cols)+1)
			ptrs := make([]any, len(vals))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			m[*vals[0]] = vals[1:]
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	got, want := read("tt"), read("want.tt")
	if len(got) != len(want) {
		t.Errorf("tt has %d rows, want.tt %d", len(got), len(want))
	}
	str := func(p *string) string {
		if p == nil {
			return "NULL"
		}
		return *p
	}
	var diffs []string
	badCols := map[string]bool{}
	for k, wv := range want {
		gv, ok := got[k]
		if !ok {
			diffs = append(diffs, "row "+k+" is missing")
			continue
		}
		for i := range cols {
			if str(gv[i]) != str(wv[i]) {
				badCols[cols[i]] = true
				diffs = append(diffs, fmt.Sprintf("row %s %s: got %s, want %s", k, cols[i], str(gv[i]), str(wv[i])))
			}
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, "row "+k+" should not be there")
		}
	}
	if len(diffs) > 0 {
		slices.Sort(diffs)
		if len(diffs) > 30 {
			diffs = append(diffs[:30], fmt.Sprintf("... %d differences in all", len(diffs)))
		}
		t.Errorf("tt differs from want.tt in columns %v:\n%s", slices.Sorted(maps.Keys(badCols)), strings.Join(diffs, "\n"))
	}
	// The harness's checksum agrees (in the test's own session settings).
	e.assertSameRows("tt", "want.tt", append([]string{"id", "k"}, cols...), []string{"id", "k"})
	if n := e.queryString("SELECT count(*) FROM tt WHERE note IS DISTINCT FROM 'n'"); n != "0" {
		t.Errorf("%s rows of tt lack the new column's default", n)
	}
	e.assertNoLeftovers("tt", "_tt_old")
}

// The table of TestPGAlterErrors: c holds one duplicated value (rows 42
// and 117), n one NULL (row 63) and one negative value (row 88).
const pgErrorsSchema = `CREATE TABLE t (id int PRIMARY KEY, c text NOT NULL, n int, big text);
CREATE INDEX t_n_idx ON t (n);
INSERT INTO t SELECT i, CASE WHEN i IN (42, 117) THEN 'dup ü' ELSE 'c-' || i END,
	CASE i WHEN 63 THEN NULL WHEN 88 THEN -5 ELSE i END,
	CASE WHEN i % 10 = 0 THEN (SELECT string_agg(md5(i || ':' || j), '') FROM generate_series(1, 100) j) END
FROM generate_series(1, 300) i`

// TestPGAlterErrors runs ALTERs that cannot be applied: the server rejects
// the ALTER itself, or rows of the table (or a write made during the run)
// break the new definition. Each must fail with the right exit code and a
// message that says what and which row, leave the table as it was, and
// leave nothing of osc's behind.
func TestPGAlterErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		alter string
		code  int
		// want are substrings of the error.
		want []string
		// during are statements run one by one while the copy is held.
		during []string
	}{
		{name: "unknown_type", alter: "ADD COLUMN x nosuchtype", code: migration.ExitUsage,
			want: []string{"nosuchtype", "does not exist"}},
		{name: "unique_over_duplicates", alter: "ADD CONSTRAINT u UNIQUE (c)", code: migration.ExitFailed,
			want: []string{`"u"`, "(c)=(dup ü)", "(42)", "(117)"}},
		{name: "check_fails", alter: "ADD CONSTRAINT positive CHECK (n > 0)", code: migration.ExitFailed,
			want: []string{`"positive"`, "Failing row contains (88, c-88, -5"}},
		{name: "set_not_null_fails", alter: "ALTER COLUMN n SET NOT NULL", code: migration.ExitFailed,
			want: []string{`column "n"`, "not-null", "Failing row contains (63, c-63, null"}},
		{name: "write_during_run_breaks_check", alter: "ADD CONSTRAINT small CHECK (n < 1000)", code: migration.ExitFailed,
			during: []string{"INSERT INTO t VALUES (1000, 'new', 5000)", "DELETE FROM t WHERE id = 1000"},
			want:   []string{`"small"`, "a write of the application", "Failing row contains (1000, new, 5000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPGEnv(t)
			e.exec(pgErrorsSchema)
			cols := harness.PGColumns(t, e.db, "t")
			sumBefore := harness.PGChecksum(t, e.db, "t", cols, []string{"id"})
			defsBefore, consBefore, idxBefore := e.pgColumnDefs("t"), e.pgConstraints("t"), e.pgIndexes("t")
			o := e.options("t", tc.alter)
			o.ChunkSize = 50
			var flag string
			if tc.during != nil {
				flag = filepath.Join(t.TempDir(), "throttle")
				pgFlag(t, flag, true)
				defer pgFlag(t, flag, false)
				o.ThrottleFlagFile = flag
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			run := runAsync(ctx, o)
			var r runResult
			finished := false
			// The writes (a row that breaks the new definition, deleted
			// again) go while the copy is held: only the stream sees them.
			if tc.during != nil && pgWaitFor(t, "the change stream and the shadow table", time.Minute, run, &r, &finished, func() bool {
				return e.pgStreaming() && e.relExists("_t_new")
			}) {
				for _, st := range tc.during {
					e.exec(st)
				}
				pgFlag(t, flag, false)
			}
			if !finished {
				r = <-run
			}
			afterSum := harness.PGChecksum(t, e.db, "t", cols, []string{"id"})
			if r.err == nil {
				t.Fatalf("migration.Run succeeded (%+v); want exit code %d", r.res, tc.code)
			}
			if got := migration.ExitCode(r.err); got != tc.code || r.res.ExitCode != tc.code {
				t.Errorf("exit code %d (Result.ExitCode %d), want %d; error: %v", got, r.res.ExitCode, tc.code, r.err)
			}
			if r.res.Applied {
				t.Errorf("Result.Applied is true for a failed run")
			}
			for _, s := range tc.want {
				if !strings.Contains(r.err.Error(), s) {
					t.Errorf("the error does not contain %q: %v", s, r.err)
				}
			}
			t.Logf("error: %v", r.err)
			if afterSum != sumBefore {
				t.Errorf("the table changed: checksum %s, before the run %s", afterSum, sumBefore)
			}
			if got := e.pgColumnDefs("t"); !slices.Equal(got, defsBefore) {
				t.Errorf("columns of t = %v, want %v", got, defsBefore)
			}
			if got := e.pgConstraints("t"); !slices.Equal(got, consBefore) {
				t.Errorf("constraints of t = %v, want %v", got, consBefore)
			}
			if got := e.pgIndexes("t"); !slices.Equal(got, idxBefore) {
				t.Errorf("indexes of t = %v, want %v", got, idxBefore)
			}
			e.assertNoLeftovers("t")
		})
	}
}
