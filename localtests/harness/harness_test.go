package harness_test

import (
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/osc-dev/osc/localtests/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

func TestPrimary(t *testing.T) {
	my := harness.MariaDB(t)
	db := my.Open(t, "")
	var format, image string
	var logBin int
	if err := db.QueryRow("SELECT @@binlog_format, @@binlog_row_image, @@log_bin").Scan(&format, &image, &logBin); err != nil {
		t.Fatal(err)
	}
	if format != "ROW" || image != "FULL" || logBin != 1 {
		t.Fatalf("binlog_format=%q binlog_row_image=%q log_bin=%d, want ROW FULL 1", format, image, logBin)
	}
	var ro int
	if err := db.QueryRow("SELECT @@read_only").Scan(&ro); err != nil {
		t.Fatal(err)
	}
	if ro != 0 {
		t.Fatalf("primary read_only=%d", ro)
	}
}

func TestReplica(t *testing.T) {
	my := harness.MariaDB(t)
	my.HoldReplica(t)
	st := my.SlaveStatus(t)
	if st == nil {
		t.Fatal("replica has no replication configured")
	}
	if st["Slave_IO_Running"] != "Yes" || st["Slave_SQL_Running"] != "Yes" {
		t.Fatalf("Slave_IO_Running=%q Slave_SQL_Running=%q Last_IO_Error=%q Last_SQL_Error=%q",
			st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_IO_Error"], st["Last_SQL_Error"])
	}
	rdb := my.OpenReplica(t, "")
	var format string
	if err := rdb.QueryRow("SELECT @@binlog_format").Scan(&format); err != nil {
		t.Fatal(err)
	}
	if format != "ROW" {
		t.Fatalf("replica binlog_format=%q", format)
	}

	name, db := my.NewDatabase(t)
	if _, err := db.Exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO t VALUES (?, ?)", 1, "hello"); err != nil {
		t.Fatal(err)
	}
	my.WaitReplica(t)
	var v string
	if err := rdb.QueryRow("SELECT v FROM " + harness.QuoteIdent(name) + ".t WHERE id = 1").Scan(&v); err != nil {
		t.Fatalf("row not on replica: %v", err)
	}
	if v != "hello" {
		t.Fatalf("replica has v=%q", v)
	}
}

func TestNewDatabase(t *testing.T) {
	my := harness.MariaDB(t)
	var name string
	t.Run("sub/test with `odd` chars and a rather long name that goes on and on and on", func(t *testing.T) {
		n, sdb := my.NewDatabase(t)
		name = n
		if len(n) > 64 || strings.ContainsAny(n, "`/ ") {
			t.Fatalf("bad name %q", n)
		}
		var cur string
		if err := sdb.QueryRow("SELECT DATABASE()").Scan(&cur); err != nil {
			t.Fatal(err)
		}
		if cur != n {
			t.Fatalf("DATABASE()=%q want %q", cur, n)
		}
	})
	// Dropped at the subtest's cleanup.
	var count int
	if err := my.Open(t, "").QueryRow("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", name).Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != 0 {
		t.Fatalf("database %s not dropped", name)
	}
	if a, b := harness.DatabaseName("TestX"), harness.DatabaseName("TestX"); a == b {
		t.Fatalf("names not unique: %s", a)
	}
}

func TestChecksum(t *testing.T) {
	my := harness.MariaDB(t)
	_, db := my.NewDatabase(t)
	for _, q := range []string{
		"CREATE TABLE a (id INT PRIMARY KEY, s VARCHAR(20) CHARACTER SET utf8mb4, b VARBINARY(8), n DECIMAL(10,3), f DOUBLE, d DATETIME)",
		"CREATE TABLE b LIKE a",
		"CREATE TABLE c LIKE a",
		"CREATE TABLE `we``ird` LIKE a",
		"CREATE TABLE l (id INT PRIMARY KEY, s VARCHAR(20) CHARACTER SET latin1, b VARBINARY(8), n DECIMAL(10,3), f DOUBLE, d DATETIME)",
		"INSERT INTO a VALUES (1, 'héllo', X'00FF', 1.5, 0.25, '2020-01-02 03:04:05'), (2, NULL, NULL, NULL, NULL, NULL), (3, '', X'', 0, 0, NULL)",
		"INSERT INTO b SELECT * FROM a",
		"INSERT INTO `we``ird` SELECT * FROM a",
		"INSERT INTO l SELECT * FROM a",
		// c differs from a in one byte of one value.
		"INSERT INTO c SELECT * FROM a",
		"UPDATE c SET b = X'00FE' WHERE id = 1",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	cols := harness.Columns(t, db, "a")
	if strings.Join(cols, ",") != "id,s,b,n,f,d" {
		t.Fatalf("Columns = %v", cols)
	}
	key := []string{"id"}
	sum := func(table string) string { return harness.Checksum(t, db, table, cols, key) }
	a := sum("a")
	if !strings.HasPrefix(a, "3:") {
		t.Fatalf("checksum %q does not count 3 rows", a)
	}
	if b := sum("b"); b != a {
		t.Fatalf("identical tables differ: %s vs %s", a, b)
	}
	if w := sum("we`ird"); w != a {
		t.Fatalf("identical tables differ: %s vs %s", a, w)
	}
	if c := sum("c"); c == a {
		t.Fatalf("tables differing in one byte have the same checksum %s", a)
	}
	if l := sum("l"); l == a {
		t.Fatalf("latin1 and utf8mb4 copies have the same checksum %s", a)
	}
	// NULL vs empty string.
	if _, err := db.Exec("UPDATE b SET s = '' WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	if b := sum("b"); b == a {
		t.Fatal("NULL and '' have the same checksum")
	}
	// Fractional digits count.
	for _, q := range []string{"DELETE FROM b", "INSERT INTO b SELECT * FROM a", "UPDATE b SET n = 1.501 WHERE id = 1"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if b := sum("b"); b == a {
		t.Fatal("1.5 and 1.501 have the same checksum")
	}
}

func TestWaitReplicaStopped(t *testing.T) {
	my := harness.MariaDB(t)
	my.HoldReplica(t)
	rdb := my.OpenReplica(t, "")
	_, db := my.NewDatabase(t)
	my.WaitReplica(t)
	// Briefly stop applying (servers may be shared with other packages' tests).
	if _, err := rdb.Exec("STOP SLAVE SQL_THREAD"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := rdb.Exec("START SLAVE SQL_THREAD"); err != nil {
			t.Errorf("START SLAVE SQL_THREAD: %v", err)
		}
	})
	if _, err := db.Exec("CREATE TABLE t (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	err := my.WaitReplicaTimeout(300 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "Slave_SQL_Running=No") {
		t.Fatalf("WaitReplicaTimeout with the SQL thread stopped: %v", err)
	}
	if _, err := rdb.Exec("START SLAVE SQL_THREAD"); err != nil {
		t.Fatal(err)
	}
	my.WaitReplica(t)
}

func TestPGPrimary(t *testing.T) {
	pg := harness.Postgres(t)
	db := pg.Open(t, "")
	got := harness.Strings(t, db, `SELECT current_setting('wal_level') || ',' || current_setting('max_replication_slots') ||
		',' || current_setting('max_wal_senders') || ',' || pg_is_in_recovery()::text || ',' || current_user ||
		',' || (SELECT rolsuper AND rolreplication FROM pg_roles WHERE rolname = current_user)::text`)
	if len(got) != 1 || got[0] != "logical,10,10,false,osc,true" {
		t.Fatalf("wal_level,max_replication_slots,max_wal_senders,pg_is_in_recovery,current_user,superuser+replication = %v", got)
	}
	v := harness.Strings(t, db, "SELECT current_setting('server_version_num')::int / 10000")
	if major, err := strconv.Atoi(v[0]); err != nil || major < 15 {
		t.Fatalf("server major version %s, want >= 15", v[0])
	}
}

func TestPGStandby(t *testing.T) {
	pg := harness.Postgres(t)
	if pg.StandbyPort == 0 || pg.StandbyPort == pg.Port {
		t.Fatalf("standby port %d (primary %d)", pg.StandbyPort, pg.Port)
	}
	st := harness.Strings(t, pg.Open(t, ""), "SELECT state FROM pg_stat_replication")
	if !slices.Contains(st, "streaming") {
		t.Fatalf("primary's pg_stat_replication states = %v, want one streaming", st)
	}
	sdb := pg.OpenStandby(t, "")
	if got := harness.Strings(t, sdb, "SELECT pg_is_in_recovery()::text || ',' || (SELECT status FROM pg_stat_wal_receiver)"); got[0] != "true,streaming" {
		t.Fatalf("standby pg_is_in_recovery,walreceiver status = %v", got)
	}
	if _, err := sdb.Exec("CREATE TABLE nope (id int)"); err == nil {
		t.Fatal("the standby accepted a write")
	}
}

func TestPGWaitStandby(t *testing.T) {
	pg := harness.Postgres(t)
	pg.HoldStandby(t)
	name, db := pg.NewDatabase(t)
	if _, err := db.Exec("CREATE TABLE t (id int PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	pg.WaitStandby(t)
	sdb := pg.OpenStandby(t, name)
	if got := harness.Strings(t, sdb, "SELECT count(*) FROM t"); got[0] != "0" {
		t.Fatalf("standby count = %v", got)
	}
	// The servers commit asynchronously: WaitStandby must still see every
	// commit that returned, every time.
	for i := 1; i <= 30; i++ {
		if _, err := db.Exec("INSERT INTO t VALUES ($1, $2)", i, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
		pg.WaitStandby(t)
		if got := harness.Strings(t, sdb, "SELECT count(*) FROM t"); got[0] != strconv.Itoa(i) {
			t.Fatalf("after insert %d and WaitStandby the standby has %v rows", i, got)
		}
	}
	cols := harness.PGColumns(t, db, "t")
	if harness.PGChecksum(t, db, "t", cols, []string{"id"}) != harness.PGChecksum(t, sdb, "t", cols, []string{"id"}) {
		t.Fatal("primary and standby checksums differ")
	}
}

func TestPGWaitStandbyPaused(t *testing.T) {
	pg := harness.Postgres(t)
	pg.HoldStandby(t)
	sdb := pg.OpenStandby(t, "")
	_, db := pg.NewDatabase(t)
	pg.WaitStandby(t)
	// Briefly pause replay (servers may be shared with other packages' tests).
	if _, err := sdb.Exec("SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := sdb.Exec("SELECT pg_wal_replay_resume()"); err != nil {
			t.Errorf("pg_wal_replay_resume: %v", err)
		}
	})
	if _, err := db.Exec("CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	err := pg.WaitStandbyTimeout(300 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not catch up") {
		t.Fatalf("WaitStandbyTimeout with replay paused: %v", err)
	}
	if _, err := sdb.Exec("SELECT pg_wal_replay_resume()"); err != nil {
		t.Fatal(err)
	}
	pg.WaitStandby(t)
}

func TestPGChecksum(t *testing.T) {
	pg := harness.Postgres(t)
	_, db := pg.NewDatabase(t)
	for _, q := range []string{
		"CREATE TABLE a (id int PRIMARY KEY, s text, b bytea, n numeric(10,3), f float8, d timestamptz)",
		"CREATE TABLE b (LIKE a INCLUDING ALL)",
		"CREATE TABLE c (LIKE a INCLUDING ALL)",
		`CREATE SCHEMA "we""ird"`,
		`CREATE TABLE "we""ird"."T x" (LIKE a INCLUDING ALL)`,
		"INSERT INTO a VALUES (1, 'héllo', '\\x00ff', 1.5, 0.25, '2020-01-02 03:04:05+00'), (2, NULL, NULL, NULL, NULL, NULL), (3, '', '', 0, 0, NULL)",
		"INSERT INTO b SELECT * FROM a",
		`INSERT INTO "we""ird"."T x" SELECT * FROM a`,
		// c differs from a in one byte of one value.
		"INSERT INTO c SELECT * FROM a",
		"UPDATE c SET b = '\\x00fe' WHERE id = 1",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	cols := harness.PGColumns(t, db, "a")
	if strings.Join(cols, ",") != "id,s,b,n,f,d" {
		t.Fatalf("PGColumns = %v", cols)
	}
	if got := harness.PGColumns(t, db, `we"ird.T x`); !slices.Equal(got, cols) {
		t.Fatalf("PGColumns(schema-qualified) = %v", got)
	}
	key := []string{"id"}
	sum := func(table string) string { return harness.PGChecksum(t, db, table, cols, key) }
	a := sum("a")
	if !strings.HasPrefix(a, "3:") || len(a) != len("3:")+32 {
		t.Fatalf("checksum %q is not 3 rows and an md5", a)
	}
	if b := sum("public.b"); b != a {
		t.Fatalf("identical tables differ: %s vs %s", a, b)
	}
	if w := sum(`we"ird.T x`); w != a {
		t.Fatalf("identical tables differ: %s vs %s", a, w)
	}
	if c := sum("c"); c == a {
		t.Fatalf("tables differing in one byte have the same checksum %s", a)
	}
	for _, q := range []string{
		"UPDATE b SET s = '' WHERE id = 2", // NULL vs ''
		"UPDATE b SET s = NULL, n = 1.501 WHERE id IN (1, 2)",
		"UPDATE b SET n = 1.5, s = 'héllo' WHERE id = 1; UPDATE b SET s = NULL, n = NULL WHERE id = 2; DELETE FROM b WHERE id = 3",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
		if b := sum("b"); b == a {
			t.Fatalf("after %q: same checksum %s", q, a)
		}
	}
	// Empty table; dropped columns are not listed.
	if _, err := db.Exec("DELETE FROM b; ALTER TABLE b DROP COLUMN s"); err != nil {
		t.Fatal(err)
	}
	if got := harness.PGChecksum(t, db, "b", []string{"id"}, nil); got != "0:" {
		t.Fatalf("empty table checksum %q", got)
	}
	if got := harness.PGColumns(t, db, "b"); strings.Join(got, ",") != "id,b,n,f,d" {
		t.Fatalf("PGColumns after DROP COLUMN = %v", got)
	}
}

func TestPGNewDatabase(t *testing.T) {
	pg := harness.Postgres(t)
	admin := pg.Open(t, "")
	outer := t
	var name string
	var slots []string
	t.Run("sub/test with `odd` \"chars\" and a rather long name that goes on and on and on", func(t *testing.T) {
		n, db := pg.NewDatabase(t)
		name = n
		if len(n) > 63 || n != strings.ToLower(n) || strings.ContainsAny(n, "`\"/ ") {
			t.Fatalf("bad name %q", n)
		}
		if got := harness.Strings(t, db, "SELECT current_database()"); got[0] != n {
			t.Fatalf("current_database() = %v, want %q", got, n)
		}
		// An inactive logical slot, and a temporary one held by a session
		// that outlives this subtest, so it is still active at the drop.
		slots = []string{strings.ToLower(harness.DatabaseName("slot")), strings.ToLower(harness.DatabaseName("slot"))}
		if _, err := db.Exec("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slots[0]); err != nil {
			t.Fatal(err)
		}
		holder := pg.Open(outer, n)
		holder.SetMaxOpenConns(1)
		if _, err := holder.Exec("SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)", slots[1]); err != nil {
			t.Fatal(err)
		}
		got := harness.Strings(t, admin, "SELECT slot_name || ':' || active::text FROM pg_replication_slots WHERE database = $1 ORDER BY slot_name", n)
		want := []string{slots[0] + ":false", slots[1] + ":true"}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("slots = %v, want %v", got, want)
		}
	})
	// Dropped at the subtest's cleanup, slots first.
	if got := harness.Strings(t, admin, "SELECT count(*) FROM pg_database WHERE datname = $1", name); got[0] != "0" {
		t.Fatalf("database %s not dropped", name)
	}
	if got := harness.Strings(t, admin, "SELECT count(*) FROM pg_replication_slots WHERE database = $1 OR slot_name = ANY($2)", name, slots); got[0] != "0" {
		t.Fatalf("slots of database %s not dropped", name)
	}
}

func TestPGDSN(t *testing.T) {
	p := &harness.PG{Host: "127.0.0.1", Port: 5432, StandbyPort: 5433, User: "osc", Password: "osc"}
	if got := p.DSN("db"); got != "postgres://osc:osc@127.0.0.1:5432/db?sslmode=disable" {
		t.Fatalf("DSN = %q", got)
	}
	if got := p.StandbyDSN(""); got != "postgres://osc:osc@127.0.0.1:5433/postgres?sslmode=disable" {
		t.Fatalf("StandbyDSN = %q", got)
	}
	p.User, p.Password = "u@s:er", "p@ss/w:rd?#%"
	u, err := url.Parse(p.DSN("d b?#"))
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	if u.User.Username() != p.User || pw != p.Password || u.Path != "/d b?#" || u.RawQuery != "sslmode=disable" {
		t.Fatalf("DSN %q does not round-trip: user %q password %q path %q query %q", p.DSN("d b?#"), u.User.Username(), pw, u.Path, u.RawQuery)
	}
}

// TestPGDriver is a smoke test of database/sql through PG.Open (pgx's stdlib).
func TestPGDriver(t *testing.T) {
	pg := harness.Postgres(t)
	_, db := pg.NewDatabase(t)
	var (
		i2, i4, i8 int64
		b          bool
		by         []byte
		num        string
		f          float64
		ts         time.Time
		null       sql.NullString
		js         string
	)
	err := db.QueryRow(`SELECT 1::int2, 2::int4, 3::int8, true, '\x00ff'::bytea, 1.50::numeric(4,2), 0.25::float8,
		'2020-01-02 03:04:05+00'::timestamptz, NULL::text, '{"a": 1}'::jsonb`).Scan(&i2, &i4, &i8, &b, &by, &num, &f, &ts, &null, &js)
	if err != nil {
		t.Fatal(err)
	}
	if i2 != 1 || i4 != 2 || i8 != 3 || !b || string(by) != "\x00\xff" || num != "1.50" || f != 0.25 ||
		!ts.Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) || null.Valid || js != `{"a": 1}` {
		t.Fatalf("got %v %v %v %v %x %q %v %v %v %q", i2, i4, i8, b, by, num, f, ts, null, js)
	}

	if _, err := db.Exec("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int)"); err != nil {
		t.Fatal(err) // several statements without arguments: simple protocol
	}
	st, err := db.Prepare("INSERT INTO t VALUES ($1, $2)")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range 3 {
		if _, err := st.Exec(i, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	res, err := tx.Exec("DELETE FROM t WHERE id >= $1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 2 {
		t.Fatalf("RowsAffected = %d", n)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := harness.Strings(t, db, "SELECT v FROM t ORDER BY id"); strings.Join(got, ",") != "v0,v1,v2" {
		t.Fatalf("rows = %v", got)
	}
	var pgErr *pgconn.PgError
	if _, err := db.Exec("INSERT INTO t VALUES (0, 'dup')"); !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("duplicate key: %v", err)
	}
}
