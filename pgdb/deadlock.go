package pgdb

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// deadlockAttempts bounds how often a transaction chosen as a deadlock's
// victim is run again.
const deadlockAttempts = 5

// retryDeadlock runs f, and again when the server broke a deadlock by
// aborting f's transaction (40P01). The copy never meets the applier (it
// runs while the applier is held), but a verification repair and the
// applier write the same shadow rows in different orders (the repair in
// key order, the applier in the table's commit order), so each can wait
// for a row the other inserted and has not committed yet; and the
// applier's row locks on the table (copyKey) can meet the application's.
// f must be one transaction that the abort rolled back whole: running it
// again is then safe, and it goes through once the other side has
// committed.
func retryDeadlock(ctx context.Context, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		var pe *pgconn.PgError
		if err == nil || attempt == deadlockAttempts || !errors.As(err, &pe) || pe.Code != "40P01" {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
		}
	}
}
