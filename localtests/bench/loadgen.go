package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// dialect holds the load generator's and the witness's SQL for one table.
type dialect struct {
	driver string // database/sql driver name
	table  string
	updK   string // args: k, id
	updC   string // args: c, id
	del    string // args: id
	ins    string // args: id, k, c
	sel    string // %s: comma-separated ids; returns id, k, c
	count  string
}

var mariaDialect = &dialect{
	driver: "mysql",
	table:  "sbtest",
	updK:   "UPDATE sbtest SET k = ? WHERE id = ?",
	updC:   "UPDATE sbtest SET c = ? WHERE id = ?",
	del:    "DELETE FROM sbtest WHERE id = ?",
	ins:    "INSERT INTO sbtest (id, k, c, pad) VALUES (?, ?, ?, 'bench')",
	sel:    "SELECT id, k, c FROM sbtest WHERE id IN (%s)",
	count:  "SELECT COUNT(*) FROM sbtest",
}

var pgDialect = &dialect{
	driver: "pgx",
	table:  "pgbench_accounts",
	updK:   "UPDATE pgbench_accounts SET abalance = $1 WHERE aid = $2",
	updC:   "UPDATE pgbench_accounts SET filler = $1 WHERE aid = $2",
	del:    "DELETE FROM pgbench_accounts WHERE aid = $1",
	ins:    "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES ($1, 1, $2, $3)",
	sel:    "SELECT aid, abalance, filler FROM pgbench_accounts WHERE aid IN (%s)",
	count:  "SELECT count(*) FROM pgbench_accounts",
}

// loadGen is an open-loop load generator: a scheduler emits transactions
// at a fixed rate, each stamped with the time it was due; a fixed set of
// connections executes them in order. Latency is measured from the due
// time, so a stalled database shows as the wait of everything queued
// behind it (no coordinated omission).
//
// Each transaction is one autocommit statement on the table: 40% update
// of k (indexed on MariaDB), 20% update of c, 20% delete, 20% insert of a
// new id. Worker w only touches ids with id % conns == w (and the new ids
// it inserted), so it knows the last committed state of every row it
// wrote: that is the witness checked against the table afterwards.
type loadGen struct {
	db      *sql.DB
	d       *dialect
	rows    int64
	rate    int
	workers []*worker
	jobs    chan time.Time
	started time.Time
	cancel  context.CancelFunc
	schedWG sync.WaitGroup
	workWG  sync.WaitGroup
	stopped atomic.Bool
	dropped atomic.Int64
}

type rowState struct {
	alive bool
	k     int64
	c     string
}

type sample struct {
	due  time.Time
	done time.Time
	ok   bool
}

type worker struct {
	id        int
	rng       *rand.Rand
	live      []int64
	nextNew   int64
	step      int64
	expect    map[int64]rowState
	uncertain map[int64]bool
	samples   []sample
	inserts   int64
	deletes   int64
	errs      map[string]int
	seq       int
}

func startLoad(ctx context.Context, in *instance, d *dialect, rows int64, rate, conns int) (*loadGen, error) {
	db, err := sql.Open(d.driver, in.dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	g := &loadGen{db: db, d: d, rows: rows, rate: rate, jobs: make(chan time.Time, rate*900+1000)}
	n := int64(conns)
	for w := 0; w < conns; w++ {
		wk := &worker{id: w, rng: rand.New(rand.NewPCG(uint64(w)+1, uint64(time.Now().UnixNano()))),
			step: n, expect: map[int64]rowState{}, uncertain: map[int64]bool{}, errs: map[string]int{}}
		// Worker w owns the ids congruent to w modulo conns.
		for id := int64(w); id <= rows; id += n {
			if id >= 1 {
				wk.live = append(wk.live, id)
			}
		}
		wk.nextNew = rows + 1
		for wk.nextNew%n != int64(w) {
			wk.nextNew++
		}
		g.workers = append(g.workers, wk)
	}
	lctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	g.started = time.Now()
	for _, wk := range g.workers {
		g.workWG.Add(1)
		go func(wk *worker) {
			defer g.workWG.Done()
			wk.run(lctx, g)
		}(wk)
	}
	g.schedWG.Add(1)
	go g.schedule()
	return g, nil
}

func (g *loadGen) schedule() {
	defer g.schedWG.Done()
	defer close(g.jobs)
	interval := time.Second / time.Duration(g.rate)
	for i := int64(0); ; i++ {
		due := g.started.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		if g.stopped.Load() {
			return
		}
		select {
		case g.jobs <- due:
		default:
			g.dropped.Add(1)
		}
	}
}

// stop ends the schedule and waits for the queued transactions (at most a
// minute, then cancels them).
func (g *loadGen) stop() {
	g.stopped.Store(true)
	g.schedWG.Wait()
	done := make(chan struct{})
	go func() { g.workWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		g.cancel()
		<-done
	}
	g.cancel()
	g.db.Close()
}

func (w *worker) run(ctx context.Context, g *loadGen) {
	for due := range g.jobs {
		if ctx.Err() != nil {
			w.samples = append(w.samples, sample{due: due, done: time.Now()})
			continue
		}
		w.seq++
		var id int64
		var err error
		op := w.rng.IntN(10)
		if len(w.live) == 0 {
			op = 9
		}
		idx := 0
		if len(w.live) > 0 {
			idx = w.rng.IntN(len(w.live))
			id = w.live[idx]
		}
		var st rowState
		switch {
		case op < 4:
			st = w.state(id)
			st.k = int64(w.rng.Int32())
			_, err = g.db.ExecContext(ctx, g.d.updK, st.k, id)
		case op < 6:
			st = w.state(id)
			st.c = fmt.Sprintf("w%d-%d-%016x", w.id, w.seq, w.rng.Uint64())
			_, err = g.db.ExecContext(ctx, g.d.updC, st.c, id)
		case op < 8:
			_, err = g.db.ExecContext(ctx, g.d.del, id)
		default:
			id = w.nextNew
			st = rowState{alive: true, k: int64(w.rng.Int32()), c: fmt.Sprintf("w%d-%d-new", w.id, w.seq)}
			_, err = g.db.ExecContext(ctx, g.d.ins, id, st.k, st.c)
		}
		now := time.Now()
		w.samples = append(w.samples, sample{due: due, done: now, ok: err == nil})
		if err != nil {
			msg := err.Error()
			if len(msg) > 160 {
				msg = msg[:160]
			}
			w.errs[msg]++
			if errors.Is(err, driver.ErrBadConn) || strings.Contains(msg, "bad connection") ||
				strings.Contains(msg, "broken pipe") || strings.Contains(msg, "EOF") || strings.Contains(msg, "unexpected") {
				// The statement may or may not have committed.
				w.uncertain[id] = true
			}
			if op >= 8 {
				w.nextNew += w.step // never reuse an id whose insert is in doubt
			}
			continue
		}
		switch {
		case op < 6:
			w.expect[id] = st
		case op < 8:
			w.expect[id] = rowState{alive: false}
			w.live[idx] = w.live[len(w.live)-1]
			w.live = w.live[:len(w.live)-1]
			w.deletes++
		default:
			w.expect[id] = st
			w.live = append(w.live, id)
			w.nextNew += w.step
			w.inserts++
		}
	}
}

// state is the row's last known state; for a row the worker has not
// written yet, k and c are unknown and marked as such.
func (w *worker) state(id int64) rowState {
	if s, ok := w.expect[id]; ok {
		return s
	}
	return rowState{alive: true, k: -1 << 40, c: "\x00unknown"}
}

// LoadStats are the foreground numbers of one run under load.
type LoadStats struct {
	Base          Lat
	During        Lat
	ZeroSeconds   int     // whole seconds of the run with no completed transaction
	Done          int     // completed transactions during the run
	Failed        int     // failed during the run
	FailedAll     int     // failed over the whole load
	Rate          float64 // completed transactions/s during the run
	Dropped       int64   `json:",omitempty"`
	Errors        []string
	Witness       string
	WitnessDetail string
}

// Lat are latency percentiles in milliseconds.
type Lat struct {
	N                  int
	P50, P95, P99, Max float64
}

// stats computes baseline latency over transactions due in [bFrom, bTo)
// and the run's over those due in [from, to].
func (g *loadGen) stats(bFrom, bTo, from, to time.Time) LoadStats {
	var all []sample
	errs := map[string]int{}
	for _, w := range g.workers {
		all = append(all, w.samples...)
		for k, v := range w.errs {
			errs[k] += v
		}
	}
	var st LoadStats
	var base, during []float64
	secs := int(to.Sub(from) / time.Second)
	perSec := make([]int, secs+1)
	for _, s := range all {
		lat := float64(s.done.Sub(s.due)) / float64(time.Millisecond)
		if !s.ok {
			st.FailedAll++
		}
		if !s.due.Before(bFrom) && s.due.Before(bTo) && s.ok {
			base = append(base, lat)
		}
		if !s.due.Before(from) && !s.due.After(to) {
			if s.ok {
				during = append(during, lat)
				st.Done++
			} else {
				st.Failed++
			}
		}
		if s.ok && !s.done.Before(from) && s.done.Before(from.Add(time.Duration(secs)*time.Second)) {
			perSec[int(s.done.Sub(from)/time.Second)]++
		}
	}
	for i := 0; i < secs; i++ {
		if perSec[i] == 0 {
			st.ZeroSeconds++
		}
	}
	st.Base, st.During = percentiles(base), percentiles(during)
	if d := to.Sub(from).Seconds(); d > 0 {
		st.Rate = float64(st.Done) / d
	}
	st.Dropped = g.dropped.Load()
	for k, v := range errs {
		st.Errors = append(st.Errors, fmt.Sprintf("%dx %s", v, k))
	}
	sort.Strings(st.Errors)
	return st
}

func percentiles(v []float64) Lat {
	if len(v) == 0 {
		return Lat{}
	}
	sort.Float64s(v)
	q := func(p float64) float64 {
		i := int(p*float64(len(v))+0.5) - 1
		if i < 0 {
			i = 0
		}
		if i >= len(v) {
			i = len(v) - 1
		}
		return v[i]
	}
	return Lat{N: len(v), P50: q(0.50), P95: q(0.95), P99: q(0.99), Max: v[len(v)-1]}
}

// verify checks every row the load wrote against the table: deleted rows
// must be gone, the others must hold the last value written, and the row
// count must match.
func (g *loadGen) verify(ctx context.Context, db *sql.DB) (string, string) {
	expect := map[int64]rowState{}
	var inserts, deletes int64
	uncertain := 0
	for _, w := range g.workers {
		for id, s := range w.expect {
			if !w.uncertain[id] {
				expect[id] = s
			}
		}
		uncertain += len(w.uncertain)
		inserts += w.inserts
		deletes += w.deletes
	}
	ids := make([]int64, 0, len(expect))
	for id := range expect {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var missing, resurrected, wrong int
	var examples []string
	for i := 0; i < len(ids); i += 1000 {
		j := min(i+1000, len(ids))
		var sb strings.Builder
		for k, id := range ids[i:j] {
			if k > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(strconv.FormatInt(id, 10))
		}
		rows, err := db.QueryContext(ctx, fmt.Sprintf(g.d.sel, sb.String()))
		if err != nil {
			return "error", err.Error()
		}
		got := map[int64]rowState{}
		for rows.Next() {
			var id, k int64
			var c string
			if err := rows.Scan(&id, &k, &c); err != nil {
				rows.Close()
				return "error", err.Error()
			}
			got[id] = rowState{alive: true, k: k, c: strings.TrimRight(c, " ")}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return "error", err.Error()
		}
		for _, id := range ids[i:j] {
			e, gs := expect[id], got[id]
			switch {
			case e.alive && !gs.alive:
				missing++
				examples = append(examples, fmt.Sprintf("id %d missing", id))
			case !e.alive && gs.alive:
				resurrected++
				examples = append(examples, fmt.Sprintf("id %d deleted but present", id))
			case e.alive && ((e.k != -1<<40 && e.k != gs.k) || (e.c != "\x00unknown" && e.c != gs.c)):
				wrong++
				examples = append(examples, fmt.Sprintf("id %d has k=%d c=%q, want k=%d c=%q", id, gs.k, gs.c, e.k, e.c))
			}
		}
	}
	var n int64
	countOK := true
	if err := db.QueryRowContext(ctx, g.d.count).Scan(&n); err != nil {
		return "error", err.Error()
	}
	want := g.rows + inserts - deletes
	if uncertain == 0 && n != want {
		countOK = false
	}
	detail := fmt.Sprintf("%d rows written by the load checked: %d missing, %d deleted but present, %d with a wrong value; count %d (want %d); %d in doubt",
		len(ids), missing, resurrected, wrong, n, want, uncertain)
	if len(examples) > 5 {
		examples = examples[:5]
	}
	if len(examples) > 0 {
		detail += "; e.g. " + strings.Join(examples, "; ")
	}
	if missing+resurrected+wrong == 0 && countOK {
		return "pass", detail
	}
	return "FAIL", detail
}
