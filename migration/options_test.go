package migration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/osc-dev/osc/engine"
)

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitApplied},
		{&engine.Usage{Reason: "x"}, ExitUsage},
		{fmt.Errorf("wrapped: %w", &engine.Refusal{Reason: "x"}), ExitRefused},
		{errors.New("lock wait timeout"), ExitFailed},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// Invalid options and ALTERs are rejected before osc connects anywhere:
// the host below does not exist, so reaching it would fail differently.
func TestRunRejectsBadInputBeforeConnecting(t *testing.T) {
	base := Options{Host: "osc-test.invalid", Port: 3306, User: "u", Database: "d", Table: "t", Alter: "ADD COLUMN x INT"}
	for name, tc := range map[string]struct {
		mod  func(*Options)
		want string
	}{
		"missing table":  {func(o *Options) { o.Table = "" }, "--table"},
		"bad port":       {func(o *Options) { o.Port = 70000 }, "port"},
		"unknown driver": {func(o *Options) { o.Driver = "oracle" }, "driver"},
		"two statements": {func(o *Options) { o.Alter = "ADD COLUMN x INT; DROP TABLE t" }, "statement"},
		"table rename":   {func(o *Options) { o.Alter = "RENAME TO u" }, "RENAME"},
		"memory unit":    {func(o *Options) { o.MaintenanceWorkMem = "256" }, "--maintenance-work-mem"},
	} {
		o := base
		tc.mod(&o)
		res, err := Run(context.Background(), o)
		if ExitCode(err) != ExitUsage || res.ExitCode != ExitUsage {
			t.Errorf("%s: exit %d (%v), want %d", name, res.ExitCode, err, ExitUsage)
			continue
		}
		if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tc.want)) {
			t.Errorf("%s: error %q does not mention %q", name, err, tc.want)
		}
	}
}

func TestCopyWorkersDefault(t *testing.T) {
	for driver, want := range map[string]int{"mysql": 2, "postgres": 1} {
		o := Options{Driver: driver}
		o.defaults()
		if o.CopyWorkers != want {
			t.Errorf("%s: %d copy workers by default, want %d", driver, o.CopyWorkers, want)
		}
		o = Options{Driver: driver, CopyWorkers: 3}
		if o.defaults(); o.CopyWorkers != 3 {
			t.Errorf("%s: --copy-workers 3 became %d", driver, o.CopyWorkers)
		}
	}
}
