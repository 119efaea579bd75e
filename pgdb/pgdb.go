// Package pgdb is osc's PostgreSQL engine: every piece of PostgreSQL SQL,
// catalog introspection, the publication and slot behind the change
// stream, and the one-transaction cut-over live here, behind engine.Engine.
package pgdb

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/replication/pgoutput"
)

// Config says where the table is and how to treat leftovers.
type Config struct {
	Host     string
	Port     int
	User     string
	Password string // empty: PGPASSWORD or ~/.pgpass, as libpq does
	Database string
	Schema   string // default "public"
	Table    string
	// InitiallyDropShadow drops a shadow table of that name even when it
	// does not carry osc's comment (osc's own leftovers are always swept).
	InitiallyDropShadow bool
	// InitiallyDropOld drops an old table (_T_old) an earlier run kept.
	InitiallyDropOld bool
	DryRun           bool
	// MaxSlotWALBytes aborts the run when the slot retains more WAL than
	// this (the applier cannot keep up, or is stuck).
	MaxSlotWALBytes int64
	// MaintenanceWorkMem (e.g. "256MB"), if set, is the least
	// maintenance_work_mem the shadow's index builds run with.
	MaintenanceWorkMem string
	Logger             *zap.Logger
}

// Engine implements engine.Engine for PostgreSQL.
type Engine struct {
	cfg   Config
	log   *zap.Logger
	pool  *pgxpool.Pool // catalog, DDL, markers, copy and verification
	apply *pgx.Conn     // the applier's own connection
	// runLock holds the run's advisory lock for the whole run.
	runLock *pgx.Conn

	names   names
	src     *table // source table, from Preflight
	shadow  *table // shadow table, from CreateShadow
	clauses *alter.Clauses
	mapping []colPair // source → shadow columns that are copied
	key     []*column // chunking key (source columns)
	deps    *dependents
	// srcDef is the table's defaults, NOT NULLs and constraints as
	// preflight read them (see definitionSig).
	srcDef string

	deferred    []deferredIndex // shadow indexes built by FinishShadow
	deferredKey *deferredIndex  // the key's, built by EndCopy
	// batchUpdates: the shadow has no unique index or exclusion constraint
	// but the key's, so updates of distinct keys may share one statement
	// (see writer.updateRun).
	batchUpdates bool
	sql          *statements
	prepared     map[string]string // the applier's prepared statements by text

	// rowsPerBlock sizes the window a copy chunk's end is looked for in,
	// and copyFilenode is the table's file when the copy began (see
	// source.Max, source.Boundary and EndCopy).
	rowsPerBlock float64
	copyFilenode uint32

	reader *pgoutput.Reader
	// snap is the copy's snapshot: the slot's, held open by a transaction
	// of its own until the copy ends (see StartCapture and EndCopy).
	snap snapshot
	// marks are the markers' WAL positions, for standby lag.
	marks      marks
	replicasMu sync.Mutex
	replicas   map[string]*pgxpool.Pool // control replicas, by host:port
	// What this run created, so that cleanup never drops what preflight
	// refused to touch.
	createdShadow, createdPublication bool
}

// names are deterministic so that a rerun finds and sweeps what an earlier
// run left. Slot and publication names carry a hash of the table's
// qualified name, since identifiers are limited to 63 bytes.
type names struct {
	table, shadow, old string
	publication, slot  string
	markerPrefix       string
}

func newNames(schema, table string) names {
	h := fnv.New64a()
	h.Write([]byte(schema + "." + table))
	id := fmt.Sprintf("osc_%016x", h.Sum64())
	return names{
		table:        table,
		shadow:       derived(table, "_new"),
		old:          derived(table, "_old"),
		publication:  id,
		slot:         id,
		markerPrefix: id,
	}
}

// slotName is the replication slot's name. Unlike publications (and the
// run's advisory lock), slots are cluster-wide: the name also carries the
// database's, or runs on tables of the same name in two databases would
// take each other's slot (and the second one's sweep would end the first
// one's stream).
func slotName(database, schema, table string) string {
	h := fnv.New64a()
	h.Write([]byte(database + "\x00" + schema + "." + table))
	return fmt.Sprintf("osc_%016x", h.Sum64())
}

// derived returns "_<name><suffix>", shortened with a hash to fit in
// PostgreSQL's 63-byte identifiers.
func derived(name, suffix string) string {
	const max = 63
	s := "_" + name + suffix
	if len(s) <= max {
		return s
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	tail := fmt.Sprintf("_%08x%s", h.Sum32(), suffix)
	cut := max - len(tail) - 1
	for cut > 0 && !utf8Start(name[cut]) {
		cut--
	}
	return "_" + name[:cut] + tail
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// New connects to the server. The password only reaches the driver.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.Schema == "" {
		cfg.Schema = "public"
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, names: newNames(cfg.Schema, cfg.Table)}
	e.names.slot = slotName(cfg.Database, cfg.Schema, cfg.Table)
	pc, err := pgxpool.ParseConfig(e.connString())
	if err != nil {
		return nil, fmt.Errorf("connection settings: %w", redactErr(err, cfg.Password))
	}
	if cfg.Password != "" {
		pc.ConnConfig.Password = cfg.Password
	}
	pc.ConnConfig.RuntimeParams = sessionParams()
	// The pool serves up to 4 copy workers (--copy-workers), the chunk
	// boundaries, markers, the slot's WAL check and throttle queries at
	// once; the applier, the copy's snapshot and the run's lock have
	// connections of their own.
	pc.MaxConns = 10
	pc.MaxConnIdleTime = time.Minute
	if e.pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		return nil, e.connectErr(err)
	}
	if err := e.pool.Ping(ctx); err != nil {
		e.pool.Close()
		return nil, e.connectErr(err)
	}
	return e, nil
}

// sessionParams pin every osc session: an empty search_path makes the
// server qualify every name it prints (view and trigger definitions are
// replayed from that text), row_security=off makes a policy that would
// hide rows from the copy an error instead, and UTC keeps times exact.
// The replication connection gets them too: the stream carries values as
// the walsender prints them, which the applier's session must read back
// exactly, whatever defaults the database or role set (DateStyle 'SQL,
// DMY' would swap days and months, IntervalStyle sql_standard flip signs,
// extra_float_digits 0 round floats).
func sessionParams() map[string]string {
	return map[string]string{
		"search_path":        "",
		"row_security":       "off",
		"TimeZone":           "UTC",
		"DateStyle":          "ISO, YMD",
		"IntervalStyle":      "postgres",
		"extra_float_digits": "3",
		"bytea_output":       "hex",
		"application_name":   "osc",
	}
}

func (e *Engine) connString() string {
	kv := func(k, v string) string {
		return k + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
	}
	parts := []string{kv("host", e.cfg.Host), kv("port", strconv.Itoa(e.cfg.Port)), kv("dbname", e.cfg.Database), "connect_timeout=10"}
	if e.cfg.User != "" {
		parts = append(parts, kv("user", e.cfg.User))
	}
	return strings.Join(parts, " ")
}

// replicationConnString is connString with the password (the reader makes
// its own connection) and osc's session settings, which fix how the
// walsender prints values; it never reaches a log.
func (e *Engine) replicationConnString() string {
	s := e.connString()
	if e.cfg.Password != "" {
		s += " password='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(e.cfg.Password) + "'"
	}
	params := sessionParams()
	for _, k := range slices.Sorted(maps.Keys(params)) {
		s += " " + k + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(params[k]) + "'"
	}
	return s
}

func (e *Engine) connectErr(err error) error {
	return fmt.Errorf("connecting to %s as %q, database %q: %w", net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.Port)),
		e.cfg.User, e.cfg.Database, redactErr(err, e.cfg.Password))
}

// redactErr keeps a password out of an error's text.
func redactErr(err error, password string) error {
	if err == nil || password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), password, "********"))
}

// connect opens a dedicated connection with osc's session settings.
func (e *Engine) connect(ctx context.Context) (*pgx.Conn, error) {
	cc := e.pool.Config().ConnConfig.Copy()
	c, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, e.connectErr(err)
	}
	return c, nil
}

// Close releases connections and the change stream.
func (e *Engine) Close() error {
	if e.reader != nil {
		e.reader.Close()
		e.reader = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.snap.release(ctx)
	for _, c := range []*pgx.Conn{e.apply, e.runLock} {
		if c != nil {
			c.Close(ctx)
		}
	}
	for _, p := range e.replicas {
		p.Close()
	}
	e.pool.Close()
	return nil
}

func q(name string) string { return alter.QuoteIdent(name, alter.Postgres) }

// qt is a schema-qualified, quoted relation name.
func (e *Engine) qt(name string) string { return q(e.cfg.Schema) + "." + q(name) }

// lit quotes a string literal (standard_conforming_strings is on since 9.1).
func lit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
