package pgdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/engine"
)

// Preflight checks the server, the privileges and the table, takes the
// run's advisory lock and sweeps what an earlier, killed run left behind.
// A reason to refuse is an *engine.Refusal; nothing is changed then.
func (e *Engine) Preflight(ctx context.Context) error {
	if err := e.checkServer(ctx); err != nil {
		return err
	}
	var exists bool
	if err := e.pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", e.cfg.Schema).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return &engine.Refusal{Reason: fmt.Sprintf("schema %s does not exist in database %q; check --schema and --database", q(e.cfg.Schema), e.cfg.Database)}
	}
	t, err := e.loadTable(ctx, e.pool, e.cfg.Table)
	if errors.Is(err, errNoTable) {
		return &engine.Refusal{Reason: fmt.Sprintf("table %s does not exist; check --schema, --table and --database", e.qt(e.cfg.Table))}
	}
	if err != nil {
		return err
	}
	if err := e.checkTable(ctx, t); err != nil {
		return err
	}
	e.src = t
	if e.srcDef, err = e.definitionSig(ctx, e.pool, t.oid); err != nil {
		return err
	}
	if err := e.checkPrivileges(ctx); err != nil {
		return err
	}
	deps, err := e.loadDependents(ctx)
	if err != nil {
		return err
	}
	if err := deps.refusal(); err != nil {
		return err
	}
	e.deps = deps
	if e.cfg.DryRun {
		return e.checkLeftovers(ctx, false)
	}
	if err := e.lockRun(ctx); err != nil {
		return err
	}
	return e.checkLeftovers(ctx, true)
}

func (e *Engine) checkServer(ctx context.Context) error {
	var version int
	var walLevel, maxSlots, used string
	err := e.pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('wal_level'),
		current_setting('max_replication_slots'), (SELECT count(*) FROM pg_replication_slots)::text`).Scan(&version, &walLevel, &maxSlots, &used)
	if err != nil {
		return fmt.Errorf("reading server settings: %w", err)
	}
	if version < 140000 {
		return &engine.Refusal{Reason: fmt.Sprintf("PostgreSQL %d.%d is too old: osc needs 14 or later (pgoutput messages)", version/10000, version%10000)}
	}
	if walLevel != "logical" {
		return &engine.Refusal{Reason: fmt.Sprintf("wal_level is %q, but osc reads concurrent writes through logical replication: set wal_level = logical and restart the server", walLevel)}
	}
	m, _ := strconv.Atoi(maxSlots)
	u, _ := strconv.Atoi(used)
	if u >= m {
		return &engine.Refusal{Reason: fmt.Sprintf("no free replication slot (%d of max_replication_slots = %d in use): drop an unused slot (see pg_replication_slots) or raise max_replication_slots", u, m)}
	}
	var senders, active int
	if err := e.pool.QueryRow(ctx, `SELECT current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)::int`).Scan(&senders, &active); err != nil {
		return fmt.Errorf("reading server settings: %w", err)
	}
	if active >= senders {
		return &engine.Refusal{Reason: fmt.Sprintf("no free WAL sender (%d of max_wal_senders = %d in use): raise max_wal_senders", active, senders)}
	}
	return nil
}

func (e *Engine) checkTable(ctx context.Context, t *table) error {
	name := e.qt(t.name)
	switch t.kind {
	case "r":
	case "p":
		return &engine.Refusal{Reason: name + " is a partitioned table; osc does not migrate partitioned tables yet (migrate each partition, or use ALTER TABLE on the parent)"}
	case "v":
		return &engine.Refusal{Reason: name + " is a view, not a table; ALTER the view's underlying table, or use CREATE OR REPLACE VIEW"}
	case "m":
		return &engine.Refusal{Reason: name + " is a materialized view; recreate it instead"}
	case "f":
		return &engine.Refusal{Reason: name + " is a foreign table; its data lives elsewhere"}
	default:
		return &engine.Refusal{Reason: fmt.Sprintf("%s is not an ordinary table (relkind %q)", name, t.kind)}
	}
	if t.isPartition {
		return &engine.Refusal{Reason: name + " is a partition of a partitioned table; osc does not migrate partitions yet"}
	}
	if t.persistence != "p" {
		return &engine.Refusal{Reason: name + " is an UNLOGGED or temporary table, which logical replication cannot stream"}
	}
	var inherits bool
	if err := e.pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = $1 OR inhparent = $1)", t.oid).Scan(&inherits); err != nil {
		return err
	}
	if inherits {
		return &engine.Refusal{Reason: name + " takes part in table inheritance; osc would lose the inheritance links"}
	}
	if _, why := t.chunkingKey(); why != "" {
		return &engine.Refusal{Reason: name + " cannot be migrated online: " + why}
	}
	return nil
}

// checkPrivileges refuses early what would fail later: the publication
// needs ownership of the table, the slot the REPLICATION attribute, the
// shadow CREATE on the schema.
func (e *Engine) checkPrivileges(ctx context.Context) error {
	var super, repl, owns, createSchema, createDB bool
	err := e.pool.QueryRow(ctx, `SELECT r.rolsuper, r.rolreplication,
			pg_has_role(current_user, c.relowner, 'USAGE'),
			has_schema_privilege(current_user, c.relnamespace, 'CREATE'),
			has_database_privilege(current_user, current_database(), 'CREATE')
		FROM pg_roles r, pg_class c WHERE r.rolname = current_user AND c.oid = $1`, e.src.oid).
		Scan(&super, &repl, &owns, &createSchema, &createDB)
	if err != nil {
		return fmt.Errorf("reading privileges: %w", err)
	}
	var missing []string
	if !super && !repl {
		missing = append(missing, "the REPLICATION attribute (ALTER ROLE ... REPLICATION), for the replication slot")
	}
	if !super && !owns {
		missing = append(missing, fmt.Sprintf("ownership of %s (it is owned by %q; osc must be that role or a member of it), for the publication and the rename", e.qt(e.src.name), e.src.owner))
	}
	if !super && !createSchema {
		missing = append(missing, fmt.Sprintf("CREATE on schema %s, for the shadow table", q(e.cfg.Schema)))
	}
	if !super && !createDB {
		missing = append(missing, fmt.Sprintf("CREATE on database %q, for the publication", e.cfg.Database))
	}
	if len(missing) > 0 {
		return &engine.Refusal{Reason: "the user lacks " + strings.Join(missing, "; ")}
	}
	return nil
}

// lockRun takes a session advisory lock for the table, held by a dedicated
// connection for the whole run: a second osc on the same table is refused,
// and what carries osc's names without the lock held is a leftover.
func (e *Engine) lockRun(ctx context.Context) error {
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	var got bool
	if err := c.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", "osc:"+e.cfg.Schema+"."+e.cfg.Table).Scan(&got); err != nil {
		c.Close(ctx)
		return fmt.Errorf("taking the run's advisory lock: %w", err)
	}
	if !got {
		c.Close(ctx)
		return &engine.Refusal{Reason: fmt.Sprintf("another osc run is migrating %s right now (it holds the advisory lock)", e.qt(e.cfg.Table))}
	}
	e.runLock = c
	return nil
}

// shadowComment marks a shadow table as osc's, so that a rerun may sweep it.
func (e *Engine) shadowComment() string {
	return "osc shadow table of " + e.qt(e.cfg.Table) + "; dropped by osc when its run ends, safe to drop when no osc run is active"
}

// checkLeftovers sweeps osc's own leftovers of a killed run (publication,
// slot, a shadow carrying osc's comment) when sweep is set, and refuses
// tables in the way that osc cannot tell are its own.
func (e *Engine) checkLeftovers(ctx context.Context, sweep bool) error {
	if t, err := e.loadTable(ctx, e.pool, e.names.old); err == nil {
		if !e.cfg.InitiallyDropOld || !sweep {
			return &engine.Refusal{Reason: fmt.Sprintf("%s exists (the original kept by an earlier run?); drop it, or pass --initially-drop-old-table", e.qt(t.name))}
		}
		if _, err := e.pool.Exec(ctx, "DROP TABLE "+e.qt(t.name)); err != nil {
			return fmt.Errorf("dropping the old table %s: %w", e.qt(t.name), err)
		}
		e.log.Info("dropped the old table of an earlier run", zap.String("table", t.name))
	} else if !errors.Is(err, errNoTable) {
		return err
	}
	var comment string
	var isTable bool
	err := e.pool.QueryRow(ctx, `SELECT c.relkind = 'r', coalesce(obj_description(c.oid, 'pg_class'), '')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
		e.cfg.Schema, e.names.shadow).Scan(&isTable, &comment)
	switch {
	case err == nil:
		ours := isTable && comment == e.shadowComment()
		if !ours && !e.cfg.InitiallyDropShadow || !isTable {
			return &engine.Refusal{Reason: fmt.Sprintf("%s exists and is not osc's shadow table; drop or rename it, or pass --initially-drop-shadow-table", e.qt(e.names.shadow))}
		}
		if !sweep {
			break
		}
		if _, err := e.pool.Exec(ctx, "DROP TABLE "+e.qt(e.names.shadow)); err != nil {
			return fmt.Errorf("dropping the shadow table %s left by an earlier run: %w", e.qt(e.names.shadow), err)
		}
		e.log.Info("dropped the shadow table of an earlier run", zap.String("table", e.names.shadow))
	case !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	if sweep {
		return e.dropCapture(ctx, true)
	}
	return nil
}
