package mysqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// LoadValue reads a global status variable, e.g. Threads_running.
func (e *Engine) LoadValue(ctx context.Context, name string) (float64, error) {
	var n, v string
	err := e.meta.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE ?", name).Scan(&n, &v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("unknown status variable %q", name)
	}
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(v, 64)
}

// QueryValue runs the throttle query in a read-only transaction.
func (e *Engine) QueryValue(ctx context.Context, query string) (float64, error) {
	tx, err := e.meta.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var v sql.NullFloat64
	if err := tx.QueryRowContext(ctx, query).Scan(&v); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, err
	}
	return v.Float64, nil
}

// ReplicaLag reads the newest heartbeat the replica has applied from the
// changelog table: the lag is its age. A replica without one yet lags since
// capture started.
func (e *Engine) ReplicaLag(ctx context.Context, replica string) (time.Duration, error) {
	db, err := e.replicaDB(replica)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var ns sql.NullInt64
	err = db.QueryRowContext(ctx, "SELECT MAX(CAST(value AS SIGNED)) FROM "+e.qt(e.names.changelog)+" WHERE kind = 'heartbeat'").Scan(&ns)
	if err != nil {
		return 0, err
	}
	if !ns.Valid {
		return time.Since(e.captureStarted), nil
	}
	return time.Since(time.Unix(0, ns.Int64)), nil
}

// replicaDB is a connection pool to a control replica, opened once.
func (e *Engine) replicaDB(replica string) (*sql.DB, error) {
	e.replicasMu.Lock()
	defer e.replicasMu.Unlock()
	if db, ok := e.replicas[replica]; ok {
		return db, nil
	}
	host, port, err := net.SplitHostPort(replica)
	if err != nil {
		return nil, fmt.Errorf("control replica %q: want host:port", replica)
	}
	cfg := e.cfg
	cfg.Host = host
	if cfg.Port, err = strconv.Atoi(port); err != nil {
		return nil, fmt.Errorf("control replica %q: bad port", replica)
	}
	db, err := open(cfg, "utf8mb4_general_ci")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(2)
	if e.replicas == nil {
		e.replicas = map[string]*sql.DB{}
	}
	e.replicas[replica] = db
	return db, nil
}
