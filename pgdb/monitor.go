package pgdb

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// LoadValue reads a load variable. PostgreSQL has no status variables:
// Threads_running (MySQL's name, so that one --max-load works for both)
// and active_backends are the client backends running a statement.
func (e *Engine) LoadValue(ctx context.Context, name string) (float64, error) {
	switch strings.ToLower(name) {
	case "threads_running", "active_backends":
		var n float64
		err := e.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n)
		return n, err
	}
	return 0, fmt.Errorf("unknown load variable %q (PostgreSQL knows Threads_running, alias active_backends: client backends running a statement)", name)
}

// QueryValue runs the throttle query in a read-only transaction, with the
// table's schema as search_path (osc's sessions have an empty one), so that
// the query may name tables unqualified.
func (e *Engine) QueryValue(ctx context.Context, query string) (float64, error) {
	var v *float64
	err := pgx.BeginTxFunc(ctx, e.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('search_path', $1, true)", q(e.cfg.Schema)); err != nil {
			return err
		}
		var s *string
		if err := tx.QueryRow(ctx, "SELECT ("+query+")::text").Scan(&s); err != nil && err != pgx.ErrNoRows {
			return err
		}
		if s != nil {
			f, err := strconv.ParseFloat(*s, 64)
			if err != nil {
				return fmt.Errorf("the throttle query returned %q, not a number", *s)
			}
			v = &f
		}
		return nil
	})
	if err != nil || v == nil {
		return 0, err
	}
	return *v, nil
}

// walMark is a marker's WAL position and when it was written.
type walMark struct {
	lsn uint64
	at  time.Time
}

// marks remembers recent markers' positions, to measure standby lag.
type marks struct {
	mu   sync.Mutex
	list []walMark
}

func (m *marks) add(lsn uint64, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.list = append(m.list, walMark{lsn, at})
	if len(m.list) > 4096 {
		m.list = append(m.list[:0], m.list[len(m.list)-2048:]...)
	}
}

// lag is the age of the oldest marker beyond replayed, or 0.
func (m *marks) lag(replayed uint64, now time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.list {
		if w.lsn > replayed {
			return now.Sub(w.at)
		}
	}
	return 0
}

// ReplicaLag compares the standby's replayed WAL position with the
// positions of the markers osc wrote: the lag is the age of the oldest
// marker the standby has not replayed yet.
func (e *Engine) ReplicaLag(ctx context.Context, replica string) (time.Duration, error) {
	pool, err := e.replicaPool(ctx, replica)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var lsn *string
	if err := pool.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn()::text").Scan(&lsn); err != nil {
		return 0, err
	}
	if lsn == nil {
		return 0, fmt.Errorf("%s is not a standby (pg_last_wal_replay_lsn() is NULL)", replica)
	}
	replayed, err := pglogrepl.ParseLSN(*lsn)
	if err != nil {
		return 0, err
	}
	return e.marks.lag(uint64(replayed), time.Now()), nil
}

// replicaPool connects to a control replica once.
func (e *Engine) replicaPool(ctx context.Context, replica string) (*pgxpool.Pool, error) {
	e.replicasMu.Lock()
	defer e.replicasMu.Unlock()
	if p, ok := e.replicas[replica]; ok {
		return p, nil
	}
	host, port, err := net.SplitHostPort(replica)
	if err != nil {
		return nil, fmt.Errorf("control replica %q: want host:port", replica)
	}
	pc := e.pool.Config().Copy()
	pc.ConnConfig.Host = host
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("control replica %q: bad port", replica)
	}
	pc.ConnConfig.Port = uint16(p)
	// sslmode=prefer keeps a plain-text fallback to the primary's address.
	for _, fb := range pc.ConnConfig.Fallbacks {
		fb.Host, fb.Port = host, uint16(p)
	}
	pc.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("control replica %s: %w", replica, redactErr(err, e.cfg.Password))
	}
	if e.replicas == nil {
		e.replicas = map[string]*pgxpool.Pool{}
	}
	e.replicas[replica] = pool
	return pool, nil
}
