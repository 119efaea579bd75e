package mysqldb

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/replication"
)

// The writer merges changes into multi-row statements (runs of updates in
// stream order, or segments of distinct keys applied as deletes, updates,
// inserts). These tests hold the result to what applying the changes one
// at a time gives: a model of the shadow fed the same stream, with the
// semantics of the row-at-a-time statements (an insert of a present key
// and an update of an absent key do nothing).

// batchTable is a source table shape for the stream tests.
type batchTable struct {
	name, ddl, alter string
	// key makes the key columns' values of key number i (injective).
	key func(i int) []any
	// nKey is the number of key columns, first in the row image.
	nKey int
	// uniqueA: the ALTER adds a unique index over a; the stream keeps a
	// unique across rows.
	uniqueA bool
	// render is the shadow's row as the test reads it back.
	render string
}

var batchTables = []batchTable{
	{
		name:   "int key",
		ddl:    "CREATE TABLE t (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, a VARCHAR(20) CHARACTER SET latin1 NULL, n DECIMAL(10,2) NULL, b VARBINARY(8) NULL)",
		alter:  "ADD COLUMN z INT NOT NULL DEFAULT 7",
		key:    func(i int) []any { return []any{uint64(i) + 1<<63} },
		nKey:   1,
		render: "CONCAT_WS('|', id, COALESCE(HEX(a), 'NULL'), COALESCE(n, 'NULL'), COALESCE(HEX(b), 'NULL'), z)",
	},
	{
		name:   "composite key",
		ddl:    "CREATE TABLE t (k1 VARCHAR(10) CHARACTER SET utf8mb4 NOT NULL, k2 INT NOT NULL, a VARCHAR(20) CHARACTER SET latin1 NULL, n DECIMAL(10,2) NULL, b VARBINARY(8) NULL, PRIMARY KEY (k1, k2))",
		alter:  "ADD COLUMN z INT NOT NULL DEFAULT 7",
		key:    func(i int) []any { return []any{"k\u00e9" + strconv.Itoa(i/3), int64(i%3 - 1)} },
		nKey:   2,
		render: "CONCAT_WS('|', HEX(k1), k2, COALESCE(HEX(a), 'NULL'), COALESCE(n, 'NULL'), COALESCE(HEX(b), 'NULL'), z)",
	},
	{
		name:    "another unique key",
		ddl:     "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, a VARCHAR(20) CHARACTER SET latin1 NULL, n DECIMAL(10,2) NULL, b VARBINARY(8) NULL)",
		alter:   "ADD UNIQUE KEY ua (a), ADD COLUMN z INT NOT NULL DEFAULT 7",
		key:     func(i int) []any { return []any{int64(i)} },
		nKey:    1,
		uniqueA: true,
		render:  "CONCAT_WS('|', id, COALESCE(HEX(a), 'NULL'), COALESCE(n, 'NULL'), COALESCE(HEX(b), 'NULL'), z)",
	},
}

// renderRow renders a row image (key columns, a, n, b) as the table's
// render expression does, with z = 7.
func (bt batchTable) renderRow(row []any) string {
	var parts []string
	for i, v := range row[:bt.nKey] {
		switch x := v.(type) {
		case string:
			if bt.nKey == 2 && i == 0 {
				parts = append(parts, strings.ToUpper(hex.EncodeToString([]byte(x))))
				continue
			}
			parts = append(parts, x)
		default:
			parts = append(parts, fmt.Sprint(x))
		}
	}
	for i, v := range row[bt.nKey:] {
		switch {
		case v == nil:
			parts = append(parts, "NULL")
		case i == 1:
			parts = append(parts, v.(string))
		case i == 0:
			parts = append(parts, strings.ToUpper(hex.EncodeToString([]byte(v.(string)))))
		default:
			parts = append(parts, strings.ToUpper(hex.EncodeToString(v.([]byte))))
		}
	}
	return strings.Join(append(parts, "7"), "|")
}

// streamGen makes a stream of changes consistent with a source table, and
// a shadow that the copy filled partly, with rows in older or newer
// states than the stream's.
type streamGen struct {
	bt     batchTable
	rnd    *rand.Rand
	src    map[int][]any // the source now, by key number
	serial int           // for unique values of a
	keys   int           // key numbers in use are below this
}

func (g *streamGen) values() []any {
	var a, n, b any
	if g.rnd.IntN(8) > 0 {
		g.serial++
		s := "v" + strconv.Itoa(g.serial)
		if g.rnd.IntN(3) == 0 {
			s += "\xe9" // latin1 é, as raw bytes
		}
		a = s
	}
	if g.rnd.IntN(6) > 0 {
		n = fmt.Sprintf("%d.%02d", g.rnd.IntN(100000)-50000, g.rnd.IntN(100))
	}
	if g.rnd.IntN(6) > 0 {
		v := make([]byte, g.rnd.IntN(9))
		for i := range v {
			if g.rnd.IntN(3) > 0 {
				v[i] = byte(g.rnd.IntN(256))
			}
		}
		b = v
	}
	return []any{a, n, b}
}

func (g *streamGen) row(k int) []any { return append(slices.Clone(g.bt.key(k)), g.values()...) }

// pick returns an existing key number, often one of a few hot ones.
func (g *streamGen) pick() (int, bool) {
	if len(g.src) == 0 {
		return 0, false
	}
	if g.rnd.IntN(3) == 0 {
		for range 4 {
			if k := g.rnd.IntN(4); g.src[k] != nil {
				return k, true
			}
		}
	}
	for {
		if k := g.rnd.IntN(g.keys); g.src[k] != nil {
			return k, true
		}
	}
}

// fresh returns a key number not in the source (sometimes one that was
// deleted or moved away).
func (g *streamGen) fresh() int {
	for {
		k := g.rnd.IntN(g.keys + 3)
		if g.src[k] == nil {
			g.keys = max(g.keys, k+1)
			return k
		}
	}
}

func (g *streamGen) next() replication.Change {
	k, ok := g.pick()
	op := g.rnd.IntN(20)
	switch {
	case !ok || op < 3:
		nk := g.fresh()
		r := g.row(nk)
		g.src[nk] = r
		return replication.Change{Op: replication.Insert, After: r}
	case op < 6:
		r := g.src[k]
		delete(g.src, k)
		return replication.Change{Op: replication.Delete, Before: r}
	case op < 9:
		nk := g.fresh()
		before := g.src[k]
		after := append(slices.Clone(g.bt.key(nk)), before[g.bt.nKey:]...)
		if g.rnd.IntN(2) == 0 {
			after = g.row(nk)
		}
		delete(g.src, k)
		g.src[nk] = after
		return replication.Change{Op: replication.Update, Before: before, After: after}
	default:
		before := g.src[k]
		after := g.row(k)
		g.src[k] = after
		return replication.Change{Op: replication.Update, Before: before, After: after}
	}
}

// shadowModel applies changes one at a time with the row-at-a-time
// statements' semantics.
type shadowModel struct {
	bt   batchTable
	rows map[string][]any
}

func (m *shadowModel) key(row []any) string { return fmt.Sprint(row[:m.bt.nKey]) }

func (m *shadowModel) apply(c replication.Change) {
	switch c.Op {
	case replication.Insert:
		if _, ok := m.rows[m.key(c.After)]; !ok {
			m.rows[m.key(c.After)] = c.After
		}
	case replication.Delete:
		delete(m.rows, m.key(c.Before))
	case replication.Update:
		if m.key(c.Before) != m.key(c.After) {
			delete(m.rows, m.key(c.Before))
			if _, ok := m.rows[m.key(c.After)]; !ok {
				m.rows[m.key(c.After)] = c.After
			}
			return
		}
		if _, ok := m.rows[m.key(c.Before)]; ok {
			m.rows[m.key(c.Before)] = c.After
		}
	}
}

func (m *shadowModel) rendered() []string {
	var out []string
	for _, r := range m.rows {
		out = append(out, m.bt.renderRow(r))
	}
	slices.Sort(out)
	return out
}

// insertShadowRows puts rows into the shadow as the copy would have.
func insertShadowRows(t *testing.T, e *Engine, rows [][]any) {
	t.Helper()
	if len(rows) == 0 {
		return
	}
	var changes []replication.Change
	for _, r := range rows {
		changes = append(changes, replication.Change{Op: replication.Insert, After: r})
	}
	if err := e.Writer().Apply(context.Background(), changes); err != nil {
		t.Fatal(err)
	}
}

func shadowRendered(t *testing.T, e *Engine, bt batchTable) []string {
	t.Helper()
	got := harness.Strings(t, e.data, "SELECT "+bt.render+" FROM "+e.qt(e.names.shadow))
	slices.Sort(got)
	return got
}

func TestWriterBatchesMatchRowByRow(t *testing.T) {
	for _, bt := range batchTables {
		t.Run(bt.name, func(t *testing.T) {
			for seed := range uint64(3) {
				rnd := rand.New(rand.NewPCG(seed, 42))
				g := &streamGen{bt: bt, rnd: rnd, src: map[int][]any{}, keys: 60}
				model := &shadowModel{bt: bt, rows: map[string][]any{}}
				// The source holds keys 0..59; the copy brought some of
				// them, in older or newer states than the stream's.
				var copied [][]any
				for k := range 60 {
					g.src[k] = g.row(k)
					if rnd.IntN(2) == 0 {
						r := g.src[k]
						if rnd.IntN(2) == 0 {
							r = g.row(k)
						}
						copied = append(copied, r)
						model.rows[model.key(r)] = r
					}
				}
				var stream []replication.Change
				for range 1500 {
					c := g.next()
					stream = append(stream, c)
					model.apply(c)
				}
				want := model.rendered()

				batched, _ := shadowEngine(t, bt.ddl, bt.alter)
				single, _ := shadowEngine(t, bt.ddl, bt.alter)
				insertShadowRows(t, batched, copied)
				insertShadowRows(t, single, copied)
				wb, ws := batched.Writer(), single.Writer()
				ctx := context.Background()
				for rest := stream; len(rest) > 0; {
					n := min(len(rest), 1+rnd.IntN(400))
					if err := wb.Apply(ctx, rest[:n]); err != nil {
						t.Fatalf("seed %d: batch: %v", seed, err)
					}
					rest = rest[n:]
				}
				for _, c := range stream {
					if err := ws.Apply(ctx, []replication.Change{c}); err != nil {
						t.Fatalf("seed %d: one change: %v", seed, err)
					}
				}
				if got := shadowRendered(t, single, bt); !slices.Equal(got, want) {
					t.Fatalf("seed %d: one change at a time: shadow differs from the model\n got %q\nwant %q", seed, got, want)
				}
				if got := shadowRendered(t, batched, bt); !slices.Equal(got, want) {
					t.Fatalf("seed %d: batched: shadow differs from the model\n got %q\nwant %q", seed, got, want)
				}
				if batched.displaced.len() != 0 {
					t.Fatalf("seed %d: %d rows displaced without any conflict", seed, batched.displaced.len())
				}
			}
		})
	}
}

// Runs of updates to the same keys, and updates of rows the copy has not
// brought yet, in one batch.
func TestWriterBatchedUpdatesSameKeyAndUncopied(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, v VARCHAR(10) NOT NULL, n INT NULL)", "ADD COLUMN z INT NOT NULL DEFAULT 9")
	if _, err := db.Exec("INSERT INTO _t_new (id, v, n) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)"); err != nil {
		t.Fatal(err)
	}
	up := func(id int64, from, to string, n any) replication.Change {
		return replication.Change{Op: replication.Update, Before: []any{id, from, nil}, After: []any{id, to, n}}
	}
	changes := []replication.Change{
		up(1, "a", "a1", int64(10)),
		up(2, "b", "b1", int64(20)),
		up(1, "a1", "a2", nil),
		up(4, "d", "d1", int64(40)), // not copied yet: stays absent
		up(1, "a2", "a3", int64(12)),
		up(2, "b1", "b2", int64(22)),
		up(4, "d1", "d2", int64(41)),
		up(3, "c", "c1", nil),
	}
	if err := e.Writer().Apply(context.Background(), changes); err != nil {
		t.Fatal(err)
	}
	got := harness.Strings(t, db, "SELECT CONCAT_WS('|', id, v, COALESCE(n, 'NULL'), z) FROM _t_new ORDER BY id")
	want := []string{"1|a3|12|9", "2|b2|22|9", "3|c1|NULL|9"}
	if !slices.Equal(got, want) {
		t.Fatalf("shadow %q, want %q", got, want)
	}
}

// A multi-row UPDATE sets only the columns its updates change, counting
// those of an image a later update of the same key replaced: row 1's v
// changes first, then only its n, while row 2 changes only n.
func TestWriterBatchedUpdatesSetEveryChangedColumn(t *testing.T) {
	for _, tc := range []struct{ name, alter string }{
		{"segments", "ADD COLUMN z INT NOT NULL DEFAULT 9"},
		{"runs in stream order", "ADD UNIQUE KEY uz (z), ADD COLUMN z INT NULL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, db := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, v VARCHAR(10) NOT NULL, n INT NULL)", tc.alter)
			if _, err := db.Exec("INSERT INTO _t_new (id, v, n) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)"); err != nil {
				t.Fatal(err)
			}
			up := func(id int64, v0, v1 string, n0, n1 int64) replication.Change {
				return replication.Change{Op: replication.Update, Before: []any{id, v0, n0}, After: []any{id, v1, n1}}
			}
			changes := []replication.Change{
				up(1, "a", "a1", 1, 1),
				up(2, "b", "b", 2, 20),
				up(1, "a1", "a1", 1, 10),
				up(3, "c", "c", 3, 3), // changes nothing
			}
			if err := e.Writer().Apply(context.Background(), changes); err != nil {
				t.Fatal(err)
			}
			got := harness.Strings(t, db, "SELECT CONCAT_WS('|', id, v, COALESCE(n, 'NULL')) FROM _t_new ORDER BY id")
			if want := []string{"1|a1|10", "2|b|20", "3|c|3"}; !slices.Equal(got, want) {
				t.Fatalf("shadow %q, want %q", got, want)
			}
		})
	}
}

// A UNIQUE key the ALTER adds: runs of updates stay in stream order and a
// key seen again ends the run. A multi-row statement that collides where
// the stream's order does not (a value freed, then taken) is redone one
// update at a time; one that collides with a stale holder displaces it,
// and the copy-back restores it; a value the source holds twice is a real
// duplicate.
func TestWriterBatchedUpdatesUniqueConflict(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, u INT NOT NULL, v VARCHAR(10) NOT NULL)", "ADD UNIQUE KEY uk (u)")
	ctx := context.Background()
	exec := func(stmts ...string) {
		t.Helper()
		for _, stmt := range stmts {
			if _, err := db.Exec(stmt); err != nil {
				t.Fatal(err)
			}
		}
	}
	shadow := func() []string {
		return harness.Strings(t, db, "SELECT CONCAT_WS(':', id, u, v) FROM _t_new ORDER BY id")
	}
	up := func(id, from, to int64, v string) replication.Change {
		return replication.Change{Op: replication.Update, Before: []any{id, from, v}, After: []any{id, to, v}}
	}
	w := e.Writer()

	// Row 2 frees 2, then row 1 takes it; the statement, in key order,
	// would have row 1 take it first.
	exec("INSERT INTO t VALUES (1, 2, 'a'), (2, 5, 'b'), (3, 3, 'c')",
		"INSERT INTO _t_new VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c')")
	if err := w.Apply(ctx, []replication.Change{up(2, 2, 5, "b"), up(1, 1, 2, "a"), up(3, 3, 3, "c")}); err != nil {
		t.Fatalf("a value freed and taken in one run: %v", err)
	}
	if got, want := shadow(), []string{"1:2:a", "2:5:b", "3:3:c"}; !slices.Equal(got, want) || e.displaced.len() != 0 {
		t.Fatalf("shadow %q with %d displaced, want %q and none", got, e.displaced.len(), want)
	}

	// The copy brought row 5 holding 7, which row 4 held before; the
	// stream replays row 4 taking 7, then leaving it.
	exec("INSERT INTO t VALUES (4, 8, 'd'), (5, 7, 'e')",
		"INSERT INTO _t_new VALUES (4, 1004, 'd'), (5, 7, 'e')")
	if err := w.Apply(ctx, []replication.Change{up(3, 3, 3, "c"), up(4, 1004, 7, "d")}); err != nil {
		t.Fatalf("a stale holder in a batched run: %v", err)
	}
	if got := shadow(); !slices.Contains(got, "4:7:d") || slices.Contains(got, "5:7:e") || e.displaced.len() != 1 {
		t.Fatalf("shadow %q with %d displaced; want row 5 displaced by row 4", got, e.displaced.len())
	}
	if err := w.Apply(ctx, []replication.Change{up(4, 7, 8, "d"), up(3, 3, 3, "c")}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		n, err := e.Restore(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if got, want := shadow(), []string{"1:2:a", "2:5:b", "3:3:c", "4:8:d", "5:7:e"}; !slices.Equal(got, want) || e.displaced.len() != 0 {
		t.Fatalf("after the copy-back: shadow %q with %d displaced, want %q", got, e.displaced.len(), want)
	}

	// A real duplicate: the source holds 9 in rows 6 and 7.
	exec("INSERT INTO t VALUES (6, 9, 'f'), (7, 9, 'g')",
		"INSERT INTO _t_new VALUES (6, 9, 'f'), (7, 10, 'g')")
	err := w.Apply(ctx, []replication.Change{up(3, 3, 3, "c2"), up(7, 10, 9, "g")})
	if err == nil || !strings.Contains(err.Error(), "`uk`") || !strings.Contains(err.Error(), "(6)") || !strings.Contains(err.Error(), "(7)") {
		t.Fatalf("got %v, want the real duplicate named with both keys", err)
	}
}

// A lossy conversion that is only a note (DECIMAL rounding) in a batched
// update fails the run, with and without other unique keys (segments or
// runs in stream order), with a single integer key and a composite one.
func TestWriterBatchedUpdatesRefuseLossyValues(t *testing.T) {
	for _, tc := range []struct{ name, ddl, alter string }{
		{"int key", "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, d DECIMAL(10,3) NOT NULL)", "MODIFY d DECIMAL(10,2) NOT NULL"},
		{"unique key", "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, d DECIMAL(10,3) NOT NULL)", "MODIFY d DECIMAL(10,2) NOT NULL, ADD UNIQUE KEY ud (d)"},
		{"composite key", "CREATE TABLE t (id INT NOT NULL, s CHAR(2) NOT NULL, d DECIMAL(10,3) NOT NULL, PRIMARY KEY (s, id))", "MODIFY d DECIMAL(10,2) NOT NULL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, db := shadowEngine(t, tc.ddl, tc.alter)
			composite := strings.Contains(tc.name, "composite")
			row := func(id int64, d string) []any {
				if composite {
					return []any{id, "x", d}
				}
				return []any{id, d}
			}
			var changes []replication.Change
			for i := range int64(5) {
				if composite {
					_, err := db.Exec("INSERT INTO _t_new VALUES (?, 'x', ?)", i, i)
					if err != nil {
						t.Fatal(err)
					}
				} else if _, err := db.Exec("INSERT INTO _t_new VALUES (?, ?)", i, i); err != nil {
					t.Fatal(err)
				}
				d := fmt.Sprintf("%d.50", i+10)
				if i == 3 {
					d = "13.505" // rounds: a note, not an error, in strict mode
				}
				changes = append(changes, replication.Change{Op: replication.Update, Before: row(i, fmt.Sprint(i)), After: row(i, d)})
			}
			err := e.Writer().Apply(context.Background(), changes)
			if err == nil || !strings.Contains(err.Error(), "does not hold the data") {
				t.Fatalf("got %v, want the rounding refused", err)
			}
			got := harness.Strings(t, db, "SELECT d FROM _t_new ORDER BY id")
			if want := []string{"0.00", "1.00", "2.00", "3.00", "4.00"}; !slices.Equal(got, want) {
				t.Fatalf("the failed batch left %q", got)
			}
		})
	}
}

// The server keeps 64 warnings unless told otherwise: a multi-row INSERT
// whose first 100 rows are expected duplicates on the chunking key must
// still see a lossy value in its last row.
func TestWriterInsertSeesWarningsPastTheDefaultLimit(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, d DECIMAL(10,3) NOT NULL)", "MODIFY d DECIMAL(10,2) NOT NULL")
	var changes []replication.Change
	for i := range int64(100) {
		if _, err := db.Exec("INSERT INTO _t_new VALUES (?, 1)", i); err != nil {
			t.Fatal(err)
		}
		changes = append(changes, replication.Change{Op: replication.Insert, After: []any{i, "1.000"}})
	}
	changes = append(changes, replication.Change{Op: replication.Insert, After: []any{int64(100), "1.005"}})
	err := e.Writer().Apply(context.Background(), changes)
	if err == nil || !strings.Contains(err.Error(), "does not hold the data") {
		t.Fatalf("got %v, want the rounding of the 101st row refused", err)
	}
}

// Rows too big to merge by the row count alone are split by size.
func TestWriterSplitsLargeRows(t *testing.T) {
	e, db := shadowEngine(t, "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, body LONGBLOB NOT NULL)", "ADD COLUMN z INT NULL")
	big := func(id int64, c byte) []any { return []any{id, []byte(strings.Repeat(string(c), 1<<20))} }
	var changes []replication.Change
	for i := range int64(12) {
		changes = append(changes, replication.Change{Op: replication.Insert, After: big(i, 'a')})
	}
	for i := range int64(12) {
		changes = append(changes, replication.Change{Op: replication.Update, Before: big(i, 'a'), After: big(i, 'b')})
	}
	if err := e.Writer().Apply(context.Background(), changes); err != nil {
		t.Fatal(err)
	}
	got := harness.Strings(t, db, "SELECT CONCAT(COUNT(*), ':', SUM(LENGTH(body)), ':', SUM(body LIKE 'b%')) FROM _t_new")
	if want := fmt.Sprintf("12:%d:12", 12<<20); got[0] != want {
		t.Fatalf("got %s, want %s", got[0], want)
	}
}

// Where segments end: a key touched again, but by updates that keep it.
func TestWriterSegmentBoundaries(t *testing.T) {
	w := &writer{keyIdx: []int{0}}
	ins := func(k int64) replication.Change {
		return replication.Change{Op: replication.Insert, After: []any{k, "x"}}
	}
	del := func(k int64) replication.Change {
		return replication.Change{Op: replication.Delete, Before: []any{k, "x"}}
	}
	up := func(k int64) replication.Change {
		return replication.Change{Op: replication.Update, Before: []any{k, "x"}, After: []any{k, "y"}}
	}
	move := func(from, to int64) replication.Change {
		return replication.Change{Op: replication.Update, Before: []any{from, "x"}, After: []any{to, "x"}}
	}
	for _, tc := range []struct {
		name    string
		changes []replication.Change
		ends    []int
	}{
		{"distinct keys", []replication.Change{ins(1), up(2), del(3), move(4, 5), up(6)}, []int{5}},
		{"updates of one key coalesce", []replication.Change{up(1), up(2), up(1), up(1), del(3)}, []int{5}},
		{"insert after delete", []replication.Change{del(1), up(2), ins(1), up(1)}, []int{2, 3, 4}},
		{"update after insert", []replication.Change{ins(1), up(1), up(1)}, []int{1, 3}},
		{"chain of key changes", []replication.Change{move(1, 2), move(2, 3), move(3, 1)}, []int{1, 2, 3}},
		{"key change onto an updated key", []replication.Change{up(2), move(1, 2)}, []int{1, 2}},
	} {
		var s segment
		var ends []int
		for i := 0; i < len(tc.changes); {
			i = w.collectSegment(&s, tc.changes, i)
			ends = append(ends, i)
		}
		if !slices.Equal(ends, tc.ends) {
			t.Errorf("%s: segments end at %v, want %v", tc.name, ends, tc.ends)
		}
	}
}
