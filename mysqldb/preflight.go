package mysqldb

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/osc-dev/osc/engine"
)

func refuse(format string, args ...any) error {
	return &engine.Refusal{Reason: fmt.Sprintf(format, args...)}
}

// Preflight refuses, before changing anything, what osc cannot run safely.
func (e *Engine) Preflight(ctx context.Context) error {
	n := e.names
	if len(n.swap) > 64 {
		return refuse("table name %q is too long: osc's helper table names (%s, %s) must fit in 64 characters", n.table, n.swap, n.old)
	}
	if err := e.checkServer(ctx); err != nil {
		return err
	}
	var dbs int
	if err := e.meta.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", e.cfg.Database).Scan(&dbs); err != nil {
		return fmt.Errorf("looking up database %s: %w", q(e.cfg.Database), err)
	}
	if dbs == 0 {
		return refuse("database %s does not exist", q(e.cfg.Database))
	}
	t, err := e.loadTable(ctx, n.table)
	if errors.Is(err, errNoTable) {
		return refuse("table %s does not exist", e.qt(n.table))
	}
	if err != nil {
		if strings.Contains(err.Error(), "not a base table") {
			return refuse("%v; osc changes base tables only", err)
		}
		return err
	}
	e.src = t
	var eng string
	if err := e.meta.QueryRowContext(ctx, "SELECT COALESCE(ENGINE, '') FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", e.cfg.Database, n.table).Scan(&eng); err != nil {
		return err
	}
	if !strings.EqualFold(eng, "InnoDB") {
		return refuse("table %s uses the %s engine; osc needs InnoDB's locking reads and transactions to copy without losing writes", e.qt(n.table), eng)
	}
	if len(t.usableKeys()) == 0 {
		return refuse("table %s has no PRIMARY KEY or UNIQUE key over NOT NULL columns; osc needs one to copy in chunks and to find rows when applying changes: add one first", e.qt(n.table))
	}
	if err := e.checkDependents(ctx); err != nil {
		return err
	}
	if err := e.checkPrivileges(ctx); err != nil {
		return err
	}
	if err := e.lockRun(ctx); err != nil {
		return err
	}
	return e.checkLeftovers(ctx)
}

func (e *Engine) checkServer(ctx context.Context) error {
	var logBin, format, image string
	if err := e.meta.QueryRowContext(ctx, "SELECT @@global.log_bin, @@global.binlog_format, @@global.binlog_row_image").Scan(&logBin, &format, &image); err != nil {
		return fmt.Errorf("reading binlog settings: %w", err)
	}
	if logBin != "1" {
		return refuse("the binary log is off on this server (log_bin=0); osc reads concurrent writes from it: start the server with --log-bin")
	}
	if !strings.EqualFold(format, "ROW") {
		return refuse("binlog_format is %s; osc needs ROW: SET GLOBAL binlog_format = 'ROW' (and reconnect the application) or set it in the server configuration", format)
	}
	if !strings.EqualFold(image, "FULL") {
		return refuse("binlog_row_image is %s; osc needs FULL row images: SET GLOBAL binlog_row_image = 'FULL'", image)
	}
	return nil
}

// checkDependents refuses tables with foreign keys or triggers: osc would
// have to recreate them on the shadow and re-point the children, which it
// does not do yet.
func (e *Engine) checkDependents(ctx context.Context) error {
	var fks int
	err := e.meta.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS
		WHERE (CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?) OR (UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?)`,
		e.cfg.Database, e.names.table, e.cfg.Database, e.names.table).Scan(&fks)
	if err != nil {
		return fmt.Errorf("reading foreign keys: %w", err)
	}
	if fks > 0 {
		return refuse("table %s has or is referenced by %d foreign key(s); osc does not migrate tables with foreign keys yet", e.qt(e.names.table), fks)
	}
	var trg int
	if err := e.meta.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ?",
		e.cfg.Database, e.names.table).Scan(&trg); err != nil {
		return fmt.Errorf("reading triggers: %w", err)
	}
	if trg > 0 {
		return refuse("table %s has %d trigger(s); osc does not migrate tables with triggers yet", e.qt(e.names.table), trg)
	}
	return nil
}

func (e *Engine) tableExists(ctx context.Context, name string) (bool, error) {
	var n int
	err := e.meta.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", e.cfg.Database, name).Scan(&n)
	return n > 0, err
}

// lockRun takes a named lock for the table, held by one connection for the
// whole run, so that two runs on the same table refuse instead of dropping
// each other's objects.
func (e *Engine) lockRun(ctx context.Context) error {
	c, err := e.meta.Conn(ctx)
	if err != nil {
		return err
	}
	var got sql.NullInt64
	// MySQL limits lock names to 64 characters.
	sum := sha256.Sum256([]byte(e.cfg.Database + "." + e.names.table))
	name := "osc:" + hex.EncodeToString(sum[:16])
	if err := c.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", name).Scan(&got); err != nil {
		c.Close()
		return fmt.Errorf("taking the run lock %q: %w", name, err)
	}
	if got.Int64 != 1 {
		c.Close()
		return refuse("another osc run is working on %s (it holds the lock %q); wait for it to finish, or stop it", e.qt(e.names.table), name)
	}
	e.runLock = c
	return nil
}

// leftover is a helper table an earlier run may have left, and the flag
// that allows dropping it.
type leftover struct {
	name, flag string
	allowed    bool
}

func (e *Engine) leftovers() []leftover {
	return []leftover{
		{e.names.shadow, "--initially-drop-shadow-table", e.cfg.InitiallyDropShadow},
		{e.names.changelog, "--initially-drop-shadow-table", e.cfg.InitiallyDropShadow},
		// Holds the original if a run died between the swap and the
		// rename to the old-table name.
		{e.names.swap, "--initially-drop-old-table", e.cfg.InitiallyDropOld},
		{e.names.old, "--initially-drop-old-table", e.cfg.InitiallyDropOld},
	}
}

func (e *Engine) checkLeftovers(ctx context.Context) error {
	for _, lo := range e.leftovers() {
		exists, err := e.tableExists(ctx, lo.name)
		if err != nil {
			return err
		}
		if exists && !lo.allowed {
			return refuse("table %s exists, probably left by an earlier run of osc; check it holds nothing you need, then rerun with %s to drop it", e.qt(lo.name), lo.flag)
		}
	}
	return nil
}

var grantRe = regexp.MustCompile(`^GRANT (.+?) ON (\S+) TO `)

// checkPrivileges reads the grants of the current user. Privileges that
// come through roles are not seen; such users get a refusal naming what
// looked missing.
func (e *Engine) checkPrivileges(ctx context.Context) error {
	rows, err := e.meta.QueryContext(ctx, "SHOW GRANTS")
	if err != nil {
		return fmt.Errorf("reading grants: %w", err)
	}
	defer rows.Close()
	global, db := map[string]bool{}, map[string]bool{}
	dbTarget := q(e.cfg.Database) + ".*"
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return err
		}
		m := grantRe.FindStringSubmatch(g)
		if m == nil {
			continue
		}
		var into map[string]bool
		switch m[2] {
		case "*.*":
			into = global
		case dbTarget:
			into = db
		default:
			continue
		}
		for _, p := range strings.Split(m[1], ",") {
			into[strings.ToUpper(strings.TrimSpace(p))] = true
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	has := func(p string, scopes ...map[string]bool) bool {
		for _, s := range scopes {
			if s[p] || s["ALL PRIVILEGES"] || s["ALL"] {
				return true
			}
		}
		return false
	}
	var missing []string
	for _, p := range []string{"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "LOCK TABLES"} {
		if !has(p, global, db) {
			missing = append(missing, p+" ON "+dbTarget)
		}
	}
	if !has("REPLICATION SLAVE", global) {
		missing = append(missing, "REPLICATION SLAVE ON *.*")
	}
	if !has("REPLICATION CLIENT", global) && !has("BINLOG MONITOR", global) && !has("SUPER", global) {
		missing = append(missing, "REPLICATION CLIENT (BINLOG MONITOR on MariaDB) ON *.*")
	}
	if len(missing) > 0 {
		return refuse("user is missing privileges: %s; grant them and rerun", strings.Join(missing, ", "))
	}
	return nil
}
