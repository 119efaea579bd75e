package e2e

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestUniqueValuesMovingBetweenRows: positions in a list are unique, and
// the application keeps swapping them between rows and handing a deleted
// row's position to a new row. The copy reads rows newer than the applier
// has reached, so replaying an older owner of a position can collide with
// the newer one in the shadow; osc must neither abort nor lose a row. Each
// change goes to t and to ref in one transaction; afterwards they must be
// equal and verification must have had nothing to repair.
func TestUniqueValuesMovingBetweenRows(t *testing.T) {
	const rows = 20000
	e := newEnv(t)
	e.exec(`CREATE TABLE t (id INT NOT NULL PRIMARY KEY, pos INT NOT NULL, note VARCHAR(20) NOT NULL, UNIQUE KEY pos (pos)) ENGINE=InnoDB`)
	e.exec("INSERT INTO t SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_20000")
	e.exec("CREATE TABLE ref LIKE t")
	e.exec("ALTER TABLE ref ADD COLUMN extra INT NULL")
	e.exec("INSERT INTO ref (id, pos, note) SELECT id, pos, note FROM t")

	var nextID atomic.Int64
	nextID.Store(rows)
	var swaps, handOns, retries atomic.Int64
	var failMu sync.Mutex
	var failure error
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for ctx.Err() == nil {
				time.Sleep(5 * time.Millisecond) // ~600 moves/s in all: heavy, but within the applier's pace
				hand := rng.IntN(3) == 0
				err := moveUnique(ctx, e.db, rng, hand, &nextID)
				switch {
				case err == nil && hand:
					handOns.Add(1)
				case err == nil:
					swaps.Add(1)
				case errors.Is(err, errNoRow):
				case retryable(err):
					retries.Add(1)
				case ctx.Err() != nil:
					return
				default:
					failMu.Lock()
					failure = err
					failMu.Unlock()
					return
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	o := e.options("ADD COLUMN extra INT NULL")
	o.ChunkSize = 100 // a slow copy keeps the copy and the applier apart longer
	rctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	r := <-runAsync(rctx, o)
	t.Logf("run took %v", time.Since(began).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	stop()
	wg.Wait()
	t.Logf("swaps %d, positions handed on %d, writer retries %d; rows displaced and copied back: %s",
		swaps.Load(), handOns.Load(), retries.Load(), e.logs.matching("displaced"))
	if failure != nil {
		t.Fatalf("writer: %v", failure)
	}
	assertApplied(t, r.res, r.err)
	if swaps.Load() < 50 || handOns.Load() < 20 {
		t.Errorf("only %d swaps and %d hand-ons: too few to exercise the run", swaps.Load(), handOns.Load())
	}
	cols := []string{"id", "pos", "note", "extra"}
	e.assertSameChecksum("t", "ref", cols, []string{"id"})
	e.assertCleanedUp("ref")
}

var errNoRow = errors.New("row gone")

// moveUnique swaps the positions of two rows, or gives a row's position to
// a new row that replaces it, in t and ref within one transaction.
func moveUnique(ctx context.Context, db *sql.DB, rng *rand.Rand, handOn bool, nextID *atomic.Int64) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	pick := func() (id, pos int64, err error) {
		err = tx.QueryRowContext(ctx, "SELECT id, pos FROM t WHERE id >= ? ORDER BY id LIMIT 1 FOR UPDATE", 1+rng.Int64N(nextID.Load())).Scan(&id, &pos)
		if errors.Is(err, sql.ErrNoRows) {
			err = errNoRow
		}
		return id, pos, err
	}
	a, pa, err := pick()
	if err != nil {
		return err
	}
	var stmts []string
	var args [][]any
	if handOn {
		id := nextID.Add(1)
		stmts = []string{"DELETE FROM %s WHERE id = ?", "INSERT INTO %s (id, pos, note) VALUES (?, ?, ?)"}
		args = [][]any{{a}, {id, pa, "handed"}}
	} else {
		b, pb, err := pick()
		if err != nil {
			return err
		}
		if a == b {
			return errNoRow
		}
		// Through a free value, as an application must with a unique key.
		stmts = []string{"UPDATE %s SET pos = ? WHERE id = ?", "UPDATE %s SET pos = ? WHERE id = ?", "UPDATE %s SET pos = ?, note = 'swapped' WHERE id = ?"}
		args = [][]any{{-a, a}, {pa, b}, {pb, a}}
	}
	for _, table := range []string{"t", "ref"} {
		for i, s := range stmts {
			if _, err := tx.ExecContext(ctx, strings.Replace(s, "%s", table, 1), args[i]...); err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}
