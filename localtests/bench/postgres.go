package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

const pgAlter = "ALTER COLUMN abalance TYPE bigint"

func pgBinDir() string {
	if d := os.Getenv("OSC_PG_BINDIR"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

func setupPostgres(ctx context.Context, c *config, env map[string]string, rep *report) ([]*target, error) {
	port := env["OSC_TEST_PG_PORT"]
	user, pass := env["OSC_TEST_PG_USER"], env["OSC_TEST_PG_PASSWORD"]
	dsn := func(db string) string {
		return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%s/%s?sslmode=disable", user, pass, port, db)
	}
	admin, err := sql.Open("pgx", dsn("postgres"))
	if err != nil {
		return nil, err
	}
	admin.SetMaxOpenConns(2)
	if err := admin.PingContext(ctx); err != nil {
		return nil, err
	}
	var version string
	admin.QueryRowContext(ctx, "SELECT version()").Scan(&version)
	rep.Machine["postgresql"] = version
	// The standby would replay every copy on the same two cores: stop it
	// for the benchmark (it is ours, started by servers.sh; stop later
	// skips it).
	if pid := serverPID(env, "pg-standby"); pid > 0 && ownedBy(pid, env["OSC_TEST_SERVERS_DIR"]) {
		syscall.Kill(pid, syscall.SIGINT)
		for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		logf("PostgreSQL: stopped the standby (pid %d) for the benchmark", pid)
	}
	pmPID := serverPID(env, "pg-primary")
	serverCPU := func() float64 { return treeCPU(pmPID) }

	var targets []*target
	for i, scale := range c.pgScales {
		src := fmt.Sprintf("bench_pgsrc_s%d", scale)
		t0 := time.Now()
		for _, q := range []string{"DROP DATABASE IF EXISTS " + src, "CREATE DATABASE " + src} {
			if _, err := admin.ExecContext(ctx, q); err != nil {
				return nil, err
			}
		}
		cmd := exec.CommandContext(ctx, filepath.Join(pgBinDir(), "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale),
			"-h", "127.0.0.1", "-p", port, "-U", user, src)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+pass)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("pgbench -i -s %d: %v: %s", scale, err, out)
		}
		if _, err := admin.ExecContext(ctx, "CHECKPOINT"); err != nil {
			return nil, err
		}
		rows := int64(scale) * 100000
		logf("PostgreSQL: pgbench -i -s %d (%d rows) in %.1fs", scale, rows, time.Since(t0).Seconds())
		size := fmt.Sprintf("s%d", scale)
		t := &target{Name: fmt.Sprintf("PostgreSQL, pgbench -s %d (%s rows)", scale, commas(rows)), DB: "postgres", Size: size,
			Rows: rows, dial: pgDialect, serverCPU: serverCPU, close: func() {}}
		// The applier is measured at the first (smallest) scale only.
		t.loaded, t.applyBench = true, i == 0
		t.prepare = func(ctx context.Context, seq int) (*instance, error) {
			return pgInstance(ctx, admin, src, fmt.Sprintf("bench_%s_%d", size, seq), dsn)
		}
		t.contenders = []contender{
			{Name: "bare", run: pgBare},
			{Name: "osc", run: func(ctx context.Context, in *instance, logBase string) runOut {
				return runOsc(ctx, c, logBase, pass, "--driver", "postgres", "--host", "127.0.0.1", "--port", port, "--user", user,
					"--database", in.dbName, "--table", "pgbench_accounts", "--alter", pgAlter)
			}},
		}
		targets = append(targets, t)
	}
	return targets, nil
}

// ownedBy reports whether pid's command line mentions dir (as servers.sh's
// own check does), so that only our server is signalled.
func ownedBy(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && dir != "" && strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), dir)
}

// pgInstance makes a fresh copy of the source database (a file copy of the
// template: fast, and the table is exactly as pgbench left it).
func pgInstance(ctx context.Context, admin *sql.DB, src, name string, dsn func(string) string) (*instance, error) {
	for _, q := range []string{
		"DROP DATABASE IF EXISTS " + name + " WITH (FORCE)",
		fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s STRATEGY FILE_COPY", name, src),
	} {
		if _, err := admin.ExecContext(ctx, q); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	db, err := sql.Open("pgx", dsn(name))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	in := &instance{dbName: name, dsn: dsn(name), db: db}
	in.check = func(ctx context.Context) ([]string, bool, error) {
		var left []string
		q := func(kind, query string, args ...any) error {
			rows, err := db.QueryContext(ctx, query, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var s string
				rows.Scan(&s)
				left = append(left, kind+" "+s)
			}
			return rows.Err()
		}
		if err := q("table", `SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v')
			AND relname NOT IN ('pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history')`); err != nil {
			return nil, false, err
		}
		if err := q("slot", "SELECT slot_name FROM pg_replication_slots WHERE database = $1", name); err != nil {
			return nil, false, err
		}
		if err := q("publication", "SELECT pubname FROM pg_publication"); err != nil {
			return nil, false, err
		}
		var typ string
		err := db.QueryRowContext(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
			WHERE attrelid = 'public.pgbench_accounts'::regclass AND attname = 'abalance'`).Scan(&typ)
		return left, typ == "bigint", err
	}
	in.drop = func() {
		db.Close()
		if _, err := admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			logf("dropping %s: %v", name, err)
		}
	}
	return in, nil
}

// pgBare is the reference: the same ALTER as a plain copy into a new table.
func pgBare(ctx context.Context, in *instance, logBase string) runOut {
	var out runOut
	conn, err := in.db.Conn(ctx)
	if err != nil {
		out.err, out.exit = err.Error(), -1
		return out
	}
	defer conn.Close()
	t0 := time.Now()
	for _, q := range []string{
		"CREATE TABLE bare_new (LIKE pgbench_accounts INCLUDING ALL)",
		"ALTER TABLE bare_new " + pgAlter,
		"INSERT INTO bare_new SELECT * FROM pgbench_accounts",
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			out.err, out.exit = fmt.Sprintf("%s: %v", q, err), -1
			break
		}
	}
	out.wall = time.Since(t0)
	conn.ExecContext(context.Background(), "DROP TABLE IF EXISTS bare_new")
	return out
}
