package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// target is one table to migrate (one database, one size) with its
// contenders.
type target struct {
	Name       string // e.g. "MariaDB, 1,000,000 rows"
	DB         string // mariadb or postgres
	Size       string // e.g. 1M, s10
	Rows       int64
	loaded     bool // also run every contender under the load generator
	memoryOnly bool // only one idle osc run, for peak RSS
	applyBench bool // measure the applier on this target
	contenders []contender
	dial       *dialect
	prepare    func(ctx context.Context, seq int) (*instance, error)
	serverCPU  func() float64
	close      func()
}

// instance is one fresh copy of the table, in its own database.
type instance struct {
	dbName string
	dsn    string
	db     *sql.DB // small pool for checks and the bare copy
	// check lists what a contender left behind in the database and
	// whether the table now has the new definition.
	check func(ctx context.Context) (leftovers []string, altered bool, err error)
	drop  func()
}

type contender struct {
	Name string
	run  func(ctx context.Context, in *instance, logBase string) runOut
}

// runOut is what one contender run reports.
type runOut struct {
	wall   time.Duration
	proc   bool    // a child process: rss and cpu are meaningful
	rssKB  int64   // peak RSS (VmHWM, see rssWatch)
	cpu    float64 // user + sys seconds of the child
	exit   int
	err    string
	rows   int64 // rows the tool says it copied (0: unknown)
	events int64 // osc: events applied
	chunks string
}

// Trial is one run of one contender: the unit the report aggregates.
type Trial struct {
	Target    string
	DB        string
	Size      string
	Cond      string // idle or load
	Contender string
	Rep       int
	Rows      int64

	WallS      float64
	RowsPerS   float64
	RSSMB      float64 `json:",omitempty"`
	CPUS       float64 `json:",omitempty"`
	ServerCPUS float64
	Proc       bool
	Exit       int
	Err        string  `json:",omitempty"`
	OscRows    int64   `json:",omitempty"`
	OscEvents  int64   `json:",omitempty"`
	OscChunks  string  `json:",omitempty"`
	OscVerifyS float64 `json:",omitempty"` // osc's verification phase, from its log
	Altered    bool
	Leftovers  []string   `json:",omitempty"`
	Load       *LoadStats `json:",omitempty"`
}

func (t *Trial) ok() bool { return t.Exit == 0 && t.Err == "" }

func runTarget(ctx context.Context, c *config, t *target, rep *report) {
	conds := []string{"idle"}
	if t.loaded {
		conds = append(conds, "load")
	}
	seq := 0
	for _, cond := range conds {
		for r := 1; r <= c.reps; r++ {
			for _, ct := range t.contenders {
				if ctx.Err() != nil {
					return
				}
				seq++
				tr := runTrial(ctx, c, t, ct, cond, r, seq)
				rep.Trials = append(rep.Trials, tr)
				logf("%s %s %s rep %d: %s", t.Name, cond, ct.Name, r, tr.line())
			}
		}
	}
}

// runMemory runs osc once, idle, on a large table, for its peak RSS.
func runMemory(ctx context.Context, c *config, t *target, rep *report) {
	for _, ct := range t.contenders {
		tr := runTrial(ctx, c, t, ct, "idle", 1, 1)
		rep.Trials = append(rep.Trials, tr)
		logf("%s idle %s: %s", t.Name, ct.Name, tr.line())
	}
}

func (t *Trial) line() string {
	s := fmt.Sprintf("%.1fs %.0f rows/s", t.WallS, t.RowsPerS)
	if t.Proc {
		s += fmt.Sprintf(" rss %.0fMB cpu %.1fs", t.RSSMB, t.CPUS)
	}
	s += fmt.Sprintf(" server cpu %.1fs", t.ServerCPUS)
	if t.Load != nil {
		l := t.Load
		s += fmt.Sprintf(" | base p95 %.1fms, during p50/p95/p99 %.1f/%.1f/%.1fms worst %.0fms zero-s %d failed %d witness %s",
			l.Base.P95, l.During.P50, l.During.P95, l.During.P99, l.During.Max, l.ZeroSeconds, l.Failed, l.Witness)
	}
	if t.Err != "" {
		s += " ERROR: " + t.Err
	}
	if len(t.Leftovers) > 0 {
		s += " LEFTOVERS: " + strings.Join(t.Leftovers, ", ")
	}
	return s
}

func runTrial(ctx context.Context, c *config, t *target, ct contender, cond string, r, seq int) *Trial {
	tr := &Trial{Target: t.Name, DB: t.DB, Size: t.Size, Cond: cond, Contender: ct.Name, Rep: r, Rows: t.Rows}
	in, err := t.prepare(ctx, seq)
	if err != nil {
		tr.Err = "preparing the table copy: " + err.Error()
		tr.Exit = -1
		return tr
	}
	defer in.drop()
	var lg *loadGen
	if cond == "load" {
		lg, err = startLoad(ctx, in, t.dial, t.Rows, c.loadRate, c.loadConns)
		if err != nil {
			tr.Err = "starting the load: " + err.Error()
			tr.Exit = -1
			return tr
		}
		sleepCtx(ctx, c.baseline)
	}
	logBase := filepath.Join(c.workDir, fmt.Sprintf("%s-%s-%s-%s-%d", t.DB, t.Size, cond, ct.Name, r))
	cpu0 := t.serverCPU()
	t0 := time.Now()
	out := ct.run(ctx, in, logBase)
	t1 := time.Now()
	cpu1 := t.serverCPU()
	if lg != nil {
		// A moment after the end, so that transactions stuck behind the
		// end of the run are seen completing.
		sleepCtx(ctx, 500*time.Millisecond)
		lg.stop()
		st := lg.stats(lg.started.Add(time.Second), t0, t0, t1)
		tr.Load = &st
		vctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if c.selftest {
			tamper := "UPDATE sbtest SET k = k + 1 ORDER BY id DESC LIMIT 1"
			if t.DB == "postgres" {
				tamper = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = (SELECT max(aid) FROM pgbench_accounts)"
			}
			if _, err := in.db.ExecContext(vctx, tamper); err != nil {
				logf("witness self-test: %v", err)
			}
		}
		tr.Load.Witness, tr.Load.WitnessDetail = lg.verify(vctx, in.db)
		cancel()
		if ct.Name == "bare" {
			// The bare copy does not swap: this checks the load
			// generator against the original table.
			tr.Load.Witness += " (source)"
		}
	}
	tr.WallS = out.wall.Seconds()
	if tr.WallS > 0 && out.err == "" && out.exit == 0 {
		tr.RowsPerS = float64(t.Rows) / tr.WallS
	}
	tr.Proc = out.proc
	tr.RSSMB = float64(out.rssKB) / 1024
	tr.CPUS = out.cpu
	tr.ServerCPUS = cpu1 - cpu0
	tr.Exit = out.exit
	tr.Err = out.err
	tr.OscRows, tr.OscEvents, tr.OscChunks = out.rows, out.events, out.chunks
	if ct.Name == "osc" {
		tr.OscVerifyS = verifySeconds(logBase + ".err")
	}
	cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	left, altered, err := in.check(cctx)
	cancel()
	if err != nil && tr.Err == "" {
		tr.Err = "checking the result: " + err.Error()
	}
	tr.Leftovers, tr.Altered = left, altered
	if ct.Name != "bare" && tr.ok() && !altered {
		tr.Err = "exit 0 but the table does not have the new definition"
	}
	return tr
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// runProc runs a child process, its stdout and stderr into logBase.out and
// logBase.err, and measures it.
func runProc(ctx context.Context, logBase string, env []string, name string, args ...string) (runOut, []byte) {
	var out runOut
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	errf, err := os.Create(logBase + ".err")
	if err != nil {
		out.err = err.Error()
		out.exit = -1
		return out, nil
	}
	defer errf.Close()
	cmd.Stderr = errf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	t0 := time.Now()
	var rss *rssWatch
	if err = cmd.Start(); err == nil {
		rss = watchRSS(cmd.Process.Pid)
		err = cmd.Wait()
	}
	out.wall = time.Since(t0)
	os.WriteFile(logBase+".out", stdout.Bytes(), 0o644)
	if ps := cmd.ProcessState; ps != nil {
		out.proc = true
		out.rssKB = rss.peakKB()
		out.cpu = (ps.UserTime() + ps.SystemTime()).Seconds()
		out.exit = ps.ExitCode()
	}
	if err != nil {
		out.err = fmt.Sprintf("%s: %v (log %s.err: %s)", filepath.Base(name), err, logBase, lastLine(logBase+".err"))
		if out.exit == 0 {
			out.exit = -1
		}
	}
	return out, stdout.Bytes()
}

// verifySeconds reads how long osc's verification took from its log
// ("verified: ..." with "took": seconds); 0 if not found.
func verifySeconds(path string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "verified:") {
			continue
		}
		if _, rest, ok := strings.Cut(l, `"took": `); ok {
			end := strings.IndexAny(rest, ",}")
			if end > 0 {
				v, _ := strconv.ParseFloat(strings.TrimSpace(rest[:end]), 64)
				return v
			}
		}
	}
	return 0
}

// lastLine returns the last non-empty line of a file, shortened.
func lastLine(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	l := lines[len(lines)-1]
	if len(l) > 300 {
		l = l[:300] + "..."
	}
	return l
}

// oscResult is the part of osc's --result-json the benchmark reads.
type oscResult struct {
	Applied        bool   `json:"applied"`
	RowsCopied     int64  `json:"rows_copied"`
	EventsApplied  int64  `json:"events_applied"`
	VerifiedChunks int    `json:"verified_chunks"`
	RepairedChunks int    `json:"repaired_chunks"`
	Error          string `json:"error"`
	ExitCode       int    `json:"exit_code"`
}

// runOsc runs osc --execute with args and reads its JSON result.
func runOsc(ctx context.Context, c *config, logBase, password string, args ...string) runOut {
	args = append(args, "--execute", "--result-json", "--serve-socket-file", "none", "--drop-old-table")
	out, stdout := runProc(ctx, logBase, []string{"OSC_PASSWORD=" + password}, c.oscBin, args...)
	var res oscResult
	if err := json.Unmarshal(stdout, &res); err == nil {
		out.rows, out.events = res.RowsCopied, res.EventsApplied
		out.chunks = fmt.Sprintf("%d verified, %d repaired", res.VerifiedChunks, res.RepairedChunks)
		if res.RepairedChunks > 0 {
			out.err = strings.TrimPrefix(out.err+"; ", "; ") + fmt.Sprintf("osc repaired %d chunks (a copy or apply bug)", res.RepairedChunks)
		}
		if res.Error != "" && out.err == "" {
			out.err = res.Error
		}
	} else if out.err == "" {
		out.err = "no JSON result from osc: " + err.Error()
	}
	return out
}

// procCPU returns utime+stime of pid (and with children, its reaped
// children's), in seconds.
func procCPU(pid int, children bool) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
	if len(f) < 15 {
		return 0
	}
	n := 2
	if children {
		n = 4
	}
	var ticks float64
	for k := 0; k < n; k++ {
		v, _ := strconv.ParseFloat(f[11+k], 64)
		ticks += v
	}
	return ticks / 100 // USER_HZ
}

// treeCPU is the CPU of a postmaster: its own, its reaped children's and
// its live children's.
func treeCPU(pid int) float64 {
	total := procCPU(pid, true)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			total += procCPU(p, false)
		}
	}
	return total
}
