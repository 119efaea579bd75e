package status

import (
	"strings"
	"testing"
	"time"
)

func TestSnapshot(t *testing.T) {
	start := time.Unix(1000, 0)
	tr := NewTracker(start)
	s := tr.Snapshot(start.Add(10*time.Second), "copying", 250, 1000, 7, 2, "", false)
	if s.Percent != 25 || s.RowsPerSecond != 25 || s.ETA != "30s" {
		t.Fatalf("percent %v rate %v eta %q; want 25, 25, 30s", s.Percent, s.RowsPerSecond, s.ETA)
	}
	// A low estimate never yields more than 100%.
	s = tr.Snapshot(start.Add(10*time.Second), "copying", 1500, 1000, 0, 0, "flag file x exists", false)
	if s.RowsEstimate != 1500 || s.Percent != 100 {
		t.Fatalf("estimate %d percent %v", s.RowsEstimate, s.Percent)
	}
	if !strings.Contains(s.String(), "throttled: flag file x exists") {
		t.Fatalf("status line lacks the throttle reason: %s", s)
	}
	s = tr.Snapshot(start.Add(time.Second), "cutting over", 10, 1000, 0, 0, "", true)
	if s.ETA != "due" || s.Percent != 100 {
		t.Fatalf("done copy: eta %q percent %v", s.ETA, s.Percent)
	}
	if s = tr.Snapshot(start, "starting", 0, 1000, 0, 0, "", false); s.ETA != "unknown" {
		t.Fatalf("no rate yet: eta %q", s.ETA)
	}
}

func TestNextReport(t *testing.T) {
	for _, tc := range []struct {
		elapsed time.Duration
		percent float64
		want    time.Duration
	}{
		{time.Second, 1, time.Second},
		{30 * time.Second, 10, 5 * time.Second},
		{10 * time.Minute, 50, 30 * time.Second},
		{10 * time.Minute, 97, time.Second},
	} {
		if got := NextReport(tc.elapsed, tc.percent); got != tc.want {
			t.Errorf("NextReport(%v, %v) = %v, want %v", tc.elapsed, tc.percent, got, tc.want)
		}
	}
}
