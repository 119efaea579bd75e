package migration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/applier"
	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/cutover"
	"github.com/osc-dev/osc/engine"
	"github.com/osc-dev/osc/mysqldb"
	"github.com/osc-dev/osc/pgdb"
	"github.com/osc-dev/osc/replication"
	"github.com/osc-dev/osc/status"
	"github.com/osc-dev/osc/throttle"
	"github.com/osc-dev/osc/verify"
)

// Marker kinds written to the changelog and read back from the stream.
const (
	markerSync      = "sync"      // the applier has reached this point
	markerBarrier   = "barrier"   // cut-over: everything before it is applied
	markerHeartbeat = "heartbeat" // replication delay of the stream itself
)

// errSwapped stops the applier once the tables are swapped: events after
// the barrier belong to the new table.
var errSwapped = errors.New("tables swapped")

// Run performs (or, without Execute, plans) one online ALTER. The error,
// if any, says what happened and in which state the table was left;
// ExitCode classifies it.
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	start := time.Now()
	res := &Result{}
	err := run(ctx, &o, res)
	res.Duration = time.Since(start)
	res.ExitCode = ExitCode(err)
	if err != nil {
		res.Error = err.Error()
	}
	return res, err
}

func run(ctx context.Context, o *Options, res *Result) (err error) {
	if err := o.validate(); err != nil {
		return err
	}
	dialect := alter.MySQL
	if o.Driver == "postgres" {
		dialect = alter.Postgres
	}
	clauses, err := alter.Parse(o.Alter, dialect)
	if err != nil {
		return &engine.Usage{Reason: err.Error()}
	}
	log := o.Logger.With(zap.String("database", o.Database), zap.String("table", o.Table))
	if o.Schema != "" {
		log = log.With(zap.String("schema", o.Schema))
	}
	eng, err := newEngine(ctx, o, log)
	if err != nil {
		return fmt.Errorf("%w; nothing was changed", err)
	}
	defer eng.Close()

	// 1. preflight: refuse before touching anything.
	if err := eng.Preflight(ctx); err != nil {
		return err
	}
	// From here on osc creates objects; every exit path removes them.
	swapped := false
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		cerr := eng.Cleanup(cctx, swapped, swapped && !o.DropOldTable)
		switch {
		case cerr != nil:
			log.Error("cleanup failed", zap.Error(cerr))
			err = errors.Join(err, fmt.Errorf("cleanup failed, drop osc's helper tables by hand (or rerun with --initially-drop-shadow-table): %w", cerr))
		case err != nil && (ExitCode(err) == ExitFailed || ExitCode(err) == ExitAborted):
			err = fmt.Errorf("%w; the original table is unchanged and authoritative, and osc removed what it had created", err)
		}
	}()

	// 2. plan: the shadow with the ALTER applied, as the server built it.
	plan, err := eng.CreateShadow(ctx, clauses)
	if err != nil {
		return err
	}
	res.Plan = plan
	log.Info("plan", zap.String("shadow", plan.Shadow), zap.String("path", plan.Path),
		zap.Strings("key", plan.Key), zap.Int64("row_estimate", plan.RowEstimate),
		zap.Any("columns", plan.Columns), zap.String("shadow_definition", plan.ShadowDefinition))
	if !o.Execute {
		log.Info("dry run: nothing was changed; rerun with --execute to apply")
		return nil
	}

	r := &runner{o: o, eng: eng, log: log, plan: plan, waiters: map[string]chan struct{}{}}
	r.settings = settings{maxLag: o.MaxLag, maxLoad: o.maxLoad, criticalLoad: o.criticalLoad, throttleQuery: o.ThrottleQuery}
	swapped, err = r.execute(ctx)
	res.RowsCopied, res.EventsApplied = r.counters()
	res.VerifiedChunks, res.RepairedChunks = r.verified.Chunks, r.verified.Repaired
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("interrupted (%w) during %s", err, r.state.Load())
	}
	if err != nil {
		return err
	}
	res.Applied = true
	if !o.DropOldTable {
		res.OldTable = plan.Old
	}
	return nil
}

func newEngine(ctx context.Context, o *Options, log *zap.Logger) (engine.Engine, error) {
	if o.Driver == "postgres" {
		return pgdb.New(ctx, pgdb.Config{
			Host: o.Host, Port: o.Port, User: o.User, Password: o.Password,
			Database: o.Database, Schema: o.Schema, Table: o.Table,
			InitiallyDropShadow: o.InitiallyDropShadow, InitiallyDropOld: o.InitiallyDropOld,
			DryRun: !o.Execute, MaxSlotWALBytes: o.MaxSlotWALBytes,
			MaintenanceWorkMem: o.pgMaintenanceWorkMem(),
			Logger:             log,
		})
	}
	return mysqldb.New(ctx, mysqldb.Config{
		Host: o.Host, Port: o.Port, User: o.User, Password: o.Password,
		Database: o.Database, Table: o.Table,
		InitiallyDropShadow: o.InitiallyDropShadow, InitiallyDropOld: o.InitiallyDropOld,
		DryRun: !o.Execute, IndexesDuringCopy: o.IndexesDuringCopy,
		Logger: log,
	})
}

// runner holds the state of an executing run.
type runner struct {
	o    *Options
	eng  engine.Engine
	log  *zap.Logger
	plan *engine.Plan

	track     *status.Tracker
	copier    *copier.Copier
	applier   *applier.Applier
	throttler *throttle.Throttler
	state     atomic.Value // string
	lagNanos  atomic.Int64 // stream delay seen on the last heartbeat
	verified  verify.Result

	settings    settings
	replicaLag  atomic.Int64 // highest control replica lag last measured, ns
	unpostponed atomic.Bool  // the operator released a postponed cut-over
	abort       func(error)  // ends the run with a cause

	mu      sync.Mutex
	waiters map[string]chan struct{} // sync markers by token
	barrier *barrier
}

// barrier is the cut-over's drain point. The applier stops at it until the
// swap attempt ends: after a swap nothing more may be applied, after a
// failed attempt the applier goes on.
type barrier struct {
	token   string
	reached chan struct{}
	release chan struct{}
	swapped bool
}

func (r *runner) execute(ctx context.Context) (swapped bool, err error) {
	r.state.Store("starting")
	r.track = status.NewTracker(time.Now())
	for _, l := range []struct {
		flag   string
		limits throttle.Limits
	}{{"--max-load", r.o.maxLoad}, {"--critical-load", r.o.criticalLoad}} {
		if err := r.checkLoadNames(ctx, l.limits); err != nil {
			return false, &engine.Usage{Reason: l.flag + ": " + err.Error()}
		}
	}
	// 3. capture starts before the first row is copied.
	stream, err := r.eng.StartCapture(ctx)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r.applier = applier.New(stream, r.eng.Writer(), r.onMarker, 1000)
	snapshot := r.eng.SnapshotCopy()
	r.applier.Hold(snapshot)
	r.setupThrottle()
	r.copier = copier.New(r.eng.Source(), r.throttler, r.o.ChunkSize, r.o.CopyWorkers)
	r.copier.SetChunkTime(r.o.ChunkTime)
	stopControl, err := r.serveControl(cancel)
	if err != nil {
		return false, err
	}
	defer stopControl()

	var bg sync.WaitGroup
	defer bg.Wait()
	actx, stopApplier := context.WithCancel(ctx)
	defer stopApplier()
	bg.Add(1)
	go func() {
		defer bg.Done()
		if err := r.applier.Run(actx); err != nil && !errors.Is(err, errSwapped) && actx.Err() == nil {
			cancel(err)
		}
	}()
	bg.Add(3)
	go func() { defer bg.Done(); r.heartbeat(actx) }()
	go func() { defer bg.Done(); r.report(actx) }()
	go func() { defer bg.Done(); r.watchCriticalLoad(actx, cancel) }()
	// A failure anywhere cancels ctx with its cause; report the cause.
	defer func() {
		if err != nil && context.Cause(ctx) != nil && !errors.Is(context.Cause(ctx), context.Canceled) {
			err = context.Cause(ctx)
		}
	}()

	// The first sync marker proves the stream is live end to end; a
	// snapshot copy's applier is held, so it proves that after the copy.
	if !snapshot {
		if err := r.catchUp(ctx); err != nil {
			return false, fmt.Errorf("waiting for the change stream to start: %w", err)
		}
	}
	// 4. copy, while the applier applies concurrent writes (or, after a
	// snapshot copy, every write since the snapshot).
	r.state.Store("copying")
	if err := r.copier.Run(ctx); err != nil {
		return false, err
	}
	if err := r.eng.EndCopy(ctx); err != nil {
		return false, err
	}
	r.applier.Hold(false)
	r.state.Store("catching up")
	if err := r.settle(ctx); err != nil {
		return false, err
	}
	r.state.Store("finishing the shadow table")
	if err := r.eng.FinishShadow(ctx); err != nil {
		return false, err
	}
	if err := r.settle(ctx); err != nil {
		return false, err
	}
	if err := r.waitPostponed(ctx); err != nil {
		return false, err
	}
	policy := cutover.Policy{What: "cut-over", LockTimeout: r.o.CutOverLockTimeout, MaxAttempts: r.o.CutOverAttempts,
		StartLockTimeout: max(r.o.CutOverLockTimeout/4, time.Second),
		Backoff:          500 * time.Millisecond, MaxBackoff: 10 * time.Second}
	// 5. verify, at one consistent point, and repair what differs.
	if !r.o.SkipVerify {
		r.state.Store("verifying")
		if err := r.verify(ctx, policy); err != nil {
			return false, err
		}
	}
	// 6. cut over.
	r.state.Store("cutting over")
	err = cutover.Run(ctx, policy, r.log, func(ctx context.Context, timeout time.Duration) error {
		// Start each attempt settled, so the drain under the lock is short.
		if err := r.settle(ctx); err != nil {
			return err
		}
		err := r.eng.Swap(ctx, timeout, r.drain)
		r.release(err == nil)
		return err
	})
	if err != nil {
		return false, err
	}
	r.state.Store("done")
	stopApplier()
	r.log.Info("done: the table has its new definition", zap.String("status", r.snapshot().String()))
	return true, nil
}

// verify compares the shadow with the table chunk by chunk, in views
// opened with the same lock discipline and retries as the cut-over.
func (r *runner) verify(ctx context.Context, policy cutover.Policy) error {
	if len(r.plan.Unverified) > 0 {
		r.log.Warn("verification cannot compare columns whose type the ALTER changes", zap.Strings("columns", r.plan.Unverified))
	}
	policy.What = "verification lock"
	open := func(ctx context.Context) (verify.View, error) {
		var v verify.View
		err := cutover.Run(ctx, policy, r.log, func(ctx context.Context, timeout time.Duration) error {
			if err := r.settle(ctx); err != nil {
				return err
			}
			var err error
			v, err = r.eng.VerifyView(ctx, timeout, r.drain, func() { r.release(false) })
			return err
		})
		return v, err
	}
	start := time.Now()
	var err error
	r.verified, err = verify.Run(ctx, open, r.eng.Repair, verify.Options{ChunkSize: 10 * r.o.ChunkSize, Rounds: 3}, r.log)
	if err != nil {
		return fmt.Errorf("verifying the shadow table: %w", err)
	}
	r.log.Info("verified: the shadow table matches the table", zap.Int("chunks", r.verified.Chunks),
		zap.Int("repaired", r.verified.Repaired), zap.Duration("took", time.Since(start)))
	return nil
}

func (r *runner) counters() (copied, applied int64) {
	if r.copier != nil {
		copied = r.copier.Copied()
	}
	if r.applier != nil {
		applied = r.applier.Applied()
	}
	return copied, applied
}

func token() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// catchUp writes a sync marker and waits until the applier has applied
// everything before it.
func (r *runner) catchUp(ctx context.Context) error {
	t := token()
	ch := make(chan struct{})
	r.mu.Lock()
	r.waiters[t] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.waiters, t)
		r.mu.Unlock()
	}()
	if err := r.eng.WriteMarker(ctx, markerSync, t); err != nil {
		return fmt.Errorf("writing a sync marker: %w", err)
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// settleRounds bounds settle: each round copies back only rows whose
// unique values moved within the applier's lag, so it converges fast.
const settleRounds = 20

// settle catches up with the stream and copies back the rows displaced on
// unique key conflicts, until a catch-up finds none: then no row in the
// shadow is newer than the applier's position, and the shadow is whole.
func (r *runner) settle(ctx context.Context) error {
	for round := 0; round < settleRounds; round++ {
		if err := r.catchUp(ctx); err != nil {
			return err
		}
		n, err := r.eng.Restore(ctx)
		if err != nil || n == 0 {
			return err
		}
	}
	return fmt.Errorf("rows displaced by unique key conflicts were still moving after %d rounds of copying them back; rerun when the application moves unique values less often", settleRounds)
}

// drain is called by the engine's swap once writes to the table are
// blocked: it returns when the applier has applied everything up to a
// barrier written now, and leaves the applier parked at it.
func (r *runner) drain(ctx context.Context) error {
	b := &barrier{token: token(), reached: make(chan struct{}), release: make(chan struct{})}
	r.mu.Lock()
	r.barrier = b
	r.mu.Unlock()
	if err := r.eng.WriteMarker(ctx, markerBarrier, b.token); err != nil {
		return fmt.Errorf("writing the cut-over barrier: %w", err)
	}
	select {
	case <-b.reached:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the applier did not reach the barrier in time: %w", context.Cause(ctx))
	}
}

// release ends the swap attempt for a parked applier.
func (r *runner) release(swapped bool) {
	r.mu.Lock()
	b := r.barrier
	r.barrier = nil
	r.mu.Unlock()
	if b != nil {
		b.swapped = swapped
		close(b.release)
	}
}

func (r *runner) onMarker(ctx context.Context, m replication.Marker) error {
	switch m.Kind {
	case markerHeartbeat:
		if ns, err := strconv.ParseInt(m.Value, 10, 64); err == nil {
			r.lagNanos.Store(time.Now().UnixNano() - ns)
		}
	case markerSync:
		r.mu.Lock()
		if ch, ok := r.waiters[m.Value]; ok {
			close(ch)
			delete(r.waiters, m.Value)
		}
		r.mu.Unlock()
	case markerBarrier:
		r.mu.Lock()
		b := r.barrier
		r.mu.Unlock()
		if b == nil || b.token != m.Value {
			return nil // an attempt that already gave up
		}
		close(b.reached)
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.swapped {
			return errSwapped
		}
	}
	return nil
}

func (r *runner) heartbeat(ctx context.Context) {
	t := time.NewTicker(r.o.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := r.eng.WriteMarker(ctx, markerHeartbeat, strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil && ctx.Err() == nil {
				r.log.Warn("writing heartbeat", zap.Error(err))
			}
		}
	}
}

func (r *runner) snapshot() status.Snapshot {
	copied, applied := r.counters()
	done := r.copier != nil && r.copier.Done()
	s := r.track.Snapshot(time.Now(), r.state.Load().(string), copied, r.plan.RowEstimate, applied,
		r.applier.Backlog(), r.throttler.Current(), done)
	s.LagMillis = time.Duration(max(r.lagNanos.Load(), r.replicaLag.Load())).Milliseconds()
	return s
}

func (r *runner) report(ctx context.Context) {
	for {
		s := r.snapshot()
		interval := r.o.StatusInterval
		if interval == 0 {
			interval = status.NextReport(s.Elapsed, s.Percent)
		}
		r.log.Info(s.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}
