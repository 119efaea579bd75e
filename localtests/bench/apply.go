package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ApplyRun is the applier measurement on one database: one osc run whose
// copy is held by --throttle-flag-file while bursts of row changes are
// made, then released (cut-over postponed) for more bursts against a full
// shadow table, then aborted over the control socket.
type ApplyRun struct {
	Target    string
	DB        string
	Results   []*ApplyResult
	Exit      int
	RSSMB     float64
	CPUS      float64
	Leftovers []string `json:",omitempty"`
	Err       string   `json:",omitempty"`
	Notes     []string `json:",omitempty"`
}

// ApplyResult is one burst.
type ApplyResult struct {
	Phase string // "copy held" or "shadow full"
	Shape string
	Mode  string // live (applier running) or drain (paused during the burst)
	Rows  int64  // row changes made by the burst
	// The burst's own rate (what the clients achieved).
	GenSeconds float64
	GenRate    float64
	// Sustained applied row events per second: from the first applied
	// event after the burst started (or after resume-all) to the last.
	ApplySeconds float64
	ApplyRate    float64
	CatchUpS     float64 // from the end of the burst to the last event applied
	PeakRate     float64 // best 1-second window
	Bound        string  // applier, or generator when the applier kept up
	Complete     bool
	Note         string `json:",omitempty"`
}

type oscStatus struct {
	State         string `json:"state"`
	RowsCopied    int64  `json:"rows_copied"`
	EventsApplied int64  `json:"events_applied"`
	Backlog       int64  `json:"backlog"`
	Throttle      string `json:"throttle"`
}

// sockCmd sends one command to osc's control socket and returns the answer.
func sockCmd(path, cmd string) (string, error) {
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "%s\n", cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

func sockStatus(path string) (oscStatus, error) {
	var s oscStatus
	line, err := sockCmd(path, "status json")
	if err != nil {
		return s, err
	}
	err = json.Unmarshal([]byte(line), &s)
	return s, err
}

func runApply(ctx context.Context, c *config, t *target) *ApplyRun {
	ar := &ApplyRun{Target: t.Name, DB: t.DB, Exit: -1}
	logf("%s: applier throughput", t.Name)
	in, err := t.prepare(ctx, 9999)
	if err != nil {
		ar.Err = err.Error()
		return ar
	}
	defer in.drop()
	flagFile := filepath.Join(c.workDir, t.DB+".throttle")
	postpone := filepath.Join(c.workDir, t.DB+".postpone")
	sock := filepath.Join(c.workDir, t.DB+".sock")
	os.WriteFile(flagFile, nil, 0o644)
	os.WriteFile(postpone, nil, 0o644)
	defer os.Remove(flagFile)
	defer os.Remove(postpone)

	var args []string
	var password string
	table := "sbtest"
	if t.DB == "mariadb" {
		password = envOf("OSC_TEST_MYSQL_PASSWORD")
		args = []string{"--port", envOf("OSC_TEST_MYSQL_PORT"), "--user", envOf("OSC_TEST_MYSQL_USER"), "--alter", mariaAlter}
	} else {
		table = "pgbench_accounts"
		password = envOf("OSC_TEST_PG_PASSWORD")
		args = []string{"--driver", "postgres", "--port", envOf("OSC_TEST_PG_PORT"), "--user", envOf("OSC_TEST_PG_USER"), "--alter", pgAlter}
	}
	args = append(args, "--host", "127.0.0.1", "--database", in.dbName, "--table", table, "--execute", "--result-json",
		"--throttle-flag-file", flagFile, "--postpone-cut-over-flag-file", postpone, "--serve-socket-file", sock)
	logBase := filepath.Join(c.workDir, t.DB+"-apply")
	errf, _ := os.Create(logBase + ".err")
	defer errf.Close()
	cmd := exec.Command(c.oscBin, args...)
	cmd.Env = append(os.Environ(), "OSC_PASSWORD="+password)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, errf
	if err := cmd.Start(); err != nil {
		ar.Err = err.Error()
		return ar
	}
	rss := watchRSS(cmd.Process.Pid)
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	finish := func() {
		select {
		case <-waited:
		case <-time.After(3 * time.Minute):
			ar.Err = strings.TrimPrefix(ar.Err+"; ", "; ") + "osc did not exit within 3 minutes of abort: killed"
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-waited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-waited
			}
		}
		os.WriteFile(logBase+".out", stdout.Bytes(), 0o644)
		if ps := cmd.ProcessState; ps != nil {
			ar.Exit = ps.ExitCode()
			ar.RSSMB = float64(rss.peakKB()) / 1024
			ar.CPUS = (ps.UserTime() + ps.SystemTime()).Seconds()
		}
	}
	exited := func() bool {
		select {
		case err := <-waited:
			waited <- err
			return true
		default:
			return false
		}
	}
	waitState := func(want string, limit time.Duration) error {
		deadline := time.Now().Add(limit)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if exited() {
				return fmt.Errorf("osc exited early (log %s.err: %s)", logBase, lastLine(logBase+".err"))
			}
			if s, err := sockStatus(sock); err == nil && s.State == want {
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return fmt.Errorf("osc did not reach state %q within %s", want, limit)
	}
	abort := func() {
		if !exited() {
			if ans, err := sockCmd(sock, "abort"); err != nil || ans != "OK" {
				// Seen: the socket closes before the answer is written.
				note := fmt.Sprintf("abort over the control socket answered %q (%v) instead of OK", ans, err)
				logf("%s", note)
				ar.Notes = append(ar.Notes, note)
				select {
				case err := <-waited:
					waited <- err
				case <-time.After(15 * time.Second):
					ar.Notes = append(ar.Notes, "osc still running 15s after abort: sent SIGTERM")
					cmd.Process.Signal(syscall.SIGTERM)
				}
			}
		}
		finish()
	}

	if err := waitState("copying", 2*time.Minute); err != nil {
		ar.Err = err.Error()
		abort()
		return ar
	}
	s, _ := sockStatus(sock)
	if s.RowsCopied != 0 {
		ar.Err = fmt.Sprintf("the copy was not held by the flag file: %d rows copied", s.RowsCopied)
	}
	n := c.applyRows
	if n == 0 {
		// MariaDB's applier ran at a few thousand events/s when this was
		// written: 200k changes would take over a minute per burst.
		n = map[string]int{"mariadb": 50000, "postgres": 200000}[t.DB]
	}
	b := &burster{db: in.db, dsn: in.dsn, driver: t.dial.driver, dial: t.DB, rows: t.Rows, conns: c.applyConns, txRows: c.applyTxRows, n: int64(n)}
	type burst struct{ shape, mode string }
	all := []burst{{"single", "live"}, {"multi", "live"}, {"single", "drain"}}
	measure := func(phase string, bursts []burst) {
		for _, m := range bursts {
			if ctx.Err() != nil || exited() {
				return
			}
			r := b.measure(ctx, sock, phase, m.shape, m.mode)
			ar.Results = append(ar.Results, r)
			logf("%s apply, %s, %s, %s: %d rows generated at %.0f/s; applied at %.0f/s (peak %.0f/s, catch-up %.1fs, %s-bound)%s",
				t.Name, phase, r.Shape, r.Mode, r.Rows, r.GenRate, r.ApplyRate, r.PeakRate, r.CatchUpS, r.Bound, ifNote(r.Note))
		}
	}
	// PostgreSQL's snapshot copy holds the applier until the copy ends:
	// its applier is measured with the shadow full only.
	snapshotCopy := t.DB == "postgres"
	if !snapshotCopy {
		measure("copy held", all)
	}
	os.Remove(flagFile)
	if err := waitState("postponing cut-over", 15*time.Minute); err != nil {
		ar.Err = strings.TrimPrefix(ar.Err+"; ", "; ") + err.Error()
	} else if snapshotCopy {
		measure("shadow full", all)
	} else {
		measure("shadow full", []burst{{"single", "drain"}, {"multi", "live"}})
	}
	abort()
	if ar.Exit != 4 {
		ar.Err = strings.TrimPrefix(ar.Err+"; ", "; ") + fmt.Sprintf("osc exited %d after abort (want 4)", ar.Exit)
	}
	cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	ar.Leftovers, _, _ = in.check(cctx)
	cancel()
	if _, err := os.Stat(sock); err == nil {
		ar.Leftovers = append(ar.Leftovers, "control socket "+sock)
	}
	return ar
}

func ifNote(s string) string {
	if s == "" {
		return ""
	}
	return " — " + s
}

var benchEnv map[string]string

func envOf(k string) string { return benchEnv[k] }

// burster makes bursts of row changes on the table.
type burster struct {
	db     *sql.DB
	dsn    string
	driver string
	dial   string
	rows   int64
	conns  int
	txRows int
	n      int64
	next   int64 // next id for multi-row ranges
}

type tick struct {
	at      time.Time
	applied int64
}

func (b *burster) measure(ctx context.Context, sock, phase, shape, mode string) *ApplyResult {
	r := &ApplyResult{Phase: phase, Mode: mode}
	if shape == "single" {
		r.Shape = fmt.Sprintf("single-row UPDATEs from %d connections", b.conns)
	} else {
		r.Shape = fmt.Sprintf("multi-row UPDATEs, %d rows per transaction, 2 connections", b.txRows)
	}
	// Let the applier settle (heartbeats only) before the burst.
	time.Sleep(time.Second)
	if mode == "drain" {
		if ans, err := sockCmd(sock, "pause-all"); err != nil || ans != "OK" {
			r.Note = fmt.Sprintf("pause-all failed: %q %v", ans, err)
			return r
		}
	}
	s0, err := sockStatus(sock)
	if err != nil {
		r.Note = err.Error()
		return r
	}
	var mu sync.Mutex
	var ticks []tick
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if s, err := sockStatus(sock); err == nil {
				mu.Lock()
				ticks = append(ticks, tick{time.Now(), s.EventsApplied})
				mu.Unlock()
			}
		}
	}()
	g0 := time.Now()
	var changed int64
	if shape == "single" {
		changed, err = b.single(ctx)
	} else {
		changed, err = b.multi(ctx)
	}
	g1 := time.Now()
	r.Rows = changed
	r.GenSeconds = g1.Sub(g0).Seconds()
	if r.GenSeconds > 0 {
		r.GenRate = float64(changed) / r.GenSeconds
	}
	if err != nil {
		r.Note = "burst: " + err.Error()
	}
	from := g0
	if mode == "drain" {
		// Everything is queued: release the applier and time the drain.
		if ans, err := sockCmd(sock, "resume-all"); err != nil || ans != "OK" {
			r.Note = strings.TrimPrefix(r.Note+"; ", "; ") + fmt.Sprintf("resume-all failed: %q %v", ans, err)
		}
		from = time.Now()
	}
	target := s0.EventsApplied + changed
	deadline := time.Now().Add(5 * time.Minute)
	lastProgress, lastN := time.Now(), int64(-1)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		mu.Lock()
		var cur int64
		if len(ticks) > 0 {
			cur = ticks[len(ticks)-1].applied
		}
		mu.Unlock()
		if cur >= target {
			r.Complete = true
			break
		}
		if cur != lastN {
			lastN, lastProgress = cur, time.Now()
		} else if time.Since(lastProgress) > 20*time.Second {
			r.Note = strings.TrimPrefix(r.Note+"; ", "; ") + fmt.Sprintf("no progress for 20s at %d of %d events", cur-s0.EventsApplied, changed)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	// first: the first tick after `from` with progress; done: the first
	// tick at or past the target.
	var first, done *tick
	var prev = tick{from, s0.EventsApplied}
	for i := range ticks {
		tk := &ticks[i]
		if tk.at.Before(from) {
			prev = *tk
			continue
		}
		if first == nil && tk.applied > prev.applied {
			p := prev
			first = &p
		}
		if tk.applied >= target {
			done = tk
			break
		}
	}
	last := done
	if last == nil && len(ticks) > 0 {
		last = &ticks[len(ticks)-1]
	}
	if first != nil && last != nil && last.at.After(first.at) {
		r.ApplySeconds = last.at.Sub(first.at).Seconds()
		r.ApplyRate = float64(last.applied-first.applied) / r.ApplySeconds
		r.CatchUpS = max(0, last.at.Sub(g1).Seconds())
	}
	// Peak: best 1-second window.
	for i := range ticks {
		for j := i + 1; j < len(ticks); j++ {
			if d := ticks[j].at.Sub(ticks[i].at); d >= time.Second {
				if rate := float64(ticks[j].applied-ticks[i].applied) / d.Seconds(); rate > r.PeakRate {
					r.PeakRate = rate
				}
				break
			}
		}
	}
	r.Bound = "applier"
	if mode == "live" && (r.CatchUpS < 0.5 || r.ApplyRate >= 0.9*r.GenRate) {
		r.Bound = "generator"
	}
	return r
}

// single updates n rows one statement (one transaction) at a time, from
// several connections on disjoint ids.
func (b *burster) single(ctx context.Context) (int64, error) {
	q := "UPDATE sbtest SET k = k + 1 WHERE id = ?"
	if b.dial == "postgres" {
		q = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1"
	}
	db, err := sql.Open(b.driver, b.dsn)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	db.SetMaxOpenConns(b.conns)
	var total int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	per := b.n / int64(b.conns)
	for w := 0; w < b.conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var done int64
			for i := int64(0); i < per && ctx.Err() == nil; i++ {
				id := (int64(w)+i*int64(b.conns))%b.rows + 1
				res, err := db.ExecContext(ctx, q, id)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				n, _ := res.RowsAffected()
				done += n
			}
			mu.Lock()
			total += done
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	return total, firstErr
}

// multi updates n rows in transactions of txRows rows (one ranged UPDATE
// each), from two connections.
func (b *burster) multi(ctx context.Context) (int64, error) {
	q := "UPDATE sbtest SET k = k + 1 WHERE id BETWEEN ? AND ?"
	if b.dial == "postgres" {
		q = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN $1 AND $2"
	}
	var total int64
	var mu sync.Mutex
	var firstErr error
	ranges := make(chan [2]int64, 1024)
	go func() {
		defer close(ranges)
		for made := int64(0); made < b.n; made += int64(b.txRows) {
			lo := b.next%b.rows + 1
			hi := min(lo+int64(b.txRows)-1, b.rows)
			b.next += hi - lo + 1
			ranges <- [2]int64{lo, hi}
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rg := range ranges {
				res, err := b.db.ExecContext(ctx, q, rg[0], rg[1])
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
				} else {
					n, _ := res.RowsAffected()
					total += n
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return total, firstErr
}
