package mysqldb

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/osc-dev/osc/replication"
	"github.com/osc-dev/osc/replication/binlog"
)

// StartCapture creates the changelog table and starts reading the binlog
// at the current position: every write committed after this point reaches
// the applier, so the copy that follows can never miss one.
func (e *Engine) StartCapture(ctx context.Context) (replication.Stream, error) {
	_, err := e.meta.ExecContext(ctx, "CREATE TABLE "+e.qt(e.names.changelog)+` (
		id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
		kind VARCHAR(32) NOT NULL,
		value VARCHAR(255) NOT NULL,
		created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
	) ENGINE=InnoDB COMMENT='osc changelog: markers read back from the binlog'`)
	if err != nil {
		return nil, fmt.Errorf("creating changelog table %s: %w", e.qt(e.names.changelog), err)
	}
	e.createdChangelog = true
	e.captureStarted = time.Now()
	pos, err := e.binlogPosition(ctx)
	if err != nil {
		return nil, err
	}
	r, err := binlog.Open(ctx, binlog.Config{
		Host: e.cfg.Host, Port: uint16(e.cfg.Port), User: e.cfg.User, Password: e.cfg.Password,
		Flavor: e.flavor,
		// A replica id unlikely to collide with real replicas.
		ServerID:  1<<30 + rand.Uint32N(1<<30),
		Schema:    e.cfg.Database,
		Table:     e.names.table,
		Columns:   e.src.binlogColumns(),
		Changelog: e.names.changelog,
		Start:     pos,
		Logger:    e.log.Named("binlog"),
	})
	if err != nil {
		return nil, fmt.Errorf("starting the binlog stream at %s:%d: %w", pos.File, pos.Pos, err)
	}
	e.reader = r
	return r, nil
}

func (e *Engine) binlogPosition(ctx context.Context) (binlog.Position, error) {
	var p binlog.Position
	stmt := "SHOW MASTER STATUS"
	rows, err := e.meta.QueryContext(ctx, stmt)
	if err != nil && e.flavor == "mysql" {
		stmt = "SHOW BINARY LOG STATUS" // MySQL 8.4 removed SHOW MASTER STATUS
		rows, err = e.meta.QueryContext(ctx, stmt)
	}
	if err != nil {
		return p, fmt.Errorf("reading the binlog position (%s): %w", stmt, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return p, fmt.Errorf("%s returned nothing: is the binary log enabled?", stmt)
	}
	dest := make([]any, len(cols))
	dest[0], dest[1] = &p.File, &p.Pos
	for i := 2; i < len(dest); i++ {
		dest[i] = new(any)
	}
	return p, rows.Scan(dest...)
}

// WriteMarker inserts a marker row into the changelog table.
func (e *Engine) WriteMarker(ctx context.Context, kind, value string) error {
	_, err := e.meta.ExecContext(ctx, "INSERT INTO "+e.qt(e.names.changelog)+" (kind, value) VALUES (?, ?)", kind, value)
	return err
}
