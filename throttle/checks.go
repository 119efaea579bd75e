package throttle

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits are load thresholds by status variable, e.g. Threads_running=25.
type Limits map[string]float64

// ParseLimits reads "name=value,name=value"; "" is no limit.
func ParseLimits(spec string) (Limits, error) {
	l := Limits{}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, val, ok := strings.Cut(part, "=")
		name = strings.TrimSpace(name)
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if !ok || name == "" || err != nil || v < 0 {
			return nil, fmt.Errorf("bad load limit %q: want name=number, e.g. Threads_running=25", part)
		}
		l[name] = v
	}
	return l, nil
}

func (l Limits) String() string {
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + "=" + strconv.FormatFloat(l[n], 'f', -1, 64)
	}
	return strings.Join(parts, ",")
}

// ReadFunc reads the current value of a load variable.
type ReadFunc func(ctx context.Context, name string) (float64, error)

// Exceeded returns the first limit the current values exceed, as a
// reason ("Threads_running=31 > 25"), or "" when none is. A value that
// cannot be read counts as exceeded: osc fails closed.
func (l Limits) Exceeded(ctx context.Context, read ReadFunc) string {
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v, err := read(ctx, n)
		if err != nil {
			return fmt.Sprintf("cannot read %s: %v", n, err)
		}
		if v > l[n] {
			return fmt.Sprintf("%s=%s > %s", n, strconv.FormatFloat(v, 'f', -1, 64), strconv.FormatFloat(l[n], 'f', -1, 64))
		}
	}
	return ""
}

// Load throttles while a limit from limits() is exceeded.
func Load(limits func() Limits, read ReadFunc) Check {
	return func(ctx context.Context) string {
		if r := limits().Exceeded(ctx, read); r != "" {
			return "load: " + r
		}
		return ""
	}
}

// LagFunc measures the replication lag of one replica.
type LagFunc func(ctx context.Context, replica string) (time.Duration, error)

// Lag throttles while a replica lags more than max() (0 disables it). A
// replica whose lag cannot be measured throttles too, and says why.
func Lag(replicas []string, max func() time.Duration, lag LagFunc) Check {
	return func(ctx context.Context) string {
		m := max()
		if m <= 0 {
			return ""
		}
		for _, r := range replicas {
			d, err := lag(ctx, r)
			if err != nil {
				return fmt.Sprintf("replica %s unreachable (%v)", r, err)
			}
			if d > m {
				return fmt.Sprintf("replica %s lags %dms > %dms", r, d.Milliseconds(), m.Milliseconds())
			}
		}
		return ""
	}
}

// QueryFunc runs the operator's throttle query and returns its value.
type QueryFunc func(ctx context.Context, query string) (float64, error)

// Query throttles while the query from query() returns more than 0 (or
// fails).
func Query(query func() string, run QueryFunc) Check {
	return func(ctx context.Context) string {
		q := query()
		if q == "" {
			return ""
		}
		v, err := run(ctx, q)
		if err != nil {
			return fmt.Sprintf("throttle query failed (%v)", err)
		}
		if v > 0 {
			return "throttle query returned " + strconv.FormatFloat(v, 'f', -1, 64)
		}
		return ""
	}
}

// Cached evaluates check at most once per interval, so that checks that
// query servers do not run before every small chunk.
func Cached(interval time.Duration, check Check) Check {
	var mu sync.Mutex
	var at time.Time
	var last string
	return func(ctx context.Context) string {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) >= interval {
			last, at = check(ctx), time.Now()
		}
		return last
	}
}
