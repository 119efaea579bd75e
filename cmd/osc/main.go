// Command osc changes a table's definition online. It is a thin wrapper
// over package migration: flags in, exit code and an optional JSON result
// out, structured logs on stderr.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/osc-dev/osc/control"
	"github.com/osc-dev/osc/engine"
	"github.com/osc-dev/osc/migration"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := pflag.NewFlagSet("osc", pflag.ContinueOnError)
	fs.SortFlags = false
	var o migration.Options
	var passwordFile, logFormat string
	var lockTimeout int
	var resultJSON, verbose bool
	fs.StringVar(&o.Driver, "driver", "mysql", "database driver: mysql (MySQL and MariaDB) or postgres")
	fs.StringVar(&o.Host, "host", "127.0.0.1", "server host")
	fs.IntVar(&o.Port, "port", 0, "server port (default 3306 for mysql, 5432 for postgres)")
	fs.StringVar(&o.User, "user", "", "user name")
	fs.StringVar(&o.Password, "password", "", "password (visible in ps: prefer OSC_PASSWORD or --password-file)")
	fs.StringVar(&passwordFile, "password-file", "", "read the password from this file")
	fs.StringVar(&o.Database, "database", "", "database of the table (MySQL: its schema)")
	fs.StringVar(&o.Schema, "schema", "", "PostgreSQL schema of the table (default public)")
	fs.StringVar(&o.Table, "table", "", "table to change")
	fs.StringVar(&o.Alter, "alter", "", `ALTER clauses without "ALTER TABLE t", e.g. "ADD COLUMN x INT NOT NULL DEFAULT 0"`)
	fs.BoolVar(&o.Execute, "execute", false, "apply the change; without it osc only checks and prints the plan")
	fs.IntVar(&o.ChunkSize, "chunk-size", 0, "rows per copy chunk, kept fixed unless --chunk-time is given (default: start at 1000 and adapt to --chunk-time 100ms)")
	fs.IntVar(&o.CopyWorkers, "copy-workers", 0, "chunks copied at once, each on its own connection (1-4; default 2 on MySQL, 1 on PostgreSQL, whose walsender decodes the copy's rows meanwhile)")
	fs.IntVar(&lockTimeout, "cut-over-lock-timeout-seconds", 3, "longest lock wait of one cut-over attempt")
	fs.IntVar(&o.CutOverAttempts, "cut-over-attempts", 10, "cut-over attempts before giving up")
	verifyFlag := fs.Bool("verify", true, "compare the new table with the original at one consistent point before cut-over (whole, then chunk by chunk if it differs), and copy differing chunks again")
	fs.BoolVar(&o.IndexesDuringCopy, "indexes-during-copy", false, "MySQL: keep the new table's non-unique secondary indexes during the copy rather than build them after it (slower copy, but replicas never replay one long index build)")
	fs.BoolVar(&o.DropOldTable, "drop-old-table", false, "drop the original table after cut-over instead of keeping it as _<table>_old")
	fs.BoolVar(&o.InitiallyDropShadow, "initially-drop-shadow-table", false, "drop shadow and changelog tables left by an earlier run")
	fs.BoolVar(&o.InitiallyDropOld, "initially-drop-old-table", false, "drop an old table (_<table>_old) kept by an earlier run")
	fs.Int64Var(&o.MaxSlotWALBytes, "max-slot-wal-bytes", 0, "PostgreSQL: abort when the replication slot retains more WAL than this (default 10 GiB)")
	fs.StringVar(&o.MaintenanceWorkMem, "maintenance-work-mem", "256MB", "PostgreSQL: the least maintenance_work_mem the new table's index builds run with (a higher server setting is kept; 0 keeps the server's)")
	fs.StringVar(&o.ThrottleFlagFile, "throttle-flag-file", "", "pause the copy while this file exists")
	fs.DurationVar(&o.ChunkTime, "chunk-time", 0, "target time per copy chunk, e.g. 500ms: the chunk size adapts after every chunk, starting at --chunk-size (default 100ms without --chunk-size, else a fixed size)")
	heartbeat := fs.Int("heartbeat-interval-millis", 100, "how often osc writes a heartbeat through the change stream, for lag")
	fs.StringSliceVar(&o.ThrottleControlReplicas, "throttle-control-replicas", nil, "host:port of replicas (PostgreSQL: standbys) whose lag throttles the copy")
	maxLag := fs.Int("max-lag-millis", 1500, "throttle the copy while a control replica lags more than this")
	fs.StringVar(&o.MaxLoad, "max-load", "", "throttle the copy above these loads, e.g. Threads_running=25 (PostgreSQL: active backends)")
	fs.StringVar(&o.CriticalLoad, "critical-load", "", "abort the run above these loads, e.g. Threads_running=200")
	criticalInterval := fs.Int("critical-load-interval-millis", 0, "on critical load, check again after this long before aborting")
	fs.StringVar(&o.ThrottleQuery, "throttle-query", "", "throttle the copy while this query returns a value above 0")
	fs.StringVar(&o.PostponeCutOverFlagFile, "postpone-cut-over-flag-file", "", "while this file exists, keep the new table current and wait before cut-over")
	fs.StringVar(&o.SocketFile, "serve-socket-file", "", "control socket (default: derived from database and table, in the temp directory; \"none\" serves none)")
	fs.DurationVar(&o.StatusInterval, "status-interval", 0, "status line interval (default: adaptive)")
	fs.BoolVar(&resultJSON, "result-json", false, "print the result as JSON on stdout")
	fs.StringVar(&logFormat, "log-format", "console", "log format on stderr: console or json")
	fs.BoolVar(&verbose, "verbose", false, "debug logging")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "osc: online schema change for MySQL/MariaDB and PostgreSQL\n\nusage: osc [--driver postgres] --host H --port P --user U --database D [--schema S] --table T --alter CLAUSES [--execute]\n\n%s\nexit codes: 0 applied (or dry run ok), 1 failed (original table authoritative), 2 usage or invalid ALTER, 3 refused by preflight, 4 aborted by the operator\n", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			return 0
		}
		fmt.Fprintf(os.Stderr, "osc: %v (see osc --help)\n", err)
		return migration.ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "osc: unexpected arguments %q (quote the --alter clauses as one argument)\n", fs.Args())
		return migration.ExitUsage
	}
	o.CutOverLockTimeout = time.Duration(lockTimeout) * time.Second
	o.HeartbeatInterval = time.Duration(*heartbeat) * time.Millisecond
	o.MaxLag = time.Duration(*maxLag) * time.Millisecond
	o.CriticalLoadInterval = time.Duration(*criticalInterval) * time.Millisecond
	switch o.SocketFile {
	case "":
		o.SocketFile = control.DefaultPath(strings.Trim(o.Database+"."+o.Schema, "."), o.Table)
	case "none":
		o.SocketFile = ""
	}
	o.SkipVerify = !*verifyFlag
	log, err := newLogger(logFormat, verbose)
	if err != nil {
		fmt.Fprintln(os.Stderr, "osc:", err)
		return migration.ExitUsage
	}
	defer log.Sync()
	o.Logger = log
	if o.Password, err = password(o.Password, passwordFile); err != nil {
		log.Error("reading the password", zap.Error(err))
		return migration.ExitUsage
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := migration.Run(ctx, o)
	if err != nil {
		log.Error("osc stopped", zap.Int("exit_code", res.ExitCode), zap.Error(err))
	}
	switch {
	case resultJSON:
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	case res.Plan != nil && !o.Execute:
		printPlan(os.Stdout, res.Plan)
	}
	return res.ExitCode
}

// printPlan shows a dry run's plan to a person.
func printPlan(w io.Writer, p *engine.Plan) {
	fmt.Fprintf(w, "Plan for %s.%s (dry run: nothing was changed; add --execute to apply)\n", p.Schema, p.Table)
	fmt.Fprintf(w, "  path:           %s\n", p.Path)
	fmt.Fprintf(w, "  chunking key:   %s (%s)\n", p.KeyName, strings.Join(p.Key, ", "))
	fmt.Fprintf(w, "  rows, estimate: %d\n", p.RowEstimate)
	fmt.Fprintln(w, "  columns copied:")
	for _, c := range p.Columns {
		if c.Source == c.Target {
			fmt.Fprintf(w, "    %s\n", c.Source)
		} else {
			fmt.Fprintf(w, "    %s -> %s\n", c.Source, c.Target)
		}
	}
	if len(p.Unverified) > 0 {
		fmt.Fprintf(w, "  not compared by verification (type changed): %s\n", strings.Join(p.Unverified, ", "))
	}
	fmt.Fprintf(w, "  the original is kept as %s after cut-over (unless --drop-old-table)\n", p.Old)
	fmt.Fprintln(w, "  new definition:")
	for _, line := range strings.Split(p.ShadowDefinition, "\n") {
		fmt.Fprintf(w, "    %s\n", line)
	}
}

// password takes --password, else --password-file, else OSC_PASSWORD
// (PostgreSQL: else PGPASSWORD or ~/.pgpass, which the driver reads).
func password(flag, file string) (string, error) {
	switch {
	case flag != "":
		return flag, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return os.Getenv("OSC_PASSWORD"), nil
}

func newLogger(format string, verbose bool) (*zap.Logger, error) {
	cfg := zap.NewProductionConfig()
	cfg.OutputPaths = []string{"stderr"}
	cfg.Sampling = nil
	cfg.DisableStacktrace = true
	switch format {
	case "json":
	case "console":
		cfg.Encoding = "console"
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	default:
		return nil, fmt.Errorf("unknown --log-format %q (console or json)", format)
	}
	if verbose {
		cfg.Level = zap.NewAtomicLevelAt(zap.DebugLevel)
	}
	return cfg.Build()
}
