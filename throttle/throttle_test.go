package throttle

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReasons(t *testing.T) {
	th := New(5 * time.Millisecond)
	ctx := context.Background()
	if r := th.Reason(ctx); r != "" {
		t.Fatalf("fresh throttler throttles: %q", r)
	}
	flag := filepath.Join(t.TempDir(), "throttle")
	th.AddCheck("flag", FlagFile(flag))
	th.Set("operator", true)
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := th.Reason(ctx)
	if !strings.Contains(r, "operator") || !strings.Contains(r, flag) || th.Current() != r {
		t.Fatalf("reason %q, current %q", r, th.Current())
	}
	th.Set("operator", false)
	os.Remove(flag)
	if r := th.Reason(ctx); r != "" {
		t.Fatalf("still throttled: %q", r)
	}
}

func TestWaitBlocksUntilReleased(t *testing.T) {
	th := New(5 * time.Millisecond)
	th.Set("operator", true)
	released := make(chan error)
	go func() { released <- th.Wait(context.Background()) }()
	select {
	case <-released:
		t.Fatal("Wait returned while throttled")
	case <-time.After(50 * time.Millisecond):
	}
	th.Set("operator", false)
	select {
	case err := <-released:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Second):
		t.Fatal("Wait did not return after release")
	}
	th.Set("operator", true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := th.Wait(ctx); err == nil {
		t.Fatal("Wait ignored cancellation")
	}
}
