package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/go-sql-driver/mysql"
)

const mariaAlter = "ADD COLUMN extra INT NOT NULL DEFAULT 0"

// mariaSrc is a loaded source table, exported once so that every trial
// gets a fresh copy by importing the tablespace (about a second, no binlog).
type mariaSrc struct {
	db      string
	rows    int64
	stash   string // directory with sbtest.ibd and sbtest.cfg
	datadir string
}

func setupMariaDB(ctx context.Context, c *config, env map[string]string, rep *report) ([]*target, error) {
	port := env["OSC_TEST_MYSQL_PORT"]
	user, pass := env["OSC_TEST_MYSQL_USER"], env["OSC_TEST_MYSQL_PASSWORD"]
	dsn := func(db string) string {
		return fmt.Sprintf("%s:%s@tcp(127.0.0.1:%s)/%s?interpolateParams=true", user, pass, port, db)
	}
	admin, err := sql.Open("mysql", dsn(""))
	if err != nil {
		return nil, err
	}
	admin.SetMaxOpenConns(4)
	if err := admin.PingContext(ctx); err != nil {
		return nil, err
	}
	var version, datadir string
	var pool, redo int64
	admin.QueryRowContext(ctx, "SELECT VERSION(), @@datadir, @@innodb_buffer_pool_size, @@innodb_log_file_size").Scan(&version, &datadir, &pool, &redo)
	rep.Machine["mariadb"] = version
	rep.Machine["mariadb innodb_buffer_pool_size / innodb_log_file_size"] = fmt.Sprintf("%d MiB / %d MiB", pool>>20, redo>>20)
	// The replica would replay every copy on the same two cores while the
	// next contender runs: stop its threads for the benchmark.
	if rp := env["OSC_TEST_MYSQL_REPLICA_PORT"]; rp != "" {
		if r, err := sql.Open("mysql", fmt.Sprintf("%s:%s@tcp(127.0.0.1:%s)/", user, pass, rp)); err == nil {
			if _, err := r.ExecContext(ctx, "STOP SLAVE"); err != nil {
				logf("stopping the MariaDB replica's threads: %v", err)
			}
			r.Close()
		}
	}
	mysqldPID := serverPID(env, "primary")
	serverCPU := func() float64 { return procCPU(mysqldPID, false) }

	ptosc := ""
	if !c.noPTOSC {
		ptosc = c.ptoscBin
		if ptosc == "" {
			ptosc, _ = exec.LookPath("pt-online-schema-change")
		}
		if ptosc == "" {
			note := "pt-online-schema-change is not installed: that contender was skipped"
			if c.ptoscMsg != "" {
				note += " (" + c.ptoscMsg + ")"
			}
			rep.Notes = append(rep.Notes, note)
		} else if out, err := exec.Command(ptosc, "--version").Output(); err == nil {
			rep.Machine["pt-online-schema-change"] = strings.TrimSpace(string(out))
		}
	}

	load := func(name string, rows int64) (*mariaSrc, error) {
		t0 := time.Now()
		src := &mariaSrc{db: name, rows: rows, stash: filepath.Join(c.workDir, "stash-"+name), datadir: datadir}
		conn, err := admin.Conn(ctx)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		stmts := []string{
			"SET SESSION sql_log_bin = 0",
			"DROP DATABASE IF EXISTS " + name,
			"CREATE DATABASE " + name,
			"CREATE TABLE " + name + `.sbtest (
				id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
				k INT NOT NULL DEFAULT 0,
				c CHAR(120) NOT NULL DEFAULT '',
				pad CHAR(60) NOT NULL DEFAULT '',
				KEY k_1 (k)
			) ENGINE=InnoDB`,
		}
		for _, s := range stmts {
			if _, err := conn.ExecContext(ctx, s); err != nil {
				return nil, fmt.Errorf("%s: %w", s, err)
			}
		}
		// sysbench's shapes: k random, c 119 and pad 59 characters.
		const batch = 500000
		for lo := int64(1); lo <= rows; lo += batch {
			hi := min(lo+batch-1, rows)
			q := fmt.Sprintf(`INSERT INTO %s.sbtest (id, k, c, pad)
				SELECT seq, FLOOR(RAND(seq) * %d), LEFT(CONCAT(SHA1(seq), '-', SHA1(seq + 1), '-', SHA1(seq + 2)), 119),
				LEFT(CONCAT(SHA1(-seq), '-', SHA1(seq * 7)), 59) FROM %s.seq_%d_to_%d`, name, rows, name, lo, hi)
			if _, err := conn.ExecContext(ctx, q); err != nil {
				return nil, fmt.Errorf("loading rows: %w", err)
			}
		}
		if _, err := conn.ExecContext(ctx, "ANALYZE TABLE "+name+".sbtest"); err != nil {
			return nil, err
		}
		if _, err := conn.ExecContext(ctx, "FLUSH TABLES "+name+".sbtest FOR EXPORT"); err != nil {
			return nil, err
		}
		os.MkdirAll(src.stash, 0o755)
		for _, ext := range []string{".ibd", ".cfg"} {
			if err := copyFile(filepath.Join(datadir, name, "sbtest"+ext), filepath.Join(src.stash, "sbtest"+ext)); err != nil {
				conn.ExecContext(ctx, "UNLOCK TABLES")
				return nil, err
			}
		}
		if _, err := conn.ExecContext(ctx, "UNLOCK TABLES"); err != nil {
			return nil, err
		}
		logf("MariaDB: loaded %s.sbtest with %d rows in %.1fs", name, rows, time.Since(t0).Seconds())
		return src, nil
	}

	mk := func(src *mariaSrc, name, size string) *target {
		t := &target{Name: name, DB: "mariadb", Size: size, Rows: src.rows, dial: mariaDialect, serverCPU: serverCPU,
			close: func() { os.RemoveAll(src.stash) }}
		t.prepare = func(ctx context.Context, seq int) (*instance, error) {
			return mariaInstance(ctx, admin, src, fmt.Sprintf("bench_%s_%d", size, seq), dsn)
		}
		return t
	}

	var targets []*target
	src, err := load("bench_src", c.rows)
	if err != nil {
		return nil, err
	}
	main := mk(src, fmt.Sprintf("MariaDB, %s rows", commas(c.rows)), short(c.rows))
	main.loaded, main.applyBench = true, true
	main.contenders = append(main.contenders, contender{Name: "bare", run: mariaBare})
	main.contenders = append(main.contenders, contender{Name: "osc", run: func(ctx context.Context, in *instance, logBase string) runOut {
		return runOsc(ctx, c, logBase, pass, "--host", "127.0.0.1", "--port", port, "--user", user,
			"--database", in.dbName, "--table", "sbtest", "--alter", mariaAlter)
	}})
	if ptosc != "" {
		main.contenders = append(main.contenders, contender{Name: "pt-osc", run: func(ctx context.Context, in *instance, logBase string) runOut {
			out, _ := runProc(ctx, logBase, nil, ptosc, "--alter", mariaAlter,
				fmt.Sprintf("D=%s,t=sbtest,h=127.0.0.1,P=%s,u=%s,p=%s", in.dbName, port, user, pass),
				"--execute", "--no-check-replication-filters", "--recursion-method=none", "--no-version-check")
			return out
		}})
	}
	targets = append(targets, main)
	if c.memory {
		big, err := load("bench_src5x", 5*c.rows)
		if err != nil {
			return nil, err
		}
		mt := mk(big, fmt.Sprintf("MariaDB, %s rows (--memory)", commas(5*c.rows)), short(5*c.rows))
		mt.memoryOnly = true
		mt.contenders = []contender{main.contenders[1]}
		targets = append(targets, mt)
	}
	return targets, nil
}

// mariaInstance makes a fresh copy of src as name.sbtest by importing the
// exported tablespace (not binlogged: the replica is stopped).
func mariaInstance(ctx context.Context, admin *sql.DB, src *mariaSrc, name string, dsn func(string) string) (*instance, error) {
	conn, err := admin.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	exec := func(q string) error {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
		return nil
	}
	for _, q := range []string{
		"SET SESSION sql_log_bin = 0",
		// The binlogs of earlier trials are of no use to anyone.
		"FLUSH BINARY LOGS",
		"PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 SECOND",
		"DROP DATABASE IF EXISTS " + name,
		"CREATE DATABASE " + name,
		fmt.Sprintf("CREATE TABLE %s.sbtest LIKE %s.sbtest", name, src.db),
		fmt.Sprintf("ALTER TABLE %s.sbtest DISCARD TABLESPACE", name),
	} {
		if err := exec(q); err != nil {
			return nil, err
		}
	}
	for _, ext := range []string{".ibd", ".cfg"} {
		if err := copyFile(filepath.Join(src.stash, "sbtest"+ext), filepath.Join(src.datadir, name, "sbtest"+ext)); err != nil {
			return nil, err
		}
	}
	if err := exec(fmt.Sprintf("ALTER TABLE %s.sbtest IMPORT TABLESPACE", name)); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(src.datadir, name, "sbtest.cfg"))
	if err := exec(fmt.Sprintf("ANALYZE TABLE %s.sbtest", name)); err != nil {
		return nil, err
	}
	db, err := sql.Open("mysql", dsn(name))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	in := &instance{dbName: name, dsn: dsn(name), db: db}
	in.check = func(ctx context.Context) ([]string, bool, error) {
		var left []string
		rows, err := db.QueryContext(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_name <> 'sbtest'", name)
		if err != nil {
			return nil, false, err
		}
		for rows.Next() {
			var t string
			rows.Scan(&t)
			left = append(left, "table "+t)
		}
		rows.Close()
		rows, err = db.QueryContext(ctx, "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = ?", name)
		if err != nil {
			return nil, false, err
		}
		for rows.Next() {
			var t string
			rows.Scan(&t)
			left = append(left, "trigger "+t)
		}
		rows.Close()
		var n int
		err = db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = 'sbtest' AND column_name = 'extra'", name).Scan(&n)
		return left, n == 1, err
	}
	in.drop = func() {
		db.Close()
		if _, err := admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name); err != nil {
			logf("dropping %s: %v", name, err)
		}
	}
	return in, nil
}

// mariaBare is the reference: the same ALTER as a plain copy into a new
// table, in one INSERT ... SELECT.
func mariaBare(ctx context.Context, in *instance, logBase string) runOut {
	var out runOut
	conn, err := in.db.Conn(ctx)
	if err != nil {
		out.err, out.exit = err.Error(), -1
		return out
	}
	defer conn.Close()
	t0 := time.Now()
	for _, q := range []string{
		"CREATE TABLE sbtest_bare LIKE sbtest",
		"ALTER TABLE sbtest_bare " + mariaAlter,
		"INSERT INTO sbtest_bare SELECT *, 0 FROM sbtest",
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			out.err, out.exit = fmt.Sprintf("%s: %v", q, err), -1
			break
		}
	}
	out.wall = time.Since(t0)
	conn.ExecContext(context.Background(), "DROP TABLE IF EXISTS sbtest_bare")
	return out
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// commas formats n with thousands separators.
func commas(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(ch)
	}
	return b.String()
}

// short formats a row count as 100k, 1M, 5M.
func short(n int64) string {
	switch {
	case n%1000000 == 0:
		return fmt.Sprintf("%dM", n/1000000)
	case n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
