// Package cutover retries the swap of the shadow table for the original.
// Each attempt holds locks for at most the lock timeout; a failed attempt
// leaves the original in place and unlocked, and the next one starts after
// a backoff with jitter so that osc never queues behind (and in front of)
// the application for long.
package cutover

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
)

// AttemptFunc makes one cut-over attempt with the given lock timeout.
type AttemptFunc func(ctx context.Context, lockTimeout time.Duration) error

// permanent marks an error another attempt cannot fix.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Permanent wraps an error that retrying cannot fix (the table's
// definition changed, a statement the server rejects): Run stops at it.
func Permanent(err error) error { return permanent{err} }

// Policy bounds the retries.
type Policy struct {
	What string // what is attempted, for logs: "cut-over"
	// LockTimeout is the longest lock wait of an attempt. The first attempt
	// waits StartLockTimeout (if set and shorter), and each failure doubles
	// it up to LockTimeout: a short first try costs the application least.
	LockTimeout, StartLockTimeout time.Duration
	MaxAttempts                   int
	// Backoff is the pause after the first failure; it doubles up to
	// MaxBackoff, with up to 50% jitter added.
	Backoff, MaxBackoff time.Duration
}

// Run calls attempt until it succeeds, ctx ends, or the attempts run out.
func Run(ctx context.Context, p Policy, log *zap.Logger, attempt AttemptFunc) error {
	if p.MaxAttempts < 1 {
		p.MaxAttempts = 1
	}
	backoff := p.Backoff
	timeout := p.LockTimeout
	if p.StartLockTimeout > 0 && p.StartLockTimeout < timeout {
		timeout = p.StartLockTimeout
	}
	var last error
	for i := 1; i <= p.MaxAttempts; i++ {
		start := time.Now()
		err := attempt(ctx, timeout)
		if err == nil {
			log.Info(p.What+" done", zap.Int("attempt", i), zap.Duration("took", time.Since(start)))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.As(err, new(permanent)) {
			return fmt.Errorf("%s failed: %w", p.What, err)
		}
		last = err
		if i == p.MaxAttempts {
			break
		}
		wait := backoff + time.Duration(rand.Int64N(int64(backoff)/2+1))
		log.Warn(p.What+" attempt failed; the original table is in place and unlocked, retrying",
			zap.Int("attempt", i), zap.Int("max_attempts", p.MaxAttempts), zap.Duration("retry_in", wait), zap.Error(err))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(2*backoff, p.MaxBackoff)
		timeout = min(2*timeout, p.LockTimeout)
	}
	return fmt.Errorf("%s failed after %d attempts, last: %w", p.What, p.MaxAttempts, last)
}
