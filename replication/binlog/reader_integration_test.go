package binlog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/replication"
)

func TestMain(m *testing.M) {
	harness.Main(m)
}

// serverDB is a fresh database on the harness's MariaDB.
type serverDB struct {
	srv    *harness.MySQL
	schema string
	db     *sql.DB
	flavor string
}

func newServerDB(t *testing.T) *serverDB {
	t.Helper()
	srv := harness.MariaDB(t)
	schema, db := srv.NewDatabase(t)
	var version string
	if err := db.QueryRow("SELECT VERSION()").Scan(&version); err != nil {
		t.Fatal(err)
	}
	flavor := "mysql"
	if strings.Contains(version, "MariaDB") {
		flavor = "mariadb"
	}
	return &serverDB{srv: srv, schema: schema, db: db, flavor: flavor}
}

// session returns one connection with the given session settings.
func (s *serverDB) session(t *testing.T, settings ...string) *sql.Conn {
	t.Helper()
	ctx := context.Background()
	c, err := s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, q := range settings {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return c
}

func exec(t *testing.T, db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, queries ...string,
) {
	t.Helper()
	for _, q := range queries {
		if _, err := db.ExecContext(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func (s *serverDB) masterStatus(t *testing.T) Position {
	t.Helper()
	for _, q := range []string{"SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"} {
		rows, err := s.db.Query(q)
		if err != nil {
			continue
		}
		cols, err := rows.Columns()
		if err != nil {
			t.Fatal(err)
		}
		if !rows.Next() {
			rows.Close()
			t.Fatalf("%s: no rows (is the binlog enabled?)", q)
		}
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		var p Position
		p.File = string(vals[0])
		var pos uint64
		if _, err := fmt.Sscan(string(vals[1]), &pos); err != nil {
			t.Fatal(err)
		}
		p.Pos = uint32(pos)
		rows.Close()
		return p
	}
	t.Fatal("cannot read the binlog position")
	return Position{}
}

// columns reads a table's columns as osc would.
func (s *serverDB) columns(t *testing.T, table string) []Column {
	t.Helper()
	rows, err := s.db.Query(`SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COALESCE(CHARACTER_OCTET_LENGTH, 0)
		FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, s.schema, table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var cols []Column
	for rows.Next() {
		var c Column
		var colType string
		if err := rows.Scan(&c.Name, &c.DataType, &colType, &c.Length); err != nil {
			t.Fatal(err)
		}
		c.DataType = strings.ToLower(c.DataType)
		c.Unsigned = strings.Contains(strings.ToLower(colType), "unsigned")
		if c.DataType == "enum" || c.DataType == "set" {
			c.Values = parseMembers(colType)
		}
		if c.DataType != "binary" {
			c.Length = 0
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return cols
}

// parseMembers parses the member list of an ENUM/SET COLUMN_TYPE (quotes doubled inside).
func parseMembers(colType string) []string {
	open := strings.IndexByte(colType, '(')
	var out []string
	var cur strings.Builder
	in := false
	for i := open + 1; i < len(colType); i++ {
		ch := colType[i]
		switch {
		case !in && ch == '\'':
			in = true
			cur.Reset()
		case in && ch == '\'' && i+1 < len(colType) && colType[i+1] == '\'':
			cur.WriteByte('\'')
			i++
		case in && ch == '\'':
			in = false
			out = append(out, cur.String())
		case in && ch == '\\' && i+1 < len(colType):
			cur.WriteByte(colType[i+1])
			i++
		case in:
			cur.WriteByte(ch)
		}
	}
	return out
}

func (s *serverDB) open(t *testing.T, table string, cols []Column, start Position) *Reader {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := Open(ctx, Config{
		Host:      s.srv.Host,
		Port:      uint16(s.srv.Port),
		User:      s.srv.User,
		Password:  s.srv.Password,
		Flavor:    s.flavor,
		ServerID:  100000 + rand.Uint32N(1<<30),
		Schema:    s.schema,
		Table:     table,
		Columns:   cols,
		Changelog: "_" + table + "_osc",
		Start:     start,
		Logger:    zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func next(t *testing.T, r *Reader) replication.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ev, err := r.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return ev
}

func describe(ev replication.Event) string {
	switch {
	case ev.Commit:
		return "commit " + ev.Pos
	case ev.Marker != nil:
		return fmt.Sprintf("marker %s=%s", ev.Marker.Kind, ev.Marker.Value)
	default:
		var b strings.Builder
		for _, c := range ev.Changes {
			fmt.Fprintf(&b, "%s before=%#v after=%#v; ", c.Op, c.Before, c.After)
		}
		return b.String()
	}
}

func expectCommit(t *testing.T, r *Reader, file string) {
	t.Helper()
	ev := next(t, r)
	if !ev.Commit {
		t.Fatalf("want a commit, got %s", describe(ev))
	}
	if !strings.HasPrefix(ev.Pos, file+":") || ev.Pos == file+":0" {
		t.Fatalf("commit position %q is not in %s", ev.Pos, file)
	}
}

func expectChange(t *testing.T, r *Reader, cols []Column, op replication.Op, before, after []any) {
	t.Helper()
	ev := next(t, r)
	if ev.Commit || ev.Marker != nil || len(ev.Changes) != 1 {
		t.Fatalf("want one %s, got %s", op, describe(ev))
	}
	c := ev.Changes[0]
	if c.Op != op {
		t.Fatalf("want %s, got %s", op, describe(ev))
	}
	compareImage(t, "before", cols, c.Before, before)
	compareImage(t, "after", cols, c.After, after)
}

func compareImage(t *testing.T, which string, cols []Column, got, want []any) {
	t.Helper()
	if want == nil || got == nil {
		if (want == nil) != (got == nil) {
			t.Fatalf("%s image: got %#v, want %#v", which, got, want)
		}
		return
	}
	if len(got) != len(want) {
		t.Fatalf("%s image: %d values, want %d", which, len(got), len(want))
	}
	for i := range want {
		if !equalValue(got[i], want[i]) {
			t.Errorf("%s image, column %s (%s): got %#v (%T), want %#v (%T)", which, cols[i].Name, cols[i].DataType, got[i], got[i], want[i], want[i])
		}
	}
}

const allTypesTable = "CREATE TABLE t (" +
	"id INT NOT NULL PRIMARY KEY," +
	"ti TINYINT UNSIGNED, si SMALLINT UNSIGNED, mi MEDIUMINT UNSIGNED, ii INT UNSIGNED, bi BIGINT UNSIGNED," +
	"sti TINYINT, ssi SMALLINT, smi MEDIUMINT, sii INT, sbi BIGINT," +
	"e ENUM('a','b','c'), s SET('x','y','z')," +
	"bin BINARY(4)," +
	"d DATE, dt DATETIME," +
	"dec65 DECIMAL(65,30)," +
	"dt6 DATETIME(6), ts6 TIMESTAMP(6) NULL DEFAULT NULL," +
	"emoji VARCHAR(20) CHARACTER SET utf8mb4," +
	"lat VARCHAR(20) CHARACTER SET latin1," +
	"j JSON," +
	"bl BLOB, tx TEXT," +
	"bt BIT(8), y YEAR, tm TIME(3), f FLOAT, dbl DOUBLE," +
	"n INT NULL" +
	") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"

func TestReaderEvents(t *testing.T) {
	s := newServerDB(t)
	exec(t, s.db,
		allTypesTable,
		"CREATE TABLE _t_osc (id BIGINT AUTO_INCREMENT PRIMARY KEY, kind VARCHAR(32), value VARCHAR(255), ts TIMESTAMP(6) NULL DEFAULT NULL)",
		"CREATE TABLE other (id INT PRIMARY KEY, v VARCHAR(10))",
	)
	cols := s.columns(t, "t")
	start := s.masterStatus(t)
	r := s.open(t, "t", cols, start)

	app := s.session(t, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+05:30'")
	exec(t, app,
		"INSERT INTO t VALUES (1,"+
			"255, 65535, 16777215, 4294967295, 18446744073709551615,"+
			"-128, -32768, -8388608, -2147483648, -9223372036854775808,"+
			"'b', 'x,z',"+
			"X'0102',"+
			"'0000-00-00', '0000-00-00 00:00:00',"+
			"'12345678901234567890123456789012345.123456789012345678901234567890',"+
			"'2024-01-02 03:04:05.123456', '2024-01-02 08:34:05.123456',"+
			"'😀 hi',"+
			"'café',"+
			`'{"a": [1, 2.5, "x"]}',`+
			"X'00FF00', 'some text',"+
			"b'10100101', 2024, '-12:34:56.789', 1.5, 0.1,"+
			"NULL)",
		"INSERT INTO other VALUES (1, 'skip me')",
		"UPDATE t SET e = 'c', s = '', ti = 0, bin = X'FF00FF00', ts6 = '2024-06-30 23:59:59.000001', lat = 'naïve' WHERE id = 1",
		"BEGIN",
		"INSERT INTO _t_osc (kind, value) VALUES ('heartbeat', '1'), ('barrier', 'x')",
		"INSERT INTO other VALUES (2, 'skip me')",
		"UPDATE _t_osc SET value = 'ignored'",
		"COMMIT",
		"DELETE FROM t WHERE id = 1",
		"INSERT INTO t (id) VALUES (2)",
	)

	row1 := []any{
		int64(1),
		uint64(255), uint64(65535), uint64(16777215), uint64(4294967295), uint64(18446744073709551615),
		int64(-128), int64(-32768), int64(-8388608), int64(-2147483648), int64(-9223372036854775808),
		"b", "x,z",
		[]byte{1, 2, 0, 0},
		"0000-00-00", "0000-00-00 00:00:00",
		"12345678901234567890123456789012345.123456789012345678901234567890",
		"2024-01-02 03:04:05.123456", "2024-01-02 03:04:05.123456",
		"😀 hi",
		"caf\xe9",
		`{"a": [1, 2.5, "x"]}`,
		[]byte{0, 0xFF, 0}, "some text",
		uint64(0xA5), int64(2024), "-12:34:56.789", float64(1.5), float64(0.1),
		nil,
	}
	row1u := append([]any(nil), row1...)
	row1u[1] = uint64(0)
	row1u[11] = "c"
	row1u[12] = ""
	row1u[13] = []byte{0xFF, 0, 0xFF, 0}
	row1u[18] = "2024-06-30 18:29:59.000001"
	row1u[20] = "na\xefve"
	row2 := make([]any, len(cols))
	row2[0] = int64(2)

	expectChange(t, r, cols, replication.Insert, nil, row1)
	expectCommit(t, r, start.File)
	// The insert into `other` is skipped and its commit is not reported.
	expectChange(t, r, cols, replication.Update, row1, row1u)
	expectCommit(t, r, start.File)
	for _, want := range []replication.Marker{{Kind: "heartbeat", Value: "1"}, {Kind: "barrier", Value: "x"}} {
		ev := next(t, r)
		if ev.Marker == nil || *ev.Marker != want {
			t.Fatalf("want marker %+v, got %s", want, describe(ev))
		}
	}
	expectCommit(t, r, start.File)
	expectChange(t, r, cols, replication.Delete, row1u, nil)
	expectCommit(t, r, start.File)
	expectChange(t, r, cols, replication.Insert, nil, row2)
	expectCommit(t, r, start.File)

	// Nothing else is pending.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if ev, err := r.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want no more events, got %s, %v", describe(ev), err)
	}
	// A cancelled Next does not break the stream.
	exec(t, s.db, "INSERT INTO t (id, e) VALUES (3, 'a')")
	row3 := make([]any, len(cols))
	row3[0], row3[11] = int64(3), "a"
	expectChange(t, r, cols, replication.Insert, nil, row3)
	expectCommit(t, r, start.File)

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(context.Background()); err == nil {
		t.Fatal("Next after Close: no error")
	}
}

func TestReaderMultiRowEvents(t *testing.T) {
	s := newServerDB(t)
	exec(t, s.db, "CREATE TABLE t (id INT UNSIGNED PRIMARY KEY, v VARCHAR(10))")
	cols := s.columns(t, "t")
	r := s.open(t, "t", cols, s.masterStatus(t))
	exec(t, s.db,
		"INSERT INTO t VALUES (1, 'a'), (2, 'b'), (4294967295, 'c')",
		"UPDATE t SET v = CONCAT(v, '!')",
	)
	ev := next(t, r)
	if len(ev.Changes) != 3 {
		t.Fatalf("want 3 inserts, got %s", describe(ev))
	}
	compareImage(t, "after", cols, ev.Changes[2].After, []any{uint64(4294967295), "c"})
	next(t, r) // commit
	ev = next(t, r)
	if len(ev.Changes) != 3 {
		t.Fatalf("want 3 updates, got %s", describe(ev))
	}
	for i, c := range ev.Changes {
		if c.Op != replication.Update || c.Before[1] == nil || c.After[1] != c.Before[1].(string)+"!" {
			t.Errorf("update %d: %+v", i, c)
		}
	}
}

func TestReaderDDL(t *testing.T) {
	s := newServerDB(t)
	exec(t, s.db, "CREATE TABLE t (id INT PRIMARY KEY, v INT)")
	cols := s.columns(t, "t")
	r := s.open(t, "t", cols, s.masterStatus(t))

	_, otherDB := s.srv.NewDatabase(t)
	// DDL osc itself runs, on other tables and in other schemas: no error.
	exec(t, s.db,
		"CREATE TABLE _t_new (id INT PRIMARY KEY, v INT)",
		"ALTER TABLE _t_new ADD COLUMN w INT",
		"CREATE TABLE _t_osc (id BIGINT AUTO_INCREMENT PRIMARY KEY, kind VARCHAR(32), value VARCHAR(255))",
		"RENAME TABLE _t_new TO _t_old",
		"DROP TABLE _t_old",
		"CREATE TABLE t2 (id INT PRIMARY KEY)",
		"ALTER TABLE t2 ADD COLUMN tt INT",
		"CREATE TABLE tt LIKE t2",
		"DROP TABLE tt",
	)
	exec(t, otherDB,
		"CREATE TABLE t (id INT PRIMARY KEY)",
		"ALTER TABLE t ADD COLUMN v INT",
		"INSERT INTO t VALUES (1, 1)",
	)
	exec(t, s.db, "INSERT INTO t VALUES (1, 1)")
	expectChange(t, r, cols, replication.Insert, nil, []any{int64(1), int64(1)})
	expectCommit(t, r, s.masterStatus(t).File)

	exec(t, s.db, "ALTER TABLE t ADD COLUMN z INT")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := r.Next(ctx)
	want := fmt.Sprintf("DDL on `%s`.`t` detected in the binlog at ", s.schema)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "ALTER TABLE t ADD COLUMN z INT") {
		t.Fatalf("want an error containing %q, got %v", want, err)
	}
	// The failure is final.
	if _, err2 := r.Next(ctx); err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("second Next: %v", err2)
	}
}

func TestReaderQualifiedDDLFromOtherSchema(t *testing.T) {
	s := newServerDB(t)
	exec(t, s.db, "CREATE TABLE t (id INT PRIMARY KEY)")
	cols := s.columns(t, "t")
	r := s.open(t, "t", cols, s.masterStatus(t))
	_, otherDB := s.srv.NewDatabase(t)
	exec(t, otherDB, fmt.Sprintf("TRUNCATE TABLE `%s`.`t`", s.schema))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := r.Next(ctx)
	if err == nil || !strings.Contains(err.Error(), "DDL on ") {
		t.Fatalf("want a DDL error, got %v", err)
	}
}

func TestReaderColumnCountChanged(t *testing.T) {
	s := newServerDB(t)
	exec(t, s.db, "CREATE TABLE t (id INT PRIMARY KEY, v INT)")
	cols := s.columns(t, "t")
	// The reader believes the table has one column fewer.
	r := s.open(t, "t", cols[:1], s.masterStatus(t))
	exec(t, s.db, "INSERT INTO t VALUES (1, 1)")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := r.Next(ctx)
	if err == nil || !strings.Contains(err.Error(), "has 2 columns, osc expects 1") {
		t.Fatalf("want a column count error, got %v", err)
	}
}

// A killed replication connection is re-established by go-mysql at the
// position after the last event received: nothing lost, nothing repeated.
func TestReaderReconnects(t *testing.T) {
	s := newServerDB(t)
	exec(t, s.db, "CREATE TABLE t (id INT PRIMARY KEY)")
	cols := s.columns(t, "t")
	start := s.masterStatus(t)
	r := s.open(t, "t", cols, start)
	exec(t, s.db, "INSERT INTO t VALUES (1)")
	expectChange(t, r, cols, replication.Insert, nil, []any{int64(1)})
	expectCommit(t, r, start.File)

	exec(t, s.db, fmt.Sprintf("KILL %d", r.syncer.LastConnectionID()))
	exec(t, s.db, "INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)")
	expectChange(t, r, cols, replication.Insert, nil, []any{int64(2)})
	expectCommit(t, r, start.File)
	expectChange(t, r, cols, replication.Insert, nil, []any{int64(3)})
	expectCommit(t, r, start.File)

	// A new binlog file: commits report it.
	exec(t, s.db, "FLUSH BINARY LOGS")
	file := s.masterStatus(t).File
	if file == start.File {
		t.Fatalf("FLUSH BINARY LOGS did not rotate %s", file)
	}
	exec(t, s.db, "INSERT INTO t VALUES (4)")
	expectChange(t, r, cols, replication.Insert, nil, []any{int64(4)})
	expectCommit(t, r, file)
	// Killed again, in the new file, while the application has a
	// transaction open (the binlog gets it only at commit).
	app := s.session(t)
	exec(t, app, "BEGIN", "INSERT INTO t VALUES (5)")
	exec(t, s.db, fmt.Sprintf("KILL %d", r.syncer.LastConnectionID()))
	exec(t, app, "INSERT INTO t VALUES (6)", "COMMIT")
	expectChange(t, r, cols, replication.Insert, nil, []any{int64(5)})
	expectChange(t, r, cols, replication.Insert, nil, []any{int64(6)})
	expectCommit(t, r, file)
}

// A session logging its writes as statements hides its rows from the stream.
func TestReaderStatementFormat(t *testing.T) {
	s := newServerDB(t)
	exec(t, s.db, "CREATE TABLE t (id INT PRIMARY KEY)")
	cols := s.columns(t, "t")
	r := s.open(t, "t", cols, s.masterStatus(t))
	app := s.session(t, "SET SESSION binlog_format = 'STATEMENT'")
	exec(t, app, "INSERT INTO t VALUES (1)")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := r.Next(ctx)
	if err == nil || !strings.Contains(err.Error(), "binlog_format must be ROW") {
		t.Fatalf("want a binlog_format error, got %v", err)
	}
}
