// Package throttle decides whether the copy may proceed. It holds named
// reasons to wait (an operator pause, a flag file, and the checks that
// later sources register); the copier calls Wait before every chunk.
package throttle

import (
	"context"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Check reports a reason to throttle, or "" when there is none.
type Check func(ctx context.Context) string

// Throttler combines named checks with manually set reasons.
type Throttler struct {
	mu     sync.Mutex
	manual map[string]bool
	checks map[string]Check
	poll   time.Duration
	reason string // last reason seen, for status
}

// New returns a throttler that re-evaluates every poll while throttled.
func New(poll time.Duration) *Throttler {
	return &Throttler{manual: map[string]bool{}, checks: map[string]Check{}, poll: poll}
}

// Set turns a manual reason (e.g. "operator") on or off.
func (t *Throttler) Set(reason string, on bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if on {
		t.manual[reason] = true
	} else {
		delete(t.manual, reason)
	}
}

// AddCheck registers a named check evaluated before every chunk.
func (t *Throttler) AddCheck(name string, c Check) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.checks[name] = c
}

// FlagFile throttles while the file exists.
func FlagFile(path string) Check {
	return func(context.Context) string {
		if _, err := os.Stat(path); err == nil {
			return "flag file " + path + " exists"
		}
		return ""
	}
}

// Reason evaluates every check and returns the reasons to throttle joined,
// or "" when the copy may go on.
func (t *Throttler) Reason(ctx context.Context) string {
	t.mu.Lock()
	var reasons []string
	for r := range t.manual {
		reasons = append(reasons, r)
	}
	checks := make(map[string]Check, len(t.checks))
	for n, c := range t.checks {
		checks[n] = c
	}
	t.mu.Unlock()
	for _, c := range checks {
		if r := c(ctx); r != "" {
			reasons = append(reasons, r)
		}
	}
	sort.Strings(reasons)
	r := strings.Join(reasons, "; ")
	t.mu.Lock()
	t.reason = r
	t.mu.Unlock()
	return r
}

// Current is the reason found by the last evaluation.
func (t *Throttler) Current() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reason
}

// Wait blocks while there is a reason to throttle.
func (t *Throttler) Wait(ctx context.Context) error {
	for t.Reason(ctx) != "" {
		select {
		case <-time.After(t.poll):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return ctx.Err()
}
