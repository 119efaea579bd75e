package cutover

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestRetriesUntilSuccess(t *testing.T) {
	calls := 0
	var starts []time.Time
	err := Run(context.Background(), Policy{LockTimeout: time.Second, MaxAttempts: 5, Backoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond},
		zap.NewNop(), func(_ context.Context, lt time.Duration) error {
			calls++
			starts = append(starts, time.Now())
			if lt != time.Second {
				t.Errorf("lock timeout %v", lt)
			}
			if calls < 3 {
				return errors.New("lock wait timeout exceeded")
			}
			return nil
		})
	if err != nil || calls != 3 {
		t.Fatalf("err %v after %d calls; want success on the 3rd", err, calls)
	}
	if gap := starts[1].Sub(starts[0]); gap < 10*time.Millisecond {
		t.Fatalf("retried after %v, want at least the backoff", gap)
	}
}

func TestGivesUpAfterMaxAttempts(t *testing.T) {
	calls := 0
	last := errors.New("lock wait timeout exceeded")
	err := Run(context.Background(), Policy{LockTimeout: time.Second, MaxAttempts: 3, Backoff: time.Millisecond, MaxBackoff: time.Millisecond},
		zap.NewNop(), func(context.Context, time.Duration) error { calls++; return last })
	if calls != 3 || !errors.Is(err, last) {
		t.Fatalf("calls %d, err %v; want 3 calls and the last error", calls, err)
	}
}

func TestStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := Run(ctx, Policy{LockTimeout: time.Second, MaxAttempts: 10, Backoff: time.Hour, MaxBackoff: time.Hour},
		zap.NewNop(), func(context.Context, time.Duration) error {
			calls++
			cancel()
			return errors.New("lock wait timeout exceeded")
		})
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Fatalf("err %v after %d calls; want cancellation after 1", err, calls)
	}
}

func TestLockTimeoutGrows(t *testing.T) {
	var got []time.Duration
	Run(context.Background(), Policy{LockTimeout: time.Second, StartLockTimeout: 300 * time.Millisecond, MaxAttempts: 4, Backoff: time.Millisecond, MaxBackoff: time.Millisecond},
		zap.NewNop(), func(_ context.Context, lt time.Duration) error { got = append(got, lt); return errors.New("timeout") })
	want := []time.Duration{300 * time.Millisecond, 600 * time.Millisecond, time.Second, time.Second}
	if len(got) != len(want) {
		t.Fatalf("attempts %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("lock timeouts %v, want %v", got, want)
		}
	}
}

func TestPermanentErrorsStop(t *testing.T) {
	calls := 0
	cause := errors.New("the table's definition changed")
	err := Run(context.Background(), Policy{LockTimeout: time.Second, MaxAttempts: 10, Backoff: time.Millisecond, MaxBackoff: time.Millisecond},
		zap.NewNop(), func(context.Context, time.Duration) error { calls++; return Permanent(cause) })
	if calls != 1 || !errors.Is(err, cause) {
		t.Fatalf("calls %d, err %v; want one attempt and the cause", calls, err)
	}
}
