package throttle

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseLimits(t *testing.T) {
	l, err := ParseLimits(" Threads_running=25, Threads_connected = 100.5 ,")
	if err != nil || l["Threads_running"] != 25 || l["Threads_connected"] != 100.5 || len(l) != 2 {
		t.Fatalf("ParseLimits: %v %v", l, err)
	}
	if got := l.String(); got != "Threads_connected=100.5,Threads_running=25" {
		t.Errorf("String() = %q", got)
	}
	for _, bad := range []string{"Threads_running", "=3", "x=abc", "x=-1"} {
		if _, err := ParseLimits(bad); err == nil {
			t.Errorf("ParseLimits(%q) accepted", bad)
		}
	}
	if l, err := ParseLimits(""); err != nil || len(l) != 0 {
		t.Errorf("empty spec: %v %v", l, err)
	}
}

func TestLoadFailsClosed(t *testing.T) {
	vals := map[string]float64{"a": 5}
	read := func(_ context.Context, n string) (float64, error) {
		v, ok := vals[n]
		if !ok {
			return 0, errors.New("no such variable")
		}
		return v, nil
	}
	limits := Limits{"a": 10}
	check := Load(func() Limits { return limits }, read)
	ctx := context.Background()
	if r := check(ctx); r != "" {
		t.Fatalf("under the limit: %q", r)
	}
	vals["a"] = 11
	if r := check(ctx); !strings.Contains(r, "a=11 > 10") {
		t.Fatalf("over the limit: %q", r)
	}
	limits = Limits{"missing": 1}
	if r := check(ctx); !strings.Contains(r, "cannot read missing") {
		t.Fatalf("an unreadable variable must throttle: %q", r)
	}
}

func TestLag(t *testing.T) {
	lags := map[string]time.Duration{"r1": 10 * time.Millisecond, "r2": 2 * time.Second}
	lag := func(_ context.Context, r string) (time.Duration, error) {
		if d, ok := lags[r]; ok {
			return d, nil
		}
		return 0, errors.New("connection refused")
	}
	max := time.Second
	check := Lag([]string{"r1", "r2"}, func() time.Duration { return max }, lag)
	ctx := context.Background()
	if r := check(ctx); !strings.Contains(r, "replica r2 lags 2000ms > 1000ms") {
		t.Fatalf("lagging replica: %q", r)
	}
	max = 3 * time.Second
	if r := check(ctx); r != "" {
		t.Fatalf("within the limit: %q", r)
	}
	if r := Lag([]string{"gone"}, func() time.Duration { return max }, lag)(ctx); !strings.Contains(r, "unreachable") {
		t.Fatalf("an unreachable replica must throttle: %q", r)
	}
	max = 0
	if r := Lag([]string{"gone"}, func() time.Duration { return max }, lag)(ctx); r != "" {
		t.Fatalf("max 0 disables the check: %q", r)
	}
}

func TestQueryAndCache(t *testing.T) {
	val, calls := 0.0, 0
	run := func(context.Context, string) (float64, error) { calls++; return val, nil }
	q := "SELECT 1"
	check := Cached(time.Hour, Query(func() string { return q }, run))
	ctx := context.Background()
	if r := check(ctx); r != "" || calls != 1 {
		t.Fatalf("query returning 0: %q (%d calls)", r, calls)
	}
	val = 2
	if r := check(ctx); r != "" || calls != 1 {
		t.Fatalf("the cache must hold the last result within the interval: %q (%d calls)", r, calls)
	}
	if r := Query(func() string { return q }, run)(ctx); !strings.Contains(r, "returned 2") {
		t.Fatalf("query returning 2: %q", r)
	}
	q = ""
	if r := Query(func() string { return q }, run)(ctx); r != "" {
		t.Fatalf("no query, no throttle: %q", r)
	}
}
