package harness

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	// The "pgx" database/sql driver.
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/osc-dev/osc/alter"
)

// Environment variables read by Postgres (written by servers.sh into DIR/env).
const (
	EnvPGHost        = "OSC_TEST_PG_HOST"
	EnvPGPort        = "OSC_TEST_PG_PORT"
	EnvPGStandbyPort = "OSC_TEST_PG_STANDBY_PORT"
	EnvPGUser        = "OSC_TEST_PG_USER"
	EnvPGPassword    = "OSC_TEST_PG_PASSWORD"
	EnvPGSocketDir   = "OSC_TEST_PG_SOCKET_DIR"
)

// PG describes the running PostgreSQL primary + standby.
//
// The primary runs with wal_level=logical, max_replication_slots=10 and
// max_wal_senders=10; the standby is a hot standby streaming from it. The
// user is a SUPERUSER with REPLICATION. For speed both run with fsync=off,
// synchronous_commit=off and full_page_writes=off.
type PG struct {
	Host           string
	Port           int // primary
	StandbyPort    int // hot standby streaming from the primary (0 if none)
	User, Password string
	SocketDir      string // primary's unix socket directory (may be empty for external servers)
	Dir            string // servers.sh directory, when this process started the servers

	pools *pools
}

// Postgres returns the shared PostgreSQL test servers. If OSC_TEST_PG_PORT is
// set it uses those (test.sh starts servers once for the whole suite);
// otherwise it uses the servers this test binary starts via servers.sh (the
// same start as MariaDB's, once per binary), which Main stops. It calls
// tb.Fatal (never Skip) when the servers are unavailable.
func Postgres(tb testing.TB) *PG {
	tb.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	return sharedPG.get(tb, "PostgreSQL", func() (*PG, error) {
		return setupServers("PostgreSQL", EnvPGPort, pgFromEnv, func(p *PG, dir string) { p.Dir = dir })
	})
}

func pgFromEnv(get func(string) string) (*PG, error) {
	p := &PG{
		Host:      get(EnvPGHost),
		User:      get(EnvPGUser),
		Password:  get(EnvPGPassword),
		SocketDir: get(EnvPGSocketDir),
		pools:     &pools{},
	}
	defaultLogin(&p.Host, &p.User, &p.Password)
	var err error
	if p.Port, err = envPort(get, EnvPGPort, true); err != nil {
		return nil, err
	}
	if p.StandbyPort, err = envPort(get, EnvPGStandbyPort, false); err != nil {
		return nil, err
	}
	return p, nil
}

// DSN returns a pgx (libpq URL) DSN for the primary over TCP:
// postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=disable, every part
// URL-escaped. An empty database means "postgres".
func (p *PG) DSN(database string) string {
	return p.dsn(p.Port, database, "")
}

// StandbyDSN is DSN for the standby.
func (p *PG) StandbyDSN(database string) string {
	return p.dsn(p.StandbyPort, database, "")
}

// dsn builds a DSN; extra is more query parameters ("k=v&..."), already escaped.
func (p *PG) dsn(port int, database, extra string) string {
	if database == "" {
		database = "postgres"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(p.User, p.Password),
		Host:     net.JoinHostPort(p.Host, strconv.Itoa(port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	if extra != "" {
		u.RawQuery += "&" + extra
	}
	return u.String()
}

// Open opens the primary with database/sql (driver "pgx", from
// github.com/jackc/pgx/v5/stdlib; database "" means "postgres"), pings it,
// and closes it at tb.Cleanup.
func (p *PG) Open(tb testing.TB, database string) *sql.DB {
	tb.Helper()
	return openDriver(tb, "pgx", p.DSN(database), p.where(p.Port, database))
}

// OpenStandby is Open for the (read-only) standby.
func (p *PG) OpenStandby(tb testing.TB, database string) *sql.DB {
	tb.Helper()
	if p.StandbyPort == 0 {
		tb.Fatalf("harness: no PostgreSQL standby configured (%s not set)", EnvPGStandbyPort)
	}
	return openDriver(tb, "pgx", p.StandbyDSN(database), p.where(p.StandbyPort, database))
}

func (p *PG) where(port int, database string) string {
	if database == "" {
		database = "postgres"
	}
	return "postgres " + net.JoinHostPort(p.Host, strconv.Itoa(port)) + "/" + database
}

// pool is one of the harness's pools to this server set; the primary's
// sessions run with synchronous_commit=on, see waitStandby.
func (p *PG) pool(standby bool) (*sql.DB, error) {
	if p.pools == nil {
		p.pools = &pools{}
	}
	return p.pools.get(standby, "pgx", func() (string, error) {
		if !standby {
			return p.dsn(p.Port, "postgres", "synchronous_commit=on&application_name=osc-harness"), nil
		}
		if p.StandbyPort == 0 {
			return "", fmt.Errorf("no PostgreSQL standby configured (%s not set)", EnvPGStandbyPort)
		}
		return p.dsn(p.StandbyPort, "postgres", "application_name=osc-harness"), nil
	})
}

func (p *PG) admin(tb testing.TB, standby bool) *sql.DB {
	tb.Helper()
	db, err := p.pool(standby)
	if err != nil {
		tb.Fatalf("harness: %v", err)
	}
	return db
}

func (p *PG) ping(timeout time.Duration) error {
	db, err := p.pool(false)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = db.PingContext(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// NewDatabase creates a fresh database on the primary, named by
// DatabaseName(tb.Name()) in lower case (so it needs no quoting), and returns
// its name and a *sql.DB for it. At tb.Cleanup it drops the logical
// replication slots of that database, then the database (WITH (FORCE)),
// unless OSC_TEST_KEEP_DB is set.
func (p *PG) NewDatabase(tb testing.TB) (string, *sql.DB) {
	tb.Helper()
	admin := p.admin(tb, false)
	name := strings.ToLower(DatabaseName(tb.Name()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+PGQuoteIdent(name)); err != nil {
		tb.Fatalf("harness: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if os.Getenv(EnvKeepDatabases) != "" {
			tb.Logf("harness: keeping database %s (%s is set)", name, EnvKeepDatabases)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := dropPGDatabase(ctx, admin, name); err != nil {
			tb.Logf("harness: drop database %s: %v", name, err)
		}
	})
	// Registered after the drop, so it is closed before the drop runs.
	db := p.Open(tb, name)
	return name, db
}

// dropPGDatabase drops the logical replication slots of database name (they
// would keep WAL forever, and DROP DATABASE refuses while there are any),
// ending the sessions that hold them, then the database itself.
func dropPGDatabase(ctx context.Context, admin *sql.DB, name string) error {
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend(active_pid)
			FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name); err != nil {
			return fmt.Errorf("ending the sessions using its replication slots: %v", err)
		}
		slots, err := queryStrings(ctx, admin, "SELECT slot_name FROM pg_replication_slots WHERE database = $1", name)
		if err != nil {
			return fmt.Errorf("listing its replication slots: %v", err)
		}
		if len(slots) == 0 {
			break
		}
		var lastErr error
		for _, slot := range slots {
			// Fails while the terminated session is still exiting: retried.
			if _, err := admin.ExecContext(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
				lastErr = err
			}
		}
		if lastErr == nil {
			continue // list again: nothing left, or created meanwhile
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dropping replication slots %v: %v", slots, lastErr)
		case <-time.After(delay):
		}
	}
	if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+PGQuoteIdent(name)+" WITH (FORCE)"); err != nil {
		return err
	}
	return nil
}

func queryStrings(ctx context.Context, db *sql.DB, query string, args ...any) ([]string, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// WaitStandby waits until the standby has replayed everything the primary
// has written so far (pg_current_wal_lsn on the primary vs
// pg_last_wal_replay_lsn on the standby) and fails tb after ReplicaTimeout.
func (p *PG) WaitStandby(tb testing.TB) {
	tb.Helper()
	if err := p.waitStandby(ReplicaTimeout); err != nil {
		tb.Fatalf("harness: WaitStandby: %v", err)
	}
}

// WaitStandbyTimeout is WaitStandby returning an error instead of failing a
// test, for tests that expect the standby to lag.
func (p *PG) WaitStandbyTimeout(timeout time.Duration) error {
	return p.waitStandby(timeout)
}

func (p *PG) waitStandby(timeout time.Duration) error {
	primary, err := p.pool(false)
	if err != nil {
		return err
	}
	standby, err := p.pool(true)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	query := func(db *sql.DB, dest any, q string, args ...any) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return db.QueryRowContext(ctx, q, args...).Scan(dest)
	}
	// The servers run with synchronous_commit=off: a commit that has returned
	// may not be written yet, so pg_current_wal_lsn() can be short of it (and
	// the walsender only sends flushed WAL). A commit of our own with
	// synchronous_commit=on (see PG.pool) flushes the WAL up to and past it,
	// if the transaction wrote WAL: a transactional logical message, which
	// only slots of the database "postgres" could ever see.
	var lsn string
	if err := query(primary, &lsn, "SELECT pg_logical_emit_message(true, 'osc-harness', 'WaitStandby')::text"); err != nil {
		return fmt.Errorf("flushing the primary's WAL: %v", err)
	}
	var target string
	if err := query(primary, &target, "SELECT pg_current_wal_lsn()::text"); err != nil {
		return fmt.Errorf("primary pg_current_wal_lsn: %v", err)
	}
	want, err := pglogrepl.ParseLSN(target)
	if err != nil {
		return err
	}
	for delay := time.Millisecond; ; delay = min(delay*2, 50*time.Millisecond) {
		var got sql.NullString
		if err := query(standby, &got, "SELECT pg_last_wal_replay_lsn()::text"); err != nil {
			return fmt.Errorf("standby pg_last_wal_replay_lsn (primary at %s): %v", target, err)
		}
		if !got.Valid {
			return fmt.Errorf("the standby is not in recovery (pg_last_wal_replay_lsn() is NULL)")
		}
		have, err := pglogrepl.ParseLSN(got.String)
		if err != nil {
			return err
		}
		if have >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("standby did not catch up within %v: primary at %s, standby replayed %s; %s",
				timeout, target, got.String, p.standbyState())
		}
		time.Sleep(delay)
	}
}

// standbyState summarizes the replication state for error messages.
func (p *PG) standbyState() string {
	var parts []string
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if db, err := p.pool(false); err == nil {
		var n int
		var states sql.NullString
		err := db.QueryRowContext(ctx, "SELECT count(*), string_agg(coalesce(state, '?'), ',') FROM pg_stat_replication").Scan(&n, &states)
		if err != nil {
			parts = append(parts, "primary pg_stat_replication: "+err.Error())
		} else {
			parts = append(parts, fmt.Sprintf("primary walsenders=%d states=%s", n, states.String))
		}
	}
	if db, err := p.pool(true); err == nil {
		var status sql.NullString
		err := db.QueryRowContext(ctx, "SELECT max(status) FROM pg_stat_wal_receiver").Scan(&status)
		if err != nil {
			parts = append(parts, "standby pg_stat_wal_receiver: "+err.Error())
		} else {
			parts = append(parts, "standby walreceiver="+status.String)
		}
	}
	return strings.Join(parts, " ")
}

// PGQuoteIdent double-quotes a PostgreSQL identifier.
func PGQuoteIdent(name string) string { return alter.QuoteIdent(name, alter.Postgres) }

// pgTable quotes "table" (in schema public) or "schema.table".
func pgTable(table string) string {
	schema, name, ok := strings.Cut(table, ".")
	if !ok {
		schema, name = "public", table
	}
	return PGQuoteIdent(schema) + "." + PGQuoteIdent(name)
}

// PGChecksumQuery returns the SQL that PGChecksum runs.
func PGChecksumQuery(table string, columns []string, key []string) string {
	cols := make([]string, len(columns))
	for i, c := range columns {
		cols[i] = PGQuoteIdent(c)
	}
	if len(key) == 0 {
		key = columns
	}
	order := make([]string, len(key))
	for i, k := range key {
		order[i] = PGQuoteIdent(k)
	}
	return fmt.Sprintf("SELECT count(*) || ':' || coalesce(md5(string_agg(md5(ROW(%s)::text), ',' ORDER BY %s)), '') FROM %s",
		strings.Join(cols, ", "), strings.Join(order, ", "), pgTable(table))
}

// PGChecksum returns a deterministic full-table checksum of table ("table" in
// schema public, or "schema.table") over the given columns, ordered by the
// given key columns (all columns if key is empty): "ROWS:MD5", the md5 of
// the md5s of every row's text form (which tells NULL from ”). Values are
// compared by their text in this session (bytea_output, TimeZone,
// extra_float_digits), so compare tables through one connection's settings.
func PGChecksum(tb testing.TB, db *sql.DB, table string, columns []string, key []string) string {
	tb.Helper()
	if len(columns) == 0 {
		tb.Fatalf("harness: PGChecksum(%s): no columns", table)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var sum string
	if err := db.QueryRowContext(ctx, PGChecksumQuery(table, columns, key)).Scan(&sum); err != nil {
		tb.Fatalf("harness: PGChecksum(%s): %v", table, err)
	}
	return sum
}

// PGColumns returns the column names of table ("table" in schema public, or
// "schema.table") in attnum order, without dropped columns.
func PGColumns(tb testing.TB, db *sql.DB, table string) []string {
	tb.Helper()
	cols := Strings(tb, db, `SELECT attname FROM pg_attribute
		WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, pgTable(table))
	if len(cols) == 0 {
		tb.Fatalf("harness: PGColumns(%s): table not found or has no columns", table)
	}
	return cols
}
