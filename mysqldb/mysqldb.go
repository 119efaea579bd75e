// Package mysqldb is osc's MySQL/MariaDB engine: every piece of MySQL SQL,
// introspection, binlog capture set-up and the cut-over algorithm live here,
// behind engine.Engine.
package mysqldb

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/replication/binlog"
)

// Config says where the table is and how to treat leftovers.
type Config struct {
	Host     string
	Port     int
	User     string
	Password string
	Database string
	Table    string
	// InitiallyDropShadow drops the shadow and changelog tables an earlier
	// run left behind; without it they make preflight refuse.
	InitiallyDropShadow bool
	// InitiallyDropOld drops an old table (_T_old) an earlier run kept.
	InitiallyDropOld bool
	// DryRun never drops an old table, whatever the flags say.
	DryRun bool
	// IndexesDuringCopy keeps the shadow's secondary indexes during the
	// copy instead of building them after it (see deferIndexes): slower,
	// but replicas never replay one long index build.
	IndexesDuringCopy bool
	Logger            *zap.Logger
}

// sessionSQLMode is strict so that the applier's UPDATEs fail rather than
// truncate, and allows zero dates so that rows the application stored under
// a permissive mode copy as they are. NO_AUTO_VALUE_ON_ZERO keeps id 0 as 0.
const sessionSQLMode = "'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'"

// Engine implements engine.Engine for MySQL and MariaDB.
type Engine struct {
	cfg Config
	log *zap.Logger
	// meta runs DDL, introspection, markers and the cut-over in utf8mb4.
	meta *sql.DB
	// data copies and applies rows. Its connection charset is binary so
	// that raw bytes from the binlog reach the server untranslated; each
	// string parameter is CONVERTed to its column's charset in the SQL.
	data *sql.DB

	flavor  string // "mariadb" or "mysql"
	version string

	names   names
	src     *table // source table, from Preflight
	shadow  *table // shadow table, from CreateShadow
	mapping []colPair
	key     *index // chunking key in the source
	// unfilled are the shadow\'s columns no source column maps to (lower case).
	unfilled      map[string]bool
	shadowKeyName string

	reader  *binlog.Reader
	runLock *sql.Conn // holds GET_LOCK for the table during the run
	// captureStarted is when the changelog began taking heartbeats.
	captureStarted time.Time
	replicasMu     sync.Mutex
	replicas       map[string]*sql.DB // control replicas, by host:port
	throttleDB     *sql.DB            // the throttle query's sessions
	// displaced are rows removed from the shadow on a transient unique key
	// conflict, to copy back (displace.go).
	displaced displacedSet
	uniques   []uniqueIndex // the shadow's other unique indexes
	deferred  []string      // index definitions FinishShadow adds to the shadow
	rows      *source       // key predicates and row-copy SQL, set with the plan
	// What this run created, so that cleanup never drops a leftover that
	// preflight refused to touch.
	createdShadow, createdChangelog bool
}

// names are deterministic so that a rerun finds what an earlier run left.
// swap is both the cut-over sentry and the name the original gets in the
// RENAME; it must sort after the table's name (it extends it), see Swap.
type names struct{ table, shadow, old, changelog, swap string }

func newNames(t string) names {
	return names{table: t, shadow: "_" + t + "_new", old: "_" + t + "_old", changelog: "_" + t + "_osc", swap: t + "_osc_swap"}
}

// New connects to the server. The password is only handed to the driver.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	e := &Engine{cfg: cfg, log: cfg.Logger, names: newNames(cfg.Table)}
	var err error
	if e.meta, err = open(cfg, "utf8mb4_general_ci"); err != nil {
		return nil, err
	}
	if e.data, err = open(cfg, "binary"); err != nil {
		e.meta.Close()
		return nil, err
	}
	if err := e.meta.QueryRowContext(ctx, "SELECT VERSION()").Scan(&e.version); err != nil {
		e.Close()
		return nil, fmt.Errorf("connecting to %s as %q: %w", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)), cfg.User, err)
	}
	e.flavor = "mysql"
	if strings.Contains(strings.ToLower(e.version), "mariadb") {
		e.flavor = "mariadb"
	}
	return e, nil
}

func open(cfg Config, collation string) (*sql.DB, error) {
	c := mysql.NewConfig()
	c.User = cfg.User
	c.Passwd = cfg.Password
	c.Net = "tcp"
	c.Addr = net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	// No default database: every statement names it, and an unknown one
	// must reach preflight's refusal rather than fail the connection.
	c.Collation = collation
	c.InterpolateParams = true
	c.Timeout = 10 * time.Second
	// max_error_count: SHOW WARNINGS lists every warning of a multi-row
	// statement or a copied chunk (the server keeps 64 by default), so
	// that expected duplicates on the chunking key cannot hide a lossy
	// conversion.
	c.Params = map[string]string{"time_zone": "'+00:00'", "sql_mode": sessionSQLMode, "max_error_count": "65535"}
	conn, err := mysql.NewConnector(c)
	if err != nil {
		return nil, fmt.Errorf("connection settings: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxIdleConns(8)
	db.SetConnMaxIdleTime(time.Minute)
	return db, nil
}

// Close releases connections and the binlog reader.
func (e *Engine) Close() error {
	if e.reader != nil {
		e.reader.Close()
		e.reader = nil
	}
	if e.runLock != nil {
		e.runLock.Close() // releases the named lock
	}
	for _, db := range e.replicas {
		db.Close()
	}
	if e.throttleDB != nil {
		e.throttleDB.Close()
	}
	e.data.Close()
	return e.meta.Close()
}

// execKillable runs a long statement on a connection of its own, killed on
// the server if ctx ends first (see killOnCancel): a running ALTER would
// otherwise hold its locks, and Cleanup's DROP would wait for it to finish.
func (e *Engine) execKillable(ctx context.Context, stmt string) error {
	c, err := e.meta.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	id, err := connID(ctx, c)
	if err != nil {
		return err
	}
	return e.killOnCancel(ctx, id, func(ctx context.Context) error {
		_, err := c.ExecContext(ctx, stmt)
		return err
	})
}

func connID(ctx context.Context, c *sql.Conn) (id int64, err error) {
	err = c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id)
	return id, err
}

// killOnCancel runs f, a statement on the connection with server id id,
// and if ctx ends first kills the statement on the server: the driver only
// closes the socket, which a running statement does not notice until it
// has finished.
func (e *Engine) killOnCancel(ctx context.Context, id int64, f func(context.Context) error) error {
	finished := make(chan struct{})
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		select {
		case <-ctx.Done():
			if _, err := e.meta.ExecContext(context.WithoutCancel(ctx), "KILL QUERY "+strconv.FormatInt(id, 10)); err != nil {
				e.log.Warn("killing a cancelled statement failed", zap.Int64("connection", id), zap.Error(err))
			}
		case <-finished:
		}
	}()
	err := f(context.WithoutCancel(ctx))
	close(finished)
	<-killed
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

func q(name string) string { return alter.QuoteIdent(name, alter.MySQL) }

// qt is a schema-qualified, quoted table name.
func (e *Engine) qt(name string) string { return q(e.cfg.Database) + "." + q(name) }
