// Command bench measures osc against a bare table copy (and
// pt-online-schema-change on MariaDB) on throwaway servers started by
// localtests/servers.sh: wall time, rows/s, the foreground latency of a
// paced load generator before and during each run, a witness check of the
// load's writes, osc's peak RSS and CPU, and the applier's throughput.
// It prints a table and rewrites docs/benchmarks.md.
//
// Run it through localtests/bench/bench.sh, which installs and starts the
// servers, builds osc and stops everything at exit.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	rows      int64
	pgScales  []int
	reps      int
	only      string
	quick     bool
	memory    bool
	loadRate  int
	loadConns int
	baseline  time.Duration

	applyRows   int
	applyConns  int
	applyTxRows int
	skipApply   bool

	selftest bool // tamper with one row before each witness check: it must fail

	noPTOSC  bool
	ptoscBin string
	ptoscMsg string // why pt-osc is missing, from bench.sh

	oscBin  string
	envFile string
	workDir string
	docs    string
	results string
	cmdline string
	started time.Time
}

func main() {
	var c config
	var pgScales, envFile string
	flag.Int64Var(&c.rows, "rows", 1000000, "MariaDB: rows of the sysbench-shaped table")
	flag.StringVar(&pgScales, "pg-scales", "", "PostgreSQL: pgbench scale factors, comma separated; each idle and under load, the applier at the first only (default 10,50; --quick: 1)")
	flag.IntVar(&c.reps, "reps", 3, "repetitions of each contender per condition (interleaved)")
	flag.StringVar(&c.only, "only", "", "run only mariadb or postgres")
	flag.BoolVar(&c.quick, "quick", false, "smoke run: 100k MariaDB rows, pgbench -s 1, 2 reps, 20k-row apply bursts")
	flag.BoolVar(&c.memory, "memory", false, "also osc's peak RSS on a 5x larger MariaDB table (osc only, idle, one run)")
	flag.IntVar(&c.loadRate, "load-rate", 500, "load generator: transactions per second (open loop)")
	flag.IntVar(&c.loadConns, "load-conns", 4, "load generator: connections")
	flag.DurationVar(&c.baseline, "baseline", 3*time.Second, "load generator: baseline before each contender starts")
	flag.IntVar(&c.applyRows, "apply-rows", 0, "apply throughput: row changes per burst (default 50000 on MariaDB, 200000 on PostgreSQL; --quick 20000)")
	flag.IntVar(&c.applyConns, "apply-conns", 8, "apply throughput: connections of the single-row burst")
	flag.IntVar(&c.applyTxRows, "apply-tx-rows", 10000, "apply throughput: rows per transaction of the multi-row burst")
	flag.BoolVar(&c.skipApply, "no-apply", false, "skip the apply throughput measurement")
	flag.BoolVar(&c.selftest, "witness-selftest", false, "change one row the load wrote before each witness check (the witness must then fail)")
	flag.BoolVar(&c.noPTOSC, "no-ptosc", false, "skip pt-online-schema-change")
	flag.StringVar(&c.ptoscBin, "ptosc", "", "path of pt-online-schema-change (default: from PATH)")
	flag.StringVar(&c.ptoscMsg, "ptosc-note", "", "why pt-online-schema-change is not available (set by bench.sh)")
	flag.StringVar(&c.oscBin, "osc", "", "osc binary (required)")
	flag.StringVar(&envFile, "env", "", "servers.sh DIR/env file (required)")
	flag.StringVar(&c.workDir, "work", "", "directory for logs, flag files and sockets (required)")
	flag.StringVar(&c.docs, "docs", "", "markdown file to rewrite (empty: none)")
	flag.StringVar(&c.results, "results", "", "write the raw results as JSON here (empty: none)")
	flag.StringVar(&c.cmdline, "cmdline", "", "the command as the user typed it, for the report")
	t0 := flag.Int64("t0", 0, "unix time the run started (bench.sh), for the reported duration")
	fromResults := flag.String("from-results", "", "only rewrite --docs (and print the tables) from a results.json of an earlier run")
	flag.Parse()
	if *fromResults != "" {
		rewrite(*fromResults, c.docs)
		return
	}
	c.started = time.Now()
	if *t0 > 0 {
		c.started = time.Unix(*t0, 0)
	}
	c.envFile = envFile
	if c.quick {
		if !flagSet("rows") {
			c.rows = 100000
		}
		if !flagSet("reps") {
			c.reps = 2
		}
		if !flagSet("apply-rows") {
			c.applyRows = 20000
		}
		if !flagSet("apply-tx-rows") {
			c.applyTxRows = 5000
		}
		if pgScales == "" {
			pgScales = "1"
		}
	}
	if pgScales == "" {
		pgScales = "10,50"
	}
	for _, s := range strings.Split(pgScales, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fatalf("bad --pg-scales %q", pgScales)
		}
		c.pgScales = append(c.pgScales, n)
	}
	switch {
	case c.oscBin == "" || envFile == "" || c.workDir == "":
		fatalf("--osc, --env and --work are required (use localtests/bench/bench.sh)")
	case c.only != "" && c.only != "mariadb" && c.only != "postgres":
		fatalf("--only takes mariadb or postgres")
	case c.reps < 1 || c.rows < 1000:
		fatalf("--reps must be at least 1 and --rows at least 1000")
	}
	env, err := readEnv(envFile)
	if err != nil {
		fatalf("%v", err)
	}
	benchEnv = env
	if err := os.MkdirAll(c.workDir, 0o755); err != nil {
		fatalf("%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rep := &report{Config: summarizeConfig(&c), Machine: machineFacts(env), Started: c.started}
	var targets []*target
	if c.only != "postgres" {
		t, err := setupMariaDB(ctx, &c, env, rep)
		if err != nil {
			fatalf("MariaDB set-up: %v", err)
		}
		targets = append(targets, t...)
	}
	if c.only != "mariadb" {
		t, err := setupPostgres(ctx, &c, env, rep)
		if err != nil {
			fatalf("PostgreSQL set-up: %v", err)
		}
		targets = append(targets, t...)
	}
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		if !t.memoryOnly {
			runTarget(ctx, &c, t, rep)
		} else {
			runMemory(ctx, &c, t, rep)
		}
		if t.applyBench && !c.skipApply && ctx.Err() == nil {
			rep.Apply = append(rep.Apply, runApply(ctx, &c, t))
		}
		t.close()
	}
	rep.Finished = time.Now()
	if ctx.Err() != nil {
		rep.Notes = append(rep.Notes, "the run was interrupted: the numbers are incomplete")
	}
	rep.evaluate()
	out := rep.text()
	fmt.Print(out)
	if c.results != "" {
		if b, err := json.MarshalIndent(rep, "", "  "); err != nil {
			logf("encoding the results: %v", err)
		} else if err := os.WriteFile(c.results, b, 0o644); err != nil {
			logf("writing %s: %v", c.results, err)
		}
	}
	if c.docs != "" && ctx.Err() == nil {
		writeDocs(c.docs, rep.markdown())
	}
	if ctx.Err() != nil {
		os.Exit(130)
	}
}

// rewrite renders an earlier run's results again (after a change to the
// report, without measuring again).
func rewrite(results, docs string) {
	b, err := os.ReadFile(results)
	if err != nil {
		fatalf("%v", err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		fatalf("%s: %v", results, err)
	}
	if rep.Findings == nil {
		// Results written before findings were kept apart from the
		// run's own notes: keep only the run's own.
		var keep []string
		for _, n := range rep.Notes {
			if strings.Contains(n, "is not installed") || strings.Contains(n, "interrupted") {
				keep = append(keep, n)
			}
		}
		rep.Notes = keep
	}
	for _, t := range rep.Trials {
		if t.Contender == "osc" && t.OscVerifyS == 0 {
			t.OscVerifyS = verifySeconds(filepath.Join(filepath.Dir(results), fmt.Sprintf("%s-%s-%s-osc-%d.err", t.DB, t.Size, t.Cond, t.Rep)))
		}
	}
	rep.evaluate()
	fmt.Print(rep.text())
	if docs != "" {
		writeDocs(docs, rep.markdown())
	}
}

// historyHeading starts the part of the docs that a run does not write:
// what each change to osc bought, kept from the file being replaced.
const historyHeading = "\n## What each change bought\n"

func writeDocs(path, md string) {
	if old, err := os.ReadFile(path); err == nil {
		if i := strings.Index(string(old), historyHeading); i >= 0 {
			md = strings.TrimRight(md, "\n") + "\n" + string(old[i:])
		}
	}
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		fatalf("writing %s: %v", path, err)
	}
	logf("wrote %s", path)
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

func summarizeConfig(c *config) map[string]string {
	m := map[string]string{
		"rows":          strconv.FormatInt(c.rows, 10),
		"pg_scales":     fmt.Sprint(c.pgScales),
		"reps":          strconv.Itoa(c.reps),
		"load":          fmt.Sprintf("%d tx/s over %d connections, %s baseline", c.loadRate, c.loadConns, c.baseline),
		"apply_burst":   fmt.Sprintf("%s row changes (single-row from %d connections; multi-row %d rows per transaction)", applyRowsText(c.applyRows), c.applyConns, c.applyTxRows),
		"quick":         strconv.FormatBool(c.quick),
		"memory":        strconv.FormatBool(c.memory),
		"only":          c.only,
		"command":       c.cmdline,
		"ptosc_skipped": strconv.FormatBool(c.noPTOSC),
	}
	return m
}

func applyRowsText(n int) string {
	if n == 0 {
		return "50,000 on MariaDB, 200,000 on PostgreSQL"
	}
	return commas(int64(n))
}

// readEnv parses servers.sh's DIR/env (KEY=value lines).
func readEnv(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok {
			m[k] = v
		}
	}
	for _, k := range []string{"OSC_TEST_MYSQL_PORT", "OSC_TEST_PG_PORT", "OSC_TEST_SERVERS_DIR"} {
		if m[k] == "" {
			return nil, fmt.Errorf("%s: %s missing", path, k)
		}
	}
	return m, nil
}

// serverPID returns the PID servers.sh recorded for name (primary,
// replica, pg-primary, pg-standby).
func serverPID(env map[string]string, name string) int {
	b, err := os.ReadFile(filepath.Join(env["OSC_TEST_SERVERS_DIR"], "pids"))
	if err != nil {
		return 0
	}
	pid := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			pid, _ = strconv.Atoi(f[1]) // the last one recorded wins (port retries)
		}
	}
	return pid
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func fatalf(format string, a ...any) {
	logf("error: "+format, a...)
	os.Exit(1)
}
