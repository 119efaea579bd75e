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

// QueryValue runs the throttle query in a read-only transaction, in a
// session whose default database is the table's, so that the query may
// name tables unqualified (as with gh-ost).
func (e *Engine) QueryValue(ctx context.Context, query string) (float64, error) {
	db, err := e.throttleQueryDB()
	if err != nil {
		return 0, err
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "USE "+q(e.cfg.Database)); err != nil {
		return 0, err
	}
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
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

// throttleQueryDB is the throttle query's own pool: its sessions have the
// table's database as default (USE), which osc's other sessions must not
// have (see open), so they are kept apart.
func (e *Engine) throttleQueryDB() (*sql.DB, error) {
	e.replicasMu.Lock()
	defer e.replicasMu.Unlock()
	if e.throttleDB == nil {
		db, err := open(e.cfg, "utf8mb4_general_ci")
		if err != nil {
			return nil, err
		}
		db.SetMaxOpenConns(2)
		e.throttleDB = db
	}
	return e.throttleDB, nil
}

// ReplicaLag reads the newest heartbeat the replica has applied from the
// changelog table: the lag is its age. A replica without one yet lags since
// capture started. Heartbeats are written one after the other, so the
// newest is the last by id: found walking the primary key back from its
// end, not by scanning the changelog, which grows all along the run.
func (e *Engine) ReplicaLag(ctx context.Context, replica string) (time.Duration, error) {
	db, err := e.replicaDB(replica)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var ns sql.NullInt64
	err = db.QueryRowContext(ctx, "SELECT CAST(value AS SIGNED) FROM "+e.qt(e.names.changelog)+" WHERE kind = 'heartbeat' ORDER BY id DESC LIMIT 1").Scan(&ns)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
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
