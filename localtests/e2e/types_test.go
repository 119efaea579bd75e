package e2e

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// lit is a value written as SQL text rather than as a statement parameter
// (for X'..' and b'..' literals, exact decimals, zero dates).
type lit string

// valueSet is one value per column; a column not in the set is NULL.
type valueSet map[string]any

// typeColumns are the columns of the type-fidelity table, in order.
var typeColumns = []struct{ name, def string }{
	{"id", "INT NOT NULL"},
	{"ti", "TINYINT UNSIGNED NULL"},
	{"si", "SMALLINT UNSIGNED NULL"},
	{"mi", "MEDIUMINT UNSIGNED NULL"},
	{"ii", "INT UNSIGNED NULL"},
	{"bi", "BIGINT UNSIGNED NULL"},
	{"sti", "TINYINT NULL"},
	{"ssi", "SMALLINT NULL"},
	{"smi", "MEDIUMINT NULL"},
	{"sii", "INT NULL"},
	{"sbi", "BIGINT NULL"},
	{"e", "ENUM('a','b','it''s','ü') NULL"},
	{"st", "SET('x','y','z') NULL"},
	{"bn", "BINARY(4) NULL"},
	{"vb", "VARBINARY(16) NULL"},
	{"dt", "DATE NULL"},
	{"dtt", "DATETIME NULL"},
	{"dc", "DECIMAL(65,30) NULL"},
	{"dt6", "DATETIME(6) NULL"},
	{"ts6", "TIMESTAMP(6) NULL DEFAULT NULL"},
	{"tsz", "TIMESTAMP NULL DEFAULT NULL"},
	{"tm", "TIME(3) NULL"},
	{"yr", "YEAR NULL"},
	{"bt", "BIT(8) NULL"},
	{"fl", "FLOAT NULL"},
	{"db", "DOUBLE NULL"},
	{"emo", "VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NULL"},
	{"lat", "VARCHAR(64) CHARACTER SET latin1 NULL"},
	{"js", "JSON NULL"},
	{"bl", "BLOB NULL"},
	{"tx", "TEXT NULL"},
	{"mb", "MEDIUMBLOB NULL"},
	{"mt", "MEDIUMTEXT NULL"},
}

func typeColumnNames() []string {
	var out []string
	for _, c := range typeColumns {
		out = append(out, c.name)
	}
	return out
}

func typesSchema() string {
	var defs []string
	for _, c := range typeColumns {
		defs = append(defs, "`"+c.name+"` "+c.def)
	}
	return "CREATE TABLE t (\n\t" + strings.Join(defs, ",\n\t") + ",\n\tPRIMARY KEY (id)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
}

// Deterministic large values.
var (
	dataRng  = rand.New(rand.NewPCG(1, 2))
	blob4k   = randomBytes(4096)
	blob100k = randomBytes(100 * 1024)
	allBytes = func() []byte {
		b := make([]byte, 256)
		for i := range b {
			b[i] = byte(i)
		}
		return b
	}()
	text4k     = strings.Repeat("Größe 😀 中文 ", 4096/24)
	text100k   = strings.Repeat("naïve café Ærø 👨‍👩‍👧 ", 100*1024/32)
	textWithNU = "a\x00b ñ 😀 \x00"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(dataRng.UintN(256))
	}
	return b
}

var (
	setMax = valueSet{
		"ti": lit("255"), "si": lit("65535"), "mi": lit("16777215"), "ii": lit("4294967295"), "bi": lit("18446744073709551615"),
		"sti": lit("127"), "ssi": lit("32767"), "smi": lit("8388607"), "sii": lit("2147483647"), "sbi": lit("9223372036854775807"),
		"e": "ü", "st": "x,y,z", "bn": lit("X'01020000'"), "vb": lit("X'00FF0000'"),
		"dt": lit("'9999-12-31'"), "dtt": lit("'9999-12-31 23:59:59'"),
		"dc":  lit("'99999999999999999999999999999999999.999999999999999999999999999999'"),
		"dt6": lit("'9999-12-31 23:59:59.999999'"),
		// In the writers' time zone +05:30: the largest TIMESTAMP, 03:14:07.999999 UTC.
		"ts6": lit("'2038-01-19 08:44:07.999999'"), "tsz": lit("'2038-01-19 08:44:07'"),
		"tm": lit("'838:59:59.999'"), "yr": lit("2155"), "bt": lit("b'11111111'"),
		"fl": lit("3.40282e38"), "db": lit("1.7976931348623157e308"),
		"emo": "😀👍🏽👨‍👩‍👧 café", "lat": "Ærø",
		"js": `{"k": [1, 2.5e300, "ü😀", null, true], "n": {"q": "a\"b"}}`,
		"bl": blob4k, "tx": text4k, "mb": blob100k, "mt": text100k,
	}
	setMin = valueSet{
		"ti": lit("0"), "si": lit("0"), "mi": lit("0"), "ii": lit("0"), "bi": lit("0"),
		"sti": lit("-128"), "ssi": lit("-32768"), "smi": lit("-8388608"), "sii": lit("-2147483648"), "sbi": lit("-9223372036854775808"),
		"e": "a", "st": "", "bn": lit("X'00'"), "vb": lit("X''"),
		"dt": lit("'0000-00-00'"), "dtt": lit("'0000-00-00 00:00:00'"),
		"dc":  lit("'-99999999999999999999999999999999999.999999999999999999999999999999'"),
		"dt6": lit("'0000-00-00 00:00:00.000000'"),
		// The smallest TIMESTAMP, 00:00:01.000001 UTC.
		"ts6": lit("'1970-01-01 05:30:01.000001'"),
		// The zero TIMESTAMP (permissive sql_mode).
		"tsz": lit("'0000-00-00 00:00:00'"),
		"tm":  lit("'-838:59:59.999'"), "yr": lit("1901"), "bt": lit("b'0'"),
		"fl": lit("-3.40282e38"), "db": lit("-2.2250738585072014e-308"),
		"emo": "", "lat": "café", "js": "[]",
		"bl": lit("X''"), "tx": "", "mb": lit("X'00000000'"), "mt": "",
	}
	setMisc = valueSet{
		"ti": lit("1"), "si": lit("256"), "mi": lit("65536"), "ii": lit("2147483648"), "bi": lit("9223372036854775808"),
		"sti": lit("-1"), "ssi": lit("-1"), "smi": lit("-1"), "sii": lit("-1"), "sbi": lit("-1"),
		"e": "it's", "st": "y", "bn": lit("X'FF000000'"), "vb": lit("X'0000'"),
		"dt": lit("'2021-00-00'"), "dtt": lit("'2021-02-00 10:00:00'"),
		"dc":  lit("'0.000000000000000000000000000001'"),
		"dt6": lit("'2024-02-29 23:59:59.000001'"),
		// 21:00:00.5 UTC the day before.
		"ts6": lit("'2024-03-31 02:30:00.500000'"), "tsz": lit("'1970-01-01 05:30:01'"),
		"tm": lit("'-00:00:00.001'"), "yr": lit("0"), "bt": lit("b'10000000'"),
		"fl": lit("0.1"), "db": lit("0.1"),
		"emo": "ñ Ω 中文", "lat": "€uro ÿ", "js": `{ "a" : 1 ,"b":[ ] }`,
		"bl": allBytes, "tx": textWithNU, "mt": text100k,
	}
	setMisc2 = valueSet{
		"ti": lit("128"), "bi": lit("1"), "sbi": lit("-9223372036854775807"),
		"e": "b", "st": "x,z", "bn": lit("X'0000FF00'"), "vb": lit("X'FF'"),
		"dt": lit("'1000-01-01'"), "dtt": lit("'1000-01-01 00:00:00'"),
		"dc":  lit("'-0.000000000000000000000000000001'"),
		"dt6": lit("'1000-01-01 00:00:00.000000'"), "ts6": lit("'2000-01-01 00:00:00'"),
		"tm": lit("'-00:00:01.500'"), "yr": lit("1999"), "bt": lit("b'00000001'"),
		"fl": lit("-1.5e-30"), "db": lit("123456789.123456789"),
		"emo": "🏳️‍🌈", "lat": "Ål", "js": `"just a string"`, "tx": "short",
	}
	setNull = valueSet{}
)

// valuesSQL renders a value set for the non-key columns as SQL expressions
// and their parameters.
func valuesSQL(v valueSet) (exprs []string, args []any) {
	for _, c := range typeColumns[1:] {
		x, ok := v[c.name]
		switch {
		case !ok:
			exprs = append(exprs, "NULL")
		case isLit(x):
			exprs = append(exprs, string(x.(lit)))
		default:
			exprs = append(exprs, "?")
			args = append(args, x)
		}
	}
	return exprs, args
}

func isLit(x any) bool {
	_, ok := x.(lit)
	return ok
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func insertSet(t *testing.T, db execer, id int, v valueSet) {
	t.Helper()
	exprs, args := valuesSQL(v)
	q := "INSERT INTO t VALUES (?, " + strings.Join(exprs, ", ") + ")"
	mustExec(t, db, q, append([]any{id}, args...)...)
}

// updateSet sets every non-key column (and the key, if newID != id).
func updateSet(t *testing.T, db execer, id, newID int, v valueSet) {
	t.Helper()
	exprs, args := valuesSQL(v)
	sets := []string{"id = ?"}
	for i, c := range typeColumns[1:] {
		sets = append(sets, "`"+c.name+"` = "+exprs[i])
	}
	q := "UPDATE t SET " + strings.Join(sets, ", ") + " WHERE id = ?"
	args = append([]any{newID}, args...)
	args = append(args, id)
	res := mustExec(t, db, q, args...)
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("updating row %d changed %d rows, want 1", id, n)
	}
}

func mustExec(t *testing.T, db execer, query string, args ...any) sql.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := db.ExecContext(ctx, query, args...)
	if err != nil {
		t.Fatalf("%s: %v", abbrev(query), err)
	}
	return res
}

// binlogWindow starts a run whose copy is held back by a throttle flag
// file, waits until change capture is running and the copy has read its
// key range, calls write (so every change it makes reaches the new table
// through the binlog and the applier, except changes to rows the copy
// still copies), then releases the copy and returns the run's result.
func binlogWindow(t *testing.T, e *env, alter string, write func()) (*migration.Result, error) {
	t.Helper()
	flag := filepath.Join(t.TempDir(), "throttle")
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	o := e.options(alter)
	o.ThrottleFlagFile = flag
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := runAsync(ctx, o)

	// Capture starts right after the changelog table is created, and the
	// first sync marker is written once it has: when the marker is in the
	// table, every later write is in the stream. The copy then reads its
	// key range and stops at the throttle before its first chunk.
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		err := e.db.QueryRow("SELECT COUNT(*) FROM `_t_osc` WHERE kind = 'sync'").Scan(&n)
		if err == nil && n > 0 {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("the run ended before change capture was seen to start: result %+v, error %v", r.res, r.err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("change capture did not start within a minute (no sync marker in _t_osc; last error: %v)", err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if !e.tableExists("_t_new") {
		t.Fatal("the shadow table _t_new does not exist while the copy is throttled")
	}
	if n := e.count("_t_new"); n != 0 {
		t.Fatalf("the shadow table holds %d rows before the window's writes although the copy is throttled", n)
	}
	write()
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	r := <-done
	return r.res, r.err
}

// writerConn is a session like an application's: permissive sql_mode (zero
// dates) and a non-UTC time zone.
func writerConn(t *testing.T, e *env) *sql.Conn {
	t.Helper()
	conn, err := e.db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	mustExec(t, conn, "SET SESSION sql_mode = '', time_zone = '+05:30'")
	return conn
}

// TestTypesThroughBinlog writes rows with every awkward type while the
// copy is held back, so that they reach the new table only through the
// binlog and the applier, and checks they arrive byte for byte.
func TestTypesThroughBinlog(t *testing.T) {
	e := newEnv(t)
	e.exec(typesSchema())
	w := writerConn(t, e)
	// Rows that exist before the run: the copy's key range ends at id 2.
	insertSet(t, w, 1, setMisc)
	insertSet(t, w, 2, setMax)

	changes := 0
	res, err := binlogWindow(t, e, "ADD COLUMN extra INT NULL", func() {
		ins := func(id int, v valueSet) { insertSet(t, w, id, v); changes++ }
		upd := func(id, newID int, v valueSet) { updateSet(t, w, id, newID, v); changes++ }
		ins(10, setMax)
		ins(11, setMin)
		ins(12, setMisc)
		ins(13, setNull)
		// One statement, two rows.
		exprs14, args14 := valuesSQL(setMax)
		exprs15, args15 := valuesSQL(setMin)
		mustExec(t, w, "INSERT INTO t VALUES (14, "+strings.Join(exprs14, ", ")+"), (15, "+strings.Join(exprs15, ", ")+")",
			append(args14, args15...)...)
		changes += 2
		// Updates carry the awkward values in their after images, and
		// out of them in their before images.
		ins(16, setNull)
		upd(16, 16, setMax)
		ins(17, setMax)
		upd(17, 17, setNull)
		ins(18, setMin)
		upd(18, 18, setMax)
		ins(19, setMax)
		upd(19, 19, setMin)
		ins(23, setMisc)
		upd(23, 23, setMisc2)
		mustExec(t, w, "DELETE FROM t WHERE id = 14")
		changes++
		// Key changes, with and without other columns changing.
		upd(15, 115, setMisc)
		mustExec(t, w, "UPDATE t SET id = 113 WHERE id = 13")
		changes++
		// A row that existed before the run moves beyond the copy's range:
		// only the stream brings it.
		mustExec(t, w, "UPDATE t SET id = 102 WHERE id = 2")
		changes++
		// A row the copy will still copy.
		upd(1, 1, setMin)
		// A multi-row update.
		mustExec(t, w, "UPDATE t SET sii = sii - 1, lat = CONCAT(lat, 'é') WHERE id IN (10, 12)")
		changes += 2
		// One transaction with several changes to the same rows.
		tx, err := w.BeginTx(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		insertSet(t, tx, 20, setMin)
		updateSet(t, tx, 20, 20, setMax)
		insertSet(t, tx, 21, setMax)
		mustExec(t, tx, "DELETE FROM t WHERE id = 21")
		updateSet(t, tx, 20, 120, setMisc2)
		insertSet(t, tx, 22, setMisc2)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		changes += 6
	})
	assertApplied(t, res, err)
	t.Logf("copied %d rows, applied %d events", res.RowsCopied, res.EventsApplied)
	if res.RowsCopied > 1 {
		t.Errorf("Result.RowsCopied = %d, want at most 1 (only row 1 is in the copy's range): the rows written during the throttled copy must arrive through the binlog", res.RowsCopied)
	}
	if res.EventsApplied < int64(changes) {
		t.Errorf("Result.EventsApplied = %d, want at least %d row changes made while the copy was throttled", res.EventsApplied, changes)
	}
	e.assertCleanedUp()

	wantIDs := []string{"1", "10", "11", "12", "16", "17", "18", "19", "22", "23", "102", "113", "115", "120"}
	if got := e.ids("t"); !slices.Equal(got, wantIDs) {
		t.Errorf("ids in the new table = %v, want %v", got, wantIDs)
	}
	if got := e.ids("_t_old"); !slices.Equal(got, wantIDs) {
		t.Errorf("test setup: ids in the original table = %v, want %v", got, wantIDs)
	}
	cols := typeColumnNames()
	e.assertSameChecksum("t", "_t_old", cols, []string{"id"})
	// Per column, so that a difference names the column.
	if t.Failed() {
		for _, c := range cols[1:] {
			a := harness.Checksum(t, e.db, "t", []string{"id", c}, []string{"id"})
			b := harness.Checksum(t, e.db, "_t_old", []string{"id", c}, []string{"id"})
			if a != b {
				t.Errorf("column %s differs between the new table and the original: %s", c, e.describeDiff("t", "_t_old", []string{"id", c}, []string{"id"}))
			}
		}
	}
	if n := e.queryString("SELECT COUNT(*) FROM t WHERE extra IS NOT NULL"); n != "0" {
		t.Errorf("%s rows have a non-NULL extra, want none", n)
	}

	// Exact values, read back in UTC.
	spot := map[int]map[string]string{
		10: spotMax(), 16: spotMax(), 18: spotMax(),
		11: spotMin(), 19: spotMin(),
		102: spotMax(),
		115: {
			"CAST(bi AS CHAR)": "9223372036854775808", "CAST(ii AS CHAR)": "2147483648",
			"CAST(sbi AS CHAR)": "-1", "HEX(bn)": "FF000000", "HEX(vb)": "0000",
			"CAST(dt AS CHAR)": "2021-00-00", "CAST(dtt AS CHAR)": "2021-02-00 10:00:00",
			"CAST(ts6 AS CHAR)": "2024-03-30 21:00:00.500000", "CAST(tsz AS CHAR)": "1970-01-01 00:00:01", "CAST(tm AS CHAR)": "-00:00:00.001",
			"CAST(yr AS CHAR)": "0000", "CAST(e AS CHAR)": "it's", "HEX(lat)": "8075726F20FF",
			"HEX(bl)": strings.ToUpper(hex.EncodeToString(allBytes)), "HEX(tx)": strings.ToUpper(hex.EncodeToString([]byte(textWithNU))),
			"CAST(dc AS CHAR)": "0.000000000000000000000000000001", "bt + 0": "128",
		},
		120: {
			"CAST(tm AS CHAR)": "-00:00:01.500", "CAST(st AS CHAR)": "x,z", "HEX(bn)": "0000FF00",
			"CAST(sbi AS CHAR)": "-9223372036854775807", "CAST(ts6 AS CHAR)": "1999-12-31 18:30:00.000000",
			"CAST(dc AS CHAR)": "-0.000000000000000000000000000001", "HEX(emo)": strings.ToUpper(hex.EncodeToString([]byte("🏳️‍🌈"))),
			"CAST(js AS CHAR)": `"just a string"`, "mb IS NULL": "1",
		},
		17:  nullSpot(),
		113: nullSpot(),
	}
	spot[12] = map[string]string{
		"CAST(sii AS CHAR)": "-2", "HEX(lat)": "8075726F20FFE9", "CAST(tm AS CHAR)": "-00:00:00.001",
		"CAST(js AS CHAR)": `{ "a" : 1 ,"b":[ ] }`, "HEX(vb)": "0000",
	}
	spot[10]["CAST(sii AS CHAR)"] = "2147483646"
	spot[10]["HEX(lat)"] = "C672F8E9"
	checkSpots(t, e, spot)
}

func spotMax() map[string]string {
	return map[string]string{
		"CAST(ti AS CHAR)": "255", "CAST(si AS CHAR)": "65535", "CAST(mi AS CHAR)": "16777215",
		"CAST(ii AS CHAR)": "4294967295", "CAST(bi AS CHAR)": "18446744073709551615",
		"CAST(sti AS CHAR)": "127", "CAST(sbi AS CHAR)": "9223372036854775807",
		"CAST(e AS CHAR)": "ü", "CAST(st AS CHAR)": "x,y,z", "HEX(bn)": "01020000", "HEX(vb)": "00FF0000",
		"CAST(dc AS CHAR)":  "99999999999999999999999999999999999.999999999999999999999999999999",
		"CAST(dt6 AS CHAR)": "9999-12-31 23:59:59.999999", "CAST(ts6 AS CHAR)": "2038-01-19 03:14:07.999999",
		"CAST(tsz AS CHAR)": "2038-01-19 03:14:07",
		"CAST(tm AS CHAR)":  "838:59:59.999", "CAST(yr AS CHAR)": "2155", "bt + 0": "255",
		"HEX(emo)":      strings.ToUpper(hex.EncodeToString([]byte("😀👍🏽👨‍👩‍👧 café"))),
		"HEX(lat)":      "C672F8",
		"SHA2(bl, 256)": sha(blob4k), "SHA2(mb, 256)": sha(blob100k),
		"SHA2(tx, 256)": sha([]byte(text4k)), "SHA2(mt, 256)": sha([]byte(text100k)),
		"CAST(js AS CHAR)": `{"k": [1, 2.5e300, "ü😀", null, true], "n": {"q": "a\"b"}}`,
		"CAST(db AS CHAR)": "1.7976931348623157e308",
	}
}

func spotMin() map[string]string {
	return map[string]string{
		"CAST(ti AS CHAR)": "0", "CAST(bi AS CHAR)": "0",
		"CAST(sti AS CHAR)": "-128", "CAST(ssi AS CHAR)": "-32768", "CAST(smi AS CHAR)": "-8388608",
		"CAST(sii AS CHAR)": "-2147483648", "CAST(sbi AS CHAR)": "-9223372036854775808",
		"CAST(e AS CHAR)": "a", "CAST(st AS CHAR)": "", "st IS NULL": "0", "HEX(bn)": "00000000",
		"HEX(vb)": "", "vb IS NULL": "0",
		"CAST(dt AS CHAR)": "0000-00-00", "CAST(dtt AS CHAR)": "0000-00-00 00:00:00",
		"CAST(dt6 AS CHAR)": "0000-00-00 00:00:00.000000", "CAST(ts6 AS CHAR)": "1970-01-01 00:00:01.000001",
		"CAST(tsz AS CHAR)": "0000-00-00 00:00:00", "tsz IS NULL": "0",
		"CAST(dc AS CHAR)": "-99999999999999999999999999999999999.999999999999999999999999999999",
		"CAST(tm AS CHAR)": "-838:59:59.999", "CAST(yr AS CHAR)": "1901", "bt + 0": "0",
		"HEX(emo)": "", "emo IS NULL": "0", "HEX(lat)": "636166E9", "HEX(mb)": "00000000",
		"CAST(db AS CHAR)": "-2.2250738585072014e-308",
	}
}

func nullSpot() map[string]string {
	var parts []string
	for _, c := range typeColumns[1:] {
		parts = append(parts, "(`"+c.name+"` IS NOT NULL)")
	}
	return map[string]string{strings.Join(parts, " + "): "0"}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkSpots reads each expression of each row of the new table t in a
// UTC session and compares it with the expected text.
func checkSpots(t *testing.T, e *env, spot map[int]map[string]string) {
	t.Helper()
	conn, err := e.db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustExec(t, conn, "SET SESSION time_zone = '+00:00'")
	ids := make([]int, 0, len(spot))
	for id := range spot {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if n := queryStringOn(t, conn, "SELECT COUNT(*) FROM t WHERE id = ?", id); n != "1" {
			t.Errorf("row %d is missing from the new table", id)
			continue
		}
		exprs := make([]string, 0, len(spot[id]))
		for x := range spot[id] {
			exprs = append(exprs, x)
		}
		slices.Sort(exprs)
		for _, x := range exprs {
			got := queryStringOn(t, conn, fmt.Sprintf("SELECT %s FROM t WHERE id = ?", x), id)
			if want := spot[id][x]; got != want {
				t.Errorf("row %d of the new table: %s = %q, want %q (original: %q)", id, x, abbrev(got), abbrev(want),
					abbrev(queryStringOn(t, conn, fmt.Sprintf("SELECT %s FROM _t_old WHERE id = ?", x), id)))
			}
		}
	}
}

// TestStringKeyThroughBinlog: a case-insensitive VARCHAR primary key,
// updated and deleted by keys spelled differently from the stored ones, so
// that the applier's WHERE on string keys must match like the server does.
func TestStringKeyThroughBinlog(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE t (
		id VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL,
		v INT NULL,
		w VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NULL,
		PRIMARY KEY (id)
	) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci`)
	// The copy's key range ends at 'A': the rows below come only through the stream.
	e.exec("INSERT INTO t VALUES ('A', 1, 'seed')")

	res, err := binlogWindow(t, e, "ADD COLUMN extra INT NULL", func() {
		for i, k := range []string{"b", "Café", "ñandú", "😀 smile", "Zed", "mixedCase", "trail ", "Ærø", "straße", "x", "Ünï"} {
			e.exec("INSERT INTO t (id, v, w) VALUES (?, ?, ?)", k, i+10, "w-"+k)
		}
		affect := func(want int64, q string, args ...any) {
			t.Helper()
			if n, _ := e.exec(q, args...).RowsAffected(); n != want {
				t.Fatalf("%s %v changed %d rows, want %d", q, args, n, want)
			}
		}
		affect(1, "UPDATE t SET v = 2 WHERE id = 'B'")
		affect(1, "UPDATE t SET v = 3, w = 'café!' WHERE id = 'CAFÉ'")
		affect(1, "UPDATE t SET v = 4 WHERE id = 'trail'") // PAD SPACE: 'trail' = 'trail '
		affect(1, "UPDATE t SET id = 'MIXEDCASE' WHERE id = 'mixedcase'")
		affect(1, "UPDATE t SET id = 'zzz', v = 5 WHERE id = 'zed'")
		affect(1, "DELETE FROM t WHERE id = 'ÑANDÚ'")
		affect(1, "DELETE FROM t WHERE id = 'X'")
		affect(1, "UPDATE t SET id = 'Ærø2' WHERE id = 'ærø'")
		affect(1, "UPDATE t SET w = NULL WHERE id = 'STRAßE'")
		affect(1, "UPDATE t SET id = 'smile' WHERE id = '😀 smile'")
		affect(1, "UPDATE t SET id = 'ünï' WHERE id = 'ÜNÏ'") // a key change the collation cannot see
		affect(1, "UPDATE t SET v = 6 WHERE id = 'a'")
	})
	assertApplied(t, res, err)
	t.Logf("copied %d rows, applied %d events", res.RowsCopied, res.EventsApplied)
	if res.RowsCopied > 1 {
		t.Errorf("Result.RowsCopied = %d, want at most 1 (only 'A' is in the copy's range)", res.RowsCopied)
	}
	e.assertCleanedUp()

	hexKeys := func(table string) []string {
		return harness.Strings(t, e.db, "SELECT HEX(id) FROM "+harness.QuoteIdent(table)+" ORDER BY id")
	}
	var want []string
	for _, k := range []string{"A", "b", "Café", "MIXEDCASE", "smile", "straße", "trail ", "ünï", "zzz", "Ærø2"} {
		want = append(want, strings.ToUpper(hex.EncodeToString([]byte(k))))
	}
	slices.Sort(want)
	got := hexKeys("t")
	gotSorted := slices.Clone(got)
	slices.Sort(gotSorted)
	if !slices.Equal(gotSorted, want) {
		t.Errorf("keys (hex) of the new table = %v, want %v", gotSorted, want)
	}
	if old := hexKeys("_t_old"); !slices.Equal(got, old) {
		t.Errorf("keys (hex) of the new table = %v, of the original = %v", got, old)
	}
	e.assertSameChecksum("t", "_t_old", []string{"id", "v", "w"}, []string{"id"})
	for q, want := range map[string]string{
		"SELECT CONCAT(v, '/', w) FROM t WHERE id = 'b'":           "2/w-b",
		"SELECT CONCAT(v, '/', w) FROM t WHERE id = 'café'":        "3/café!",
		"SELECT CONCAT(v, '/', HEX(id)) FROM t WHERE id = 'trail'": "4/747261696C20",
		"SELECT v FROM t WHERE id = 'zzz'":                         "5",
		"SELECT v FROM t WHERE id = 'A'":                           "6",
		"SELECT w IS NULL FROM t WHERE id = 'straße'":              "1",
		"SELECT HEX(id) FROM t WHERE id = 'mixedcase'":             strings.ToUpper(hex.EncodeToString([]byte("MIXEDCASE"))),
		"SELECT HEX(id) FROM t WHERE id = 'ÜNÏ'":                   strings.ToUpper(hex.EncodeToString([]byte("ünï"))),
	} {
		if got := e.queryString(q); got != want {
			t.Errorf("%s = %q, want %q", q, got, want)
		}
	}
}
