package migration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/control"
	"github.com/osc-dev/osc/status"
	"github.com/osc-dev/osc/throttle"
)

// ErrAborted is the cause of a run the operator aborted.
var ErrAborted = errors.New("aborted by the operator")

// settings are the limits an operator can change while the run goes on.
type settings struct {
	mu            sync.Mutex
	maxLag        time.Duration
	maxLoad       throttle.Limits
	criticalLoad  throttle.Limits
	throttleQuery string
}

func (s *settings) lagLimit() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxLag
}

func (s *settings) loadLimits() throttle.Limits {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxLoad
}

func (s *settings) criticalLimits() throttle.Limits {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.criticalLoad
}

func (s *settings) query() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttleQuery
}

// Throttle reasons the operator sets.
const (
	reasonOperator = "operator throttle"
	reasonPauseAll = "operator pause-all"
)

// setupThrottle registers every check the options ask for. Checks that
// query a server run at most every 100 ms.
func (r *runner) setupThrottle() {
	o := r.o
	r.throttler = throttle.New(100 * time.Millisecond)
	if o.ThrottleFlagFile != "" {
		r.throttler.AddCheck("flag-file", throttle.FlagFile(o.ThrottleFlagFile))
	}
	if len(o.ThrottleControlReplicas) > 0 {
		r.throttler.AddCheck("lag", throttle.Cached(100*time.Millisecond,
			throttle.Lag(o.ThrottleControlReplicas, r.settings.lagLimit, r.measureLag)))
	}
	r.throttler.AddCheck("load", throttle.Cached(100*time.Millisecond, throttle.Load(r.settings.loadLimits, r.eng.LoadValue)))
	r.throttler.AddCheck("query", throttle.Cached(100*time.Millisecond, throttle.Query(r.settings.query, r.eng.QueryValue)))
}

// measureLag measures a replica and keeps the highest lag for status.
func (r *runner) measureLag(ctx context.Context, replica string) (time.Duration, error) {
	d, err := r.eng.ReplicaLag(ctx, replica)
	if err == nil {
		r.replicaLag.Store(int64(d))
	}
	return d, err
}

// watchCriticalLoad aborts the run when a critical load limit is exceeded
// (and, with an interval, still exceeded after it): beyond it, going on
// would hurt the application more than stopping.
func (r *runner) watchCriticalLoad(ctx context.Context, abort func(error)) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		reason := r.settings.criticalLimits().Exceeded(ctx, r.readCritical)
		if reason == "" || ctx.Err() != nil {
			continue
		}
		if wait := r.o.CriticalLoadInterval; wait > 0 {
			r.log.Warn("critical load reached; checking again before aborting", zap.String("load", reason), zap.Duration("after", wait))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			if reason = r.settings.criticalLimits().Exceeded(ctx, r.readCritical); reason == "" {
				continue
			}
		}
		abort(fmt.Errorf("critical load reached (%s): osc stopped to protect the server", reason))
		return
	}
}

// readCritical reads a critical load variable. A value that cannot be read
// (a failed query) is not critical load: it is logged and counts as 0, so
// that only a value read above its limit aborts the run.
func (r *runner) readCritical(ctx context.Context, name string) (float64, error) {
	v, err := r.eng.LoadValue(ctx, name)
	if err != nil && ctx.Err() == nil {
		r.log.Warn("cannot read a critical load variable", zap.String("variable", name), zap.Error(err))
		return 0, nil
	}
	return v, err
}

// checkLoadNames reads every variable of l once, so that one the server
// does not know is refused when it is set rather than throttling forever
// (max-load) or never aborting (critical-load).
func (r *runner) checkLoadNames(ctx context.Context, l throttle.Limits) error {
	for name := range l {
		if _, err := r.eng.LoadValue(ctx, name); err != nil {
			return fmt.Errorf("cannot read %s: %w", name, err)
		}
	}
	return nil
}

// postponed reports whether the cut-over must wait: the flag file exists
// and no operator released it.
func (r *runner) postponed() bool {
	if r.unpostponed.Load() || r.o.PostponeCutOverFlagFile == "" {
		return false
	}
	_, err := os.Stat(r.o.PostponeCutOverFlagFile)
	return err == nil
}

// waitPostponed holds the run before verification and cut-over while the
// cut-over is postponed (the applier keeps the shadow current meanwhile)
// or the operator paused everything.
func (r *runner) waitPostponed(ctx context.Context) error {
	if !r.postponed() && !r.applier.Paused() {
		return nil
	}
	r.state.Store("postponing cut-over")
	r.log.Info("postponing cut-over: delete the flag file or send unpostpone (and resume-all, if paused)", zap.String("flag_file", r.o.PostponeCutOverFlagFile))
	for r.postponed() || r.applier.Paused() {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(500 * time.Millisecond):
		}
	}
	r.log.Info("cut-over released")
	return r.settle(ctx)
}

// serveControl starts the control socket.
func (r *runner) serveControl(abort func(error)) (func(), error) {
	if r.o.SocketFile == "" {
		return func() {}, nil
	}
	r.abort = abort
	srv, err := control.Listen(r.o.SocketFile, (*handler)(r), r.log.Named("control"))
	if err != nil {
		return nil, fmt.Errorf("starting the control socket: %w", err)
	}
	r.log.Info("control socket ready", zap.String("path", srv.Path()))
	return func() { srv.Close() }, nil
}

// handler is the runner as the control socket sees it.
type handler runner

func (h *handler) Status() status.Snapshot { return (*runner)(h).snapshot() }

func (h *handler) Get(name string) (string, error) {
	s := &h.settings
	s.mu.Lock()
	defer s.mu.Unlock()
	switch name {
	case control.SettingChunkSize:
		return strconv.Itoa(h.copier.ChunkSize()), nil
	case control.SettingChunkTime:
		return h.copier.ChunkTime().String(), nil
	case control.SettingMaxLagMillis:
		return strconv.FormatInt(s.maxLag.Milliseconds(), 10), nil
	case control.SettingMaxLoad:
		return s.maxLoad.String(), nil
	case control.SettingCriticalLoad:
		return s.criticalLoad.String(), nil
	case control.SettingThrottleQuery:
		return s.throttleQuery, nil
	}
	return "", fmt.Errorf("unknown setting %q", name)
}

func (h *handler) Set(name, value string) error {
	s := &h.settings
	switch name {
	case control.SettingChunkSize:
		n, err := strconv.Atoi(value)
		if err != nil || n < 1 {
			return fmt.Errorf("chunk-size must be a positive integer, not %q", value)
		}
		// As on the command line, a size the operator gives is kept:
		// adapting to a chunk time would undo it within a few chunks.
		h.copier.SetChunkTime(0)
		h.copier.SetChunkSize(n)
	case control.SettingChunkTime:
		d, err := time.ParseDuration(value)
		if err != nil || d < 0 {
			return fmt.Errorf("chunk-time must be a duration such as 500ms (0 keeps the chunk size fixed), not %q", value)
		}
		h.copier.SetChunkTime(d)
	case control.SettingMaxLagMillis:
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("max-lag-millis must be a non-negative integer, not %q", value)
		}
		s.mu.Lock()
		s.maxLag = time.Duration(n) * time.Millisecond
		s.mu.Unlock()
	case control.SettingMaxLoad, control.SettingCriticalLoad:
		l, err := throttle.ParseLimits(value)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := (*runner)(h).checkLoadNames(ctx, l); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		s.mu.Lock()
		if name == control.SettingMaxLoad {
			s.maxLoad = l
		} else {
			s.criticalLoad = l
		}
		s.mu.Unlock()
	case control.SettingThrottleQuery:
		s.mu.Lock()
		s.throttleQuery = value
		s.mu.Unlock()
	default:
		return fmt.Errorf("unknown setting %q", name)
	}
	h.log.Info("setting changed over the control socket", zap.String("setting", name), zap.String("value", value))
	return nil
}

func (h *handler) Do(action string) error {
	r := (*runner)(h)
	switch action {
	case control.ActionThrottle:
		r.throttler.Set(reasonOperator, true)
	case control.ActionNoThrottle:
		r.throttler.Set(reasonOperator, false)
	case control.ActionPauseAll:
		r.throttler.Set(reasonPauseAll, true)
		r.applier.Pause(true)
	case control.ActionResumeAll:
		r.throttler.Set(reasonPauseAll, false)
		r.applier.Pause(false)
	case control.ActionUnpostpone:
		r.unpostponed.Store(true)
	case control.ActionAbort:
		r.abort(ErrAborted)
	default:
		return fmt.Errorf("unknown action %q", action)
	}
	r.log.Info("operator action over the control socket", zap.String("action", action))
	return nil
}
