// Package status computes progress, rate and ETA of a run and decides when
// to report: often at the start and near the end, rarely in between.
package status

import (
	"fmt"
	"time"
)

// Snapshot is the state of a run at one moment.
type Snapshot struct {
	State         string        `json:"state"`
	RowsCopied    int64         `json:"rows_copied"`
	RowsEstimate  int64         `json:"rows_estimate"`
	Percent       float64       `json:"percent"`
	RowsPerSecond float64       `json:"rows_per_second"`
	ETA           string        `json:"eta"`
	EventsApplied int64         `json:"events_applied"`
	Backlog       int64         `json:"backlog"`
	LagMillis     int64         `json:"lag_millis"` // delay of the change stream, from heartbeats
	Throttle      string        `json:"throttle,omitempty"`
	Elapsed       time.Duration `json:"elapsed_ns"`
}

// Tracker turns counters into snapshots.
type Tracker struct {
	start time.Time
}

// NewTracker starts the clock.
func NewTracker(start time.Time) *Tracker { return &Tracker{start: start} }

// Snapshot computes percent, rate and ETA from the raw counters.
func (t *Tracker) Snapshot(now time.Time, state string, copied, estimate, applied, backlog int64, throttle string, copyDone bool) Snapshot {
	s := Snapshot{State: state, RowsCopied: copied, RowsEstimate: estimate, EventsApplied: applied,
		Backlog: backlog, Throttle: throttle, Elapsed: now.Sub(t.start)}
	// The estimate comes from table statistics and can be low.
	if estimate < copied {
		s.RowsEstimate = copied
		estimate = copied
	}
	switch {
	case copyDone:
		s.Percent = 100
	case estimate > 0:
		s.Percent = 100 * float64(copied) / float64(estimate)
	}
	if secs := s.Elapsed.Seconds(); secs > 0 {
		s.RowsPerSecond = float64(copied) / secs
	}
	switch {
	case copyDone:
		s.ETA = "due"
	case s.RowsPerSecond > 0:
		left := time.Duration(float64(estimate-copied) / s.RowsPerSecond * float64(time.Second))
		s.ETA = left.Round(time.Second).String()
	default:
		s.ETA = "unknown"
	}
	return s
}

// String is the status line.
func (s Snapshot) String() string {
	line := fmt.Sprintf("%s: copied %d/%d rows (%.1f%%), %.0f rows/s, ETA %s, events applied %d, backlog %d, lag %dms, elapsed %s",
		s.State, s.RowsCopied, s.RowsEstimate, s.Percent, s.RowsPerSecond, s.ETA, s.EventsApplied, s.Backlog,
		s.LagMillis, s.Elapsed.Round(time.Second))
	if s.Throttle != "" {
		line += ", throttled: " + s.Throttle
	}
	return line
}

// NextReport says how long to wait before the next status line: every
// second for the first 10 s and past 95%, then every 5 s for the first
// minute, then every 30 s.
func NextReport(elapsed time.Duration, percent float64) time.Duration {
	switch {
	case elapsed < 10*time.Second || percent >= 95:
		return time.Second
	case elapsed < time.Minute:
		return 5 * time.Second
	}
	return 30 * time.Second
}
