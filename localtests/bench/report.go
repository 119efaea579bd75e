package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"
)

type report struct {
	Config   map[string]string
	Machine  map[string]string
	Started  time.Time
	Finished time.Time
	Trials   []*Trial
	Apply    []*ApplyRun
	Notes    []string   // from the run itself
	Summary  []*Summary `json:"-"` // recomputed from the trials (and has NaNs)
	Checks   []*Check
	Findings []string // from evaluate: errors, leftovers, failed witnesses
}

// Summary aggregates the trials of one contender in one condition.
type Summary struct {
	Target, DB, Size, Cond, Contender string
	Runs, OK                          int
	Rows                              int64
	WallS, RowsPerS                   float64 // medians
	WallRatio                         float64 // median wall / median bare wall, same condition
	WallVsIdleBare                    float64 // median wall / median bare wall idle
	RowsRatio                         float64 // median rows/s / bare's, same condition
	Proc                              bool
	RSSMB, RSSMaxMB, CPUS, ServerCPUS float64
	VerifyS                           float64 // osc: median of its verification phase
	Loaded                            bool
	BaseP95, P50, P95, P99            float64 // medians, ms
	WorstMedian, WorstMax             float64 // ms
	ZeroMedian, ZeroMax               float64
	RateMedian                        float64
	FailedTx                          int
	Witness                           string
	Leftovers                         []string
	Errors                            []string
}

// Check is one target of the issue.
type Check struct {
	DB, What, Want, Got, Result string
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func maxOf(v []float64) float64 {
	m := math.NaN()
	for _, x := range v {
		if math.IsNaN(m) || x > m {
			m = x
		}
	}
	return m
}

func (r *report) evaluate() {
	r.Summary, r.Checks, r.Findings = nil, nil, nil
	type key struct{ target, cond, contender string }
	var order []key
	groups := map[key][]*Trial{}
	for _, t := range r.Trials {
		k := key{t.Target, t.Cond, t.Contender}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], t)
	}
	find := func(target, cond, contender string) *Summary {
		for _, s := range r.Summary {
			if s.Target == target && s.Cond == cond && s.Contender == contender {
				return s
			}
		}
		return nil
	}
	for _, k := range order {
		ts := groups[k]
		s := &Summary{Target: k.target, Cond: k.cond, Contender: k.contender, DB: ts[0].DB, Size: ts[0].Size, Rows: ts[0].Rows, Runs: len(ts)}
		var wall, rps, rss, cpu, scpu, bp95, p50, p95, p99, worst, zero, rate, verify []float64
		pass, checked := 0, 0
		for _, t := range ts {
			s.Leftovers = append(s.Leftovers, t.Leftovers...)
			if t.Proc {
				s.Proc = true
				rss = append(rss, t.RSSMB)
			}
			if !t.ok() {
				s.Errors = append(s.Errors, fmt.Sprintf("rep %d: exit %d after %.1fs: %s", t.Rep, t.Exit, t.WallS, t.Err))
			} else {
				s.OK++
				wall, rps = append(wall, t.WallS), append(rps, t.RowsPerS)
				scpu = append(scpu, t.ServerCPUS)
				if t.OscVerifyS > 0 {
					verify = append(verify, t.OscVerifyS)
				}
				if t.Proc {
					cpu = append(cpu, t.CPUS)
				}
			}
			if l := t.Load; l != nil {
				s.Loaded = true
				bp95, p50, p95, p99 = append(bp95, l.Base.P95), append(p50, l.During.P50), append(p95, l.During.P95), append(p99, l.During.P99)
				worst, zero, rate = append(worst, l.During.Max), append(zero, float64(l.ZeroSeconds)), append(rate, l.Rate)
				s.FailedTx += l.Failed
				checked++
				if strings.HasPrefix(l.Witness, "pass") {
					pass++
				} else {
					s.Errors = append(s.Errors, fmt.Sprintf("rep %d: witness %s: %s", t.Rep, l.Witness, l.WitnessDetail))
				}
				if l.Failed > 0 {
					s.Errors = append(s.Errors, fmt.Sprintf("rep %d: %d failed transactions: %s", t.Rep, l.Failed, strings.Join(l.Errors, "; ")))
				}
			}
		}
		s.WallS, s.RowsPerS = median(wall), median(rps)
		s.RSSMB, s.RSSMaxMB, s.CPUS, s.ServerCPUS = median(rss), maxOf(rss), median(cpu), median(scpu)
		s.VerifyS = median(verify)
		s.BaseP95, s.P50, s.P95, s.P99 = median(bp95), median(p50), median(p95), median(p99)
		s.WorstMedian, s.WorstMax, s.ZeroMedian, s.ZeroMax, s.RateMedian = median(worst), maxOf(worst), median(zero), maxOf(zero), median(rate)
		if checked > 0 {
			s.Witness = fmt.Sprintf("%d/%d pass", pass, checked)
		}
		r.Summary = append(r.Summary, s)
	}
	for _, s := range r.Summary {
		if b := find(s.Target, s.Cond, "bare"); b != nil && b.WallS > 0 {
			s.WallRatio = s.WallS / b.WallS
			s.RowsRatio = s.RowsPerS / b.RowsPerS
		}
		if b := find(s.Target, "idle", "bare"); b != nil && b.WallS > 0 {
			s.WallVsIdleBare = s.WallS / b.WallS
		}
	}

	add := func(db, what, want, got string, met bool, measured bool) {
		res := "met"
		switch {
		case !measured:
			res = "not measured"
		case !met:
			res = "NOT met"
		}
		r.Checks = append(r.Checks, &Check{DB: db, What: what, Want: want, Got: got, Result: res})
	}
	ms := func(v float64) string {
		if math.IsNaN(v) {
			return "-"
		}
		return fmt.Sprintf("%.1f ms", v)
	}
	valid := func(s *Summary) bool { return s != nil && s.OK > 0 }
	// failed: a contender that failed any run misses the targets on it.
	failed := func(s *Summary) string {
		if s == nil || s.OK == s.Runs {
			return ""
		}
		return fmt.Sprintf("osc failed %d of %d runs; ", s.Runs-s.OK, s.Runs)
	}
	var mariaTarget string
	var pgTargets []string
	for _, s := range r.Summary {
		if s.Contender != "osc" || s.Cond != "idle" {
			continue
		}
		if s.DB == "mariadb" && find(s.Target, "load", "osc") != nil {
			mariaTarget = s.Target
		}
		if s.DB == "postgres" && find(s.Target, "idle", "bare") != nil {
			pgTargets = append(pgTargets, s.Target)
		}
	}
	if mariaTarget != "" {
		oi, bi, ol := find(mariaTarget, "idle", "osc"), find(mariaTarget, "idle", "bare"), find(mariaTarget, "load", "osc")
		ok := valid(oi) && valid(bi)
		add("MariaDB", "idle: osc wall time vs bare copy", "≤ 1.0×", failed(oi)+ratioStr(oi, ok, oi.WallRatio), failed(oi) == "" && ok && oi.WallRatio <= 1.0, ok)
		fl := failed(ol)
		ok = valid(ol) && valid(bi)
		add("MariaDB", "500 tx/s: osc wall time vs idle bare copy", "≤ 1.25×", fl+ratioStr(ol, ok, ol.WallVsIdleBare), fl == "" && ok && ol.WallVsIdleBare <= 1.25, ol != nil)
		ok = ol != nil && ol.Loaded
		add("MariaDB", "500 tx/s: foreground p95 during osc (median of runs)", "≤ 10 ms", fl+ms(ol.P95), fl == "" && ok && ol.P95 <= 10, ok)
		add("MariaDB", "500 tx/s: worst foreground transaction during osc (all runs)", "≤ 250 ms", fl+ms(ol.WorstMax), fl == "" && ok && ol.WorstMax <= 250, ok)
		add("MariaDB", "500 tx/s: seconds with zero completed transactions during osc (all runs)", "0", fl+f0(ol.ZeroMax), fl == "" && ok && ol.ZeroMax == 0, ok)
		add("MariaDB", "500 tx/s: witness of the load's writes after osc", "passes", fl+ol.Witness, fl == "" && ok && ol.Witness == fmt.Sprintf("%d/%d pass", ol.Runs, ol.Runs), ok)
	}
	for _, tg := range pgTargets {
		oi, bi, ol := find(tg, "idle", "osc"), find(tg, "idle", "bare"), find(tg, "load", "osc")
		ok := valid(oi) && valid(bi)
		got := "-"
		if ok {
			got = fmt.Sprintf("%.2f× (%.0f vs %.0f rows/s)", oi.RowsRatio, oi.RowsPerS, bi.RowsPerS)
		}
		add("PostgreSQL", "idle: osc rows/s vs bare copy, "+sizeOf(tg), "≥ 0.8×", got, ok && oi.RowsRatio >= 0.8, ok)
		if ol != nil {
			fl := failed(ol)
			ok = ol.Loaded
			add("PostgreSQL", "500 tx/s: foreground p95 during osc (median of runs), "+sizeOf(tg), "≤ 10 ms", fl+ms(ol.P95), fl == "" && ok && ol.P95 <= 10, ok)
			add("PostgreSQL", "500 tx/s: worst foreground transaction during osc (all runs), "+sizeOf(tg), "≤ 250 ms", fl+ms(ol.WorstMax), fl == "" && ok && ol.WorstMax <= 250, ok)
		}
	}
	for _, a := range r.Apply {
		// The target is a rate the applier sustains, so it is judged on
		// the bursts that measure one, in every phase: drains (the applier
		// alone works off a queued burst) and live bursts made faster than
		// the target that the applier did not keep up with. A live burst
		// made slower than the target cannot show it, whatever osc does:
		// whether osc kept up with it is reported beside the rates.
		var worst *ApplyResult
		var judged, live []string
		for _, x := range a.Results {
			if !x.Complete {
				continue
			}
			what := fmt.Sprintf("%s, %s %s %.0f/s", x.Phase, shapeWord(x.Shape), x.Mode, x.ApplyRate)
			if x.Mode == "drain" || (x.Bound == "applier" && x.GenRate >= applyTarget) {
				judged = append(judged, what)
				if worst == nil || x.ApplyRate < worst.ApplyRate {
					worst = x
				}
				continue
			}
			keep := "kept up"
			if x.Bound == "applier" {
				keep = fmt.Sprintf("caught up %.1f s after it", x.CatchUpS)
			}
			live = append(live, fmt.Sprintf("%s, %s live %.0f/s of %.0f/s made, %s", x.Phase, shapeWord(x.Shape), x.ApplyRate, x.GenRate, keep))
		}
		name := map[string]string{"mariadb": "MariaDB", "postgres": "PostgreSQL"}[a.DB]
		got := "-"
		if len(judged) > 0 {
			got = strings.Join(judged, "; ")
			if worst != nil {
				got = fmt.Sprintf("slowest %.0f/s (%s)", worst.ApplyRate, got)
			}
		}
		if len(live) > 0 {
			got += "; not judged, made slower than the target: " + strings.Join(live, "; ")
		}
		add(name, "applier: sustained row events/s (drains, and live bursts made faster than the target)", "≥ 20,000 row events/s", got, worst != nil && worst.ApplyRate >= applyTarget, worst != nil)
	}
	for _, db := range []string{"mariadb", "postgres"} {
		name := map[string]string{"mariadb": "MariaDB", "postgres": "PostgreSQL"}[db]
		var peak float64
		var where string
		seen := false
		for _, t := range r.Trials {
			if t.DB == db && t.Contender == "osc" && t.Proc {
				seen = true
				if t.RSSMB > peak {
					peak, where = t.RSSMB, fmt.Sprintf("%s %s rep %d", t.Size, t.Cond, t.Rep)
				}
			}
		}
		for _, a := range r.Apply {
			if a.DB == db && a.RSSMB > peak {
				peak, where = a.RSSMB, "applier run"
			}
		}
		if seen {
			add(name, "osc peak RSS, every run", "≤ 150 MB", fmt.Sprintf("%.0f MB (%s)", peak, where), peak <= 150, true)
		}
		// Peak RSS at two sizes, idle osc medians.
		var sizes []*Summary
		for _, s := range r.Summary {
			if s.DB == db && s.Contender == "osc" && s.Cond == "idle" && valid(s) {
				sizes = append(sizes, s)
			}
		}
		sort.Slice(sizes, func(i, j int) bool { return sizes[i].Rows < sizes[j].Rows })
		if len(sizes) >= 2 {
			a, b := sizes[0], sizes[len(sizes)-1]
			ratio := b.RSSMB / a.RSSMB
			add(name, fmt.Sprintf("osc peak RSS at %s vs %s rows (idle)", commas(b.Rows), commas(a.Rows)), "within ±20%",
				fmt.Sprintf("%.0f MB vs %.0f MB (%+.0f%%)", b.RSSMB, a.RSSMB, 100*(ratio-1)), math.Abs(ratio-1) <= 0.2, true)
		} else if seen {
			hint := "run with --memory"
			if db == "postgres" {
				hint = "needs two --pg-scales (default 10,50)"
			}
			add(name, "osc peak RSS at 1M vs 5M rows", "within ±20%", hint, false, false)
		}
	}
	for _, s := range r.Summary {
		for _, e := range s.Errors {
			r.Findings = append(r.Findings, fmt.Sprintf("%s, %s, %s: %s", s.Target, s.Cond, s.Contender, e))
		}
		if len(s.Leftovers) > 0 {
			r.Findings = append(r.Findings, fmt.Sprintf("%s, %s, %s left behind: %s", s.Target, s.Cond, s.Contender, strings.Join(s.Leftovers, ", ")))
		}
	}
	for _, a := range r.Apply {
		if a.Err != "" {
			r.Findings = append(r.Findings, fmt.Sprintf("%s applier run: %s", a.Target, a.Err))
		}
		for _, n := range a.Notes {
			r.Findings = append(r.Findings, fmt.Sprintf("%s applier run: %s", a.Target, n))
		}
		if len(a.Leftovers) > 0 {
			r.Findings = append(r.Findings, fmt.Sprintf("%s applier run left behind after abort: %s", a.Target, strings.Join(a.Leftovers, ", ")))
		}
		for _, x := range a.Results {
			if !x.Complete || x.Note != "" {
				r.Findings = append(r.Findings, fmt.Sprintf("%s applier, %s, %s, %s: complete=%v %s", a.Target, x.Phase, x.Shape, x.Mode, x.Complete, x.Note))
			}
		}
	}
}

// applyTarget is the applier target, in row events per second.
const applyTarget = 20000

func shapeWord(shape string) string {
	if strings.HasPrefix(shape, "single") {
		return "single-row"
	}
	return "multi-row"
}

func ratioStr(s *Summary, ok bool, v float64) string {
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.2f×", v)
}

func sizeOf(target string) string {
	if i := strings.Index(target, "pgbench"); i >= 0 {
		return target[i:]
	}
	return target
}

func machineFacts(env map[string]string) map[string]string {
	m := map[string]string{
		"cores":  fmt.Sprint(runtime.NumCPU()),
		"go":     runtime.Version(),
		"goarch": runtime.GOOS + "/" + runtime.GOARCH,
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, v, _ := strings.Cut(l, ":")
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:")), "%d", &kb)
				m["memory"] = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=12").Output(); err == nil {
		m["osc commit"] = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m["load average at start"] = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return m
}

func f1(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func f0(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.0f", v)
}

func ratio(v float64) string {
	if v == 0 || math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.2f×", v)
}

// tables returns, per target and condition, a header and rows.
func (r *report) tables() []tableT {
	var out []tableT
	var cur *tableT
	for _, s := range r.Summary {
		title := s.Target + ", " + map[string]string{"idle": "idle", "load": fmt.Sprintf("under load (%s)", r.Config["load"])}[s.Cond]
		if cur == nil || cur.title != title {
			out = append(out, tableT{title: title})
			cur = &out[len(out)-1]
			cur.head = []string{"contender", "runs ok", "wall s", "of it verify s", "rows/s", "wall vs bare", "rows/s vs bare", "peak RSS MB", "CPU s", "server CPU s"}
			if s.Cond == "load" {
				cur.head = append(cur.head, "wall vs idle bare", "base p95 ms", "p50 ms", "p95 ms", "p99 ms", "worst ms (median / max)", "zero-tx s (median / max)", "tx/s done", "failed tx", "witness")
			}
		}
		row := []string{s.Contender, fmt.Sprintf("%d/%d", s.OK, s.Runs), f1(s.WallS), f1(s.VerifyS), f0(s.RowsPerS), ratio(s.WallRatio), ratio(s.RowsRatio)}
		if s.Proc {
			row = append(row, f0(s.RSSMB), f1(s.CPUS))
		} else {
			row = append(row, "-", "-")
		}
		row = append(row, f1(s.ServerCPUS))
		if s.Cond == "load" {
			row = append(row, ratio(s.WallVsIdleBare), f1(s.BaseP95), f1(s.P50), f1(s.P95), f1(s.P99),
				f0(s.WorstMedian)+" / "+f0(s.WorstMax), f0(s.ZeroMedian)+" / "+f0(s.ZeroMax), f0(s.RateMedian), fmt.Sprint(s.FailedTx), s.Witness)
		}
		cur.rows = append(cur.rows, row)
	}
	return out
}

type tableT struct {
	title string
	head  []string
	rows  [][]string
}

func (r *report) applyTable() tableT {
	t := tableT{title: "Applier throughput", head: []string{"database", "phase", "burst", "mode", "row changes", "burst rate/s", "applied events/s", "peak 1 s", "catch-up s", "bound by"}}
	for _, a := range r.Apply {
		for _, x := range a.Results {
			peak := f0(x.PeakRate)
			if x.PeakRate == 0 {
				peak = "-" // applied within less than a second
			}
			t.rows = append(t.rows, []string{a.Target, x.Phase, x.Shape, x.Mode, fmt.Sprint(x.Rows), f0(x.GenRate), f0(x.ApplyRate), peak, f1(x.CatchUpS), x.Bound})
		}
	}
	return t
}

func textTable(t tableT) string {
	var b strings.Builder
	w := make([]int, len(t.head))
	for i, h := range t.head {
		w[i] = len([]rune(h))
	}
	for _, r := range t.rows {
		for i, c := range r {
			if n := len([]rune(c)); i < len(w) && n > w[i] {
				w[i] = n
			}
		}
	}
	line := func(cells []string) {
		for i, c := range cells {
			fmt.Fprintf(&b, "%-*s  ", w[i], c)
		}
		b.WriteString("\n")
	}
	b.WriteString("== " + t.title + "\n")
	line(t.head)
	for _, r := range t.rows {
		line(r)
	}
	return b.String()
}

func mdTable(t tableT) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(t.head, " | ") + " |\n|")
	for range t.head {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range t.rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return b.String()
}

func (r *report) checksTable() tableT {
	t := tableT{title: "Targets", head: []string{"database", "target", "wanted", "measured", "result"}}
	for _, c := range r.Checks {
		res := c.Result
		t.rows = append(t.rows, []string{c.DB, c.What, c.Want, c.Got, res})
	}
	return t
}

func (r *report) text() string {
	var b strings.Builder
	b.WriteString("\n")
	for _, t := range r.tables() {
		b.WriteString(textTable(t) + "\n")
	}
	if len(r.Apply) > 0 {
		b.WriteString(textTable(r.applyTable()) + "\n")
	}
	b.WriteString(textTable(r.checksTable()) + "\n")
	for _, n := range append(append([]string(nil), r.Notes...), r.Findings...) {
		b.WriteString("note: " + n + "\n")
	}
	fmt.Fprintf(&b, "total time %s\n", r.Finished.Sub(r.Started).Round(time.Second))
	return b.String()
}

func (r *report) markdown() string {
	var b strings.Builder
	cmd := r.Config["command"]
	if cmd == "" {
		cmd = "bash localtests/bench/bench.sh"
	}
	b.WriteString(`# Benchmarks

This file is written by ` + "`localtests/bench/bench.sh`" + ` (the Go program in
` + "`localtests/bench/`" + `); rerunning it replaces the numbers below. The numbers
are what one run measured on the machine described here, not tuned: they
are the baseline that later work on osc is measured against.

## How to run

` + "```sh" + `
bash localtests/bench/bench.sh             # default run: about 8 minutes on 2 cores (10 min 20 s measured with --memory)
bash localtests/bench/bench.sh --quick     # smoke run, about 2 minutes: 100k rows, pgbench -s 1, 2 reps
bash localtests/bench/bench.sh --memory    # the default plus osc's peak RSS on a 5x MariaDB table (one idle run)
bash localtests/bench/bench.sh --only postgres --pg-scales 10 --reps 5
bash localtests/bench/bench.sh --only mariadb --rows 2000000 --reps 5
bash localtests/bench/bench.sh --help      # every flag
` + "```" + `

It installs MariaDB and PostgreSQL 15 if missing (` + "`localtests/servers.sh install`" + `)
and Debian's ` + "`percona-toolkit`" + ` (skipped with a note if that fails, or with
` + "`--no-ptosc`" + `), starts throwaway servers in a temporary directory (with the
same watchdog as ` + "`test.sh`" + `, so a killed run leaves no server behind), builds
osc, runs everything, prints the tables and rewrites this file
(` + "`--no-docs`" + ` leaves it alone). Logs of every run (osc's stderr, pt-osc's
output) and the raw results as JSON stay in the directory it prints;
` + "`go run ./localtests/bench --from-results DIR/results.json --docs docs/benchmarks.md`" + `
renders them again without measuring.

What the default run measures: MariaDB with 1,000,000 rows (` + "`--rows`" + `), the
three contenders idle and under load, 3 runs each (` + "`--reps`" + `), then the
applier; PostgreSQL at ` + "`pgbench -s 10`" + ` the same (two contenders), then the
applier, and at ` + "`-s 50`" + ` idle and under load again (the applier is measured
at the first of ` + "`--pg-scales`" + ` only). The MariaDB 5M-row memory point
is behind ` + "`--memory`" + ` (loading and migrating 5M rows costs about 3 more
minutes).

## Method

- **Interleaved runs.** For each table and condition the contenders run in
  turn (bare, osc, pt-osc, bare, osc, pt-osc, ...), each on a fresh copy of
  the table (MariaDB: an imported copy of an exported tablespace; PostgreSQL:
  ` + "`CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`" + ` of the pgbench database),
  so no run inherits another's bloat. Reported values are medians over the
  runs; "worst" and "zero-tx seconds" also give the maximum over all runs,
  and the targets on them are judged on the maximum.
- **Contenders.** *bare*: the same change as one plain copy, the reference
  (MariaDB: ` + "`CREATE TABLE n LIKE t; ALTER TABLE n ADD COLUMN extra INT NOT NULL DEFAULT 0; INSERT INTO n SELECT *, 0 FROM t`" + `;
  PostgreSQL: ` + "`CREATE TABLE n (LIKE pgbench_accounts INCLUDING ALL); ALTER TABLE n ALTER COLUMN abalance TYPE bigint; INSERT INTO n SELECT * FROM pgbench_accounts`" + `),
  timed from the CREATE to the end of the INSERT; it swaps nothing and, on
  MariaDB in REPEATABLE READ, its INSERT ... SELECT share-locks the rows it
  reads, so under load it blocks the writers. *osc*: ` + "`osc --execute --result-json --serve-socket-file none --drop-old-table`" + `
  with default settings (chunks adapting to 100 ms, verification on). *pt-osc*:
  ` + "`pt-online-schema-change --alter ... D=db,t=sbtest,... --execute --no-check-replication-filters --recursion-method=none --no-version-check`" + `
  with its defaults (MariaDB only).
- **Tables.** MariaDB: sysbench-shaped ` + "`sbtest (id INT AUTO_INCREMENT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60), KEY(k))`" + `,
  ALTER ` + "`ADD COLUMN extra INT NOT NULL DEFAULT 0`" + ` (osc always copies).
  PostgreSQL: ` + "`pgbench -i -s N`" + ` ` + "`pgbench_accounts`" + `, ALTER ` + "`ALTER COLUMN abalance TYPE bigint`" + `.
  The MariaDB replica's threads and the PostgreSQL standby are stopped during the
  benchmark, so that replaying each copy does not compete for the two cores.
  MariaDB runs with a 1 GB buffer pool and a 1 GB redo log (the tests use 256 MB
  and the server's 96 MB): sized for the 1M-row table and its copy, as a
  production server would be for its data; see "What each change bought" for
  what the smaller sizes cost.
- **Load.** An open-loop generator in the same program: transactions are due
  at a fixed rate and executed in order by a fixed set of connections;
  latency runs from the due time to the commit, so a stall counts for every
  transaction queued behind it. Each transaction is one autocommit
  statement on the migrated table: 40% UPDATE of k, 20% UPDATE of c
  (filler), 20% DELETE, 20% INSERT of a new id. Baseline percentiles are over
  the seconds before the contender starts; "during" over the transactions
  due while it runs; "zero-tx seconds" counts whole seconds of the run in
  which no transaction completed.
- **Witness.** Each load connection owns the ids congruent to its number, so
  it knows the last committed value of every row it wrote. After the run every
  such row is read back from the (migrated) table: deleted rows must be gone,
  the others must hold the last value, and the row count must match. For the
  bare copy, which swaps nothing, this checks the original table (a check of
  the generator itself).
- **Resources.** Peak RSS is the child's ` + "`VmHWM`" + ` (` + "`/proc/PID/status`" + `, sampled
  every 20 ms; ` + "`getrusage`" + `'s ` + "`ru_maxrss`" + ` would include this program's own RSS,
  which Go's ` + "`CLONE_VM`" + ` start of children carries into it), CPU its user + system
  time (` + "`ProcessState`" + `); server CPU is
  the database server's CPU time over the run (` + "`/proc/PID/stat`" + `; PostgreSQL:
  the postmaster and its backends), which includes what the load costs.
- **Applier throughput.** osc runs with ` + "`--throttle-flag-file`" + ` (the copy waits,
  the applier runs) and ` + "`--postpone-cut-over-flag-file`" + `. Bursts of row changes
  are made on the table: single-row UPDATEs from several connections, and
  multi-row UPDATEs in big transactions; ` + "`events_applied`" + ` is read from the
  control socket (` + "`status json`" + `) every 100 ms. *live*: the applier runs during
  the burst (if it keeps up, the burst's own rate is the limit: "bound by
  generator"); *drain*: ` + "`pause-all`" + ` during the burst, then ` + "`resume-all`" + `, so the
  rate is the applier's alone. The rate runs from the first applied event to the
  last. Phase *copy held*: the shadow table is still empty (updates find no
  row); phase *shadow full*: after the flag file is removed the copy finishes and
  the run waits at the postponed cut-over, so updates hit real rows. PostgreSQL's
  snapshot copy holds the applier until the copy ends, so there it is measured
  with the shadow full only. The target (20,000 events/s sustained) is judged
  on the slowest of the bursts that measure a rate the applier sustains, in
  every phase: the drains, and live bursts made faster than the target. A live
  burst made slower than that (the single-row one: 8 connections of
  autocommitted UPDATEs make 6-11k/s here) cannot show the target however fast
  osc is; whether osc kept up with it is reported beside the rates. Then the run
  is aborted over the socket (exit code 4 expected, nothing left behind).
`)
	b.WriteString("\n## This run\n\n")
	fmt.Fprintf(&b, "Command: `%s`\n\n", cmd)
	fmt.Fprintf(&b, "Started %s, took %s.\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second))
	keys := make([]string, 0, len(r.Machine))
	for k := range r.Machine {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b.WriteString("| machine | |\n|---|---|\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "| %s | %s |\n", k, r.Machine[k])
	}
	b.WriteString("\n| setting | |\n|---|---|\n")
	ck := make([]string, 0, len(r.Config))
	for k := range r.Config {
		if k != "command" {
			ck = append(ck, k)
		}
	}
	sort.Strings(ck)
	for _, k := range ck {
		fmt.Fprintf(&b, "| %s | %s |\n", k, r.Config[k])
	}
	b.WriteString("\n## Targets\n\n")
	b.WriteString(mdTable(r.checksTable()))
	b.WriteString("\n## Results\n\nMedians over the runs; ratios are against the bare copy of the same run.\n")
	for _, t := range r.tables() {
		b.WriteString("\n### " + t.title + "\n\n" + mdTable(t))
	}
	if len(r.Apply) > 0 {
		b.WriteString("\n### Applier throughput\n\n")
		b.WriteString(mdTable(r.applyTable()))
		b.WriteString("\n")
		for _, a := range r.Apply {
			fmt.Fprintf(&b, "- %s: osc exit code %d after `abort` (4 expected), peak RSS %.0f MB, CPU %.1f s", a.Target, a.Exit, a.RSSMB, a.CPUS)
			if len(a.Leftovers) > 0 {
				fmt.Fprintf(&b, ", left behind: %s", strings.Join(a.Leftovers, ", "))
			} else {
				b.WriteString(", nothing left behind")
			}
			b.WriteString(".\n")
		}
	}
	b.WriteString("\n## Every run\n\n")
	b.WriteString("| table | condition | contender | rep | wall s | rows/s | RSS MB | CPU s | server CPU s | base p95 ms | p95 ms | worst ms | zero-tx s | failed tx | witness | osc verify s | osc chunks |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, t := range r.Trials {
		rss, cpu := "-", "-"
		if t.Proc {
			rss, cpu = f0(t.RSSMB), f1(t.CPUS)
		}
		bp, p95, worst, zero, failed, wit := "-", "-", "-", "-", "-", "-"
		if l := t.Load; l != nil {
			bp, p95, worst, zero, failed, wit = f1(l.Base.P95), f1(l.During.P95), f0(l.During.Max), fmt.Sprint(l.ZeroSeconds), fmt.Sprint(l.Failed), l.Witness
		}
		wall, rps := f1(t.WallS), f0(t.RowsPerS)
		if !t.ok() {
			wall += " (failed)"
			rps = "-"
		}
		verify := "-"
		if t.OscVerifyS > 0 {
			verify = f1(t.OscVerifyS)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			t.Size, t.Cond, t.Contender, t.Rep, wall, rps, rss, cpu, f1(t.ServerCPUS), bp, p95, worst, zero, failed, wit, verify, t.OscChunks)
	}
	if notes := append(append([]string(nil), r.Notes...), r.Findings...); len(notes) > 0 {
		b.WriteString("\n## Notes from this run\n\n")
		for _, n := range notes {
			b.WriteString("- " + strings.ReplaceAll(n, "|", "\\|") + "\n")
		}
	}
	return b.String()
}
