package harness_test

import (
	"strings"
	"testing"
	"time"

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
