package pgoutput

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap/zaptest"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/replication"
)

func TestMain(m *testing.M) {
	harness.Main(m)
}

// waitTimeout bounds every wait for the stream or the server.
const waitTimeout = 30 * time.Second

// fixture is a fresh database with one table published, and a reader on it.
type fixture struct {
	pg     *harness.PG
	dbName string
	db     *sql.DB
	table  string
	pub    string
	cfg    Config
	r      *Reader
}

// newFixture creates the table (ddl is what follows "CREATE TABLE t"),
// runs the extra statements (e.g. ALTER TABLE t REPLICA IDENTITY FULL) and
// the publication, reads the table's columns from the catalog like the
// engine does, and returns the fixture without a reader.
func newFixture(t *testing.T, ddl string, extra ...string) *fixture {
	t.Helper()
	pg := harness.Postgres(t)
	name, db := pg.NewDatabase(t)
	f := &fixture{pg: pg, dbName: name, db: db, table: "t", pub: "osc_pub"}
	f.exec(t, "CREATE TABLE t "+ddl)
	for _, q := range extra {
		f.exec(t, q)
	}
	f.exec(t, "CREATE PUBLICATION osc_pub FOR TABLE t")
	var oid uint32
	if err := db.QueryRow("SELECT 't'::regclass::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	cols := f.columns(t)
	f.cfg = Config{
		Conn:         pg.DSN(name),
		Slot:         slotFor(t),
		Publication:  f.pub,
		Relation:     oid,
		Columns:      cols,
		MarkerPrefix: "osc",
		Logger:       zaptest.NewLogger(t),
	}
	return f
}

func (f *fixture) columns(t *testing.T) []Column {
	t.Helper()
	rows, err := f.db.Query(`SELECT attname, atttypid FROM pg_attribute
		WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
		ORDER BY attnum`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var cols []Column
	for rows.Next() {
		var c Column
		if err := rows.Scan(&c.Name, &c.TypeOID); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return cols
}

func slotFor(t *testing.T) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "osc_test_" + hex.EncodeToString(b[:])
}

// start starts the reader with f.cfg and closes it at cleanup.
func (f *fixture) start(t *testing.T) *Reader {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	r, err := Start(ctx, f.cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	f.r = r
	return r
}

func (f *fixture) exec(t *testing.T, queries ...string) {
	t.Helper()
	for _, q := range queries {
		if _, err := f.db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// tx runs the statements in one transaction.
func (f *fixture) tx(t *testing.T, queries ...string) {
	t.Helper()
	tx, err := f.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for _, q := range queries {
		if _, err := tx.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) next(t *testing.T) replication.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ev, err := f.r.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return ev
}

// change is one expected event: a row change, a marker or a commit.
type change struct {
	op            replication.Op
	before, after []any
	marker        *replication.Marker
	commit        bool
}

func ins(after ...any) change  { return change{op: replication.Insert, after: after} }
func del(before ...any) change { return change{op: replication.Delete, before: before} }
func upd(before, after []any) change {
	return change{op: replication.Update, before: before, after: after}
}
func marker(kind, value string) change {
	return change{marker: &replication.Marker{Kind: kind, Value: value}}
}
func vals(v ...any) []any                  { return v }
func commit() change                       { return change{commit: true} }
func describe(ev replication.Event) string { return fmt.Sprintf("%+v", ev) }

// expect reads len(want) events and compares them; it returns the commits'
// Ack positions.
func (f *fixture) expect(t *testing.T, want ...change) []uint64 {
	t.Helper()
	var acks []uint64
	for i, w := range want {
		ev := f.next(t)
		switch {
		case w.commit:
			if !ev.Commit || ev.Marker != nil || ev.Changes != nil {
				t.Fatalf("event %d: want a commit, got %s", i, describe(ev))
			}
			if ev.Ack == 0 || ev.Pos != FormatLSN(ev.Ack) {
				t.Fatalf("event %d: commit with Ack %d Pos %q", i, ev.Ack, ev.Pos)
			}
			if len(acks) > 0 && ev.Ack <= acks[len(acks)-1] {
				t.Fatalf("event %d: commit Ack %s not after the previous one %s", i, ev.Pos, FormatLSN(acks[len(acks)-1]))
			}
			acks = append(acks, ev.Ack)
		case w.marker != nil:
			if ev.Marker == nil || *ev.Marker != *w.marker || ev.Commit || ev.Changes != nil {
				t.Fatalf("event %d: want marker %+v, got %s", i, *w.marker, describe(ev))
			}
		default:
			want := []replication.Change{{Op: w.op, Before: w.before, After: w.after}}
			if !reflect.DeepEqual(ev.Changes, want) || ev.Commit || ev.Marker != nil {
				t.Fatalf("event %d:\n got  %s\n want %+v", i, describe(ev), want)
			}
		}
	}
	return acks
}

// expectError reads events until Next fails, then checks that the failure
// is final.
func (f *fixture) expectError(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for {
		ev, err := f.r.Next(ctx)
		if err == nil {
			t.Logf("event before the error: %s", describe(ev))
			continue
		}
		if ctx.Err() != nil {
			t.Fatalf("no error from the stream: %v", err)
		}
		if _, err2 := f.r.Next(ctx); err2 == nil || err2.Error() != err.Error() {
			t.Fatalf("the failure is not final: first %v, then %v", err, err2)
		}
		if !strings.Contains(err.Error(), "logical replication from slot "+f.cfg.Slot) {
			t.Errorf("error does not name the slot: %v", err)
		}
		return err
	}
}

var unch = replication.Unchanged{}

func TestIntegerKey(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY, name text, n numeric(10,2), flag bool, data bytea, doc jsonb)")
	f.start(t)
	f.tx(t,
		`INSERT INTO t VALUES (1, 'one', 1.5, true, '\x0102', '{"a": 1}')`,
		`INSERT INTO t VALUES (2, NULL, NULL, NULL, NULL, NULL)`)
	f.exec(t, `UPDATE t SET name = 'uno', n = NULL WHERE id = 1`)
	f.exec(t, `UPDATE t SET name = 'two' WHERE id = 2`)
	f.exec(t, `UPDATE t SET id = 3 WHERE id = 2`)
	f.exec(t, `DELETE FROM t WHERE id = 1`)
	f.expect(t,
		ins("1", "one", "1.50", "t", `\x0102`, `{"a": 1}`),
		ins("2", nil, nil, nil, nil, nil),
		commit(),
		upd(vals("1", unch, unch, unch, unch, unch), vals("1", "uno", nil, "t", `\x0102`, `{"a": 1}`)),
		commit(),
		upd(vals("2", unch, unch, unch, unch, unch), vals("2", "two", nil, nil, nil, nil)),
		commit(),
		// The key changed: the old key ('K' tuple) is sent.
		upd(vals("2", unch, unch, unch, unch, unch), vals("3", "two", nil, nil, nil, nil)),
		commit(),
		del("1", unch, unch, unch, unch, unch),
		commit(),
	)
}

func TestTextKey(t *testing.T) {
	f := newFixture(t, "(k text PRIMARY KEY, v int)")
	f.start(t)
	f.exec(t, `INSERT INTO t VALUES ('a b', 1), ('ü''"\', NULL)`)
	f.exec(t, `UPDATE t SET v = 2 WHERE k = 'a b'`)
	f.exec(t, `UPDATE t SET k = 'c' WHERE k = 'a b'`)
	f.exec(t, `DELETE FROM t WHERE k = 'ü''"\'`)
	f.expect(t,
		ins("a b", "1"), ins(`ü'"\`, nil), commit(),
		upd(vals("a b", unch), vals("a b", "2")), commit(),
		upd(vals("a b", unch), vals("c", "2")), commit(),
		del(`ü'"\`, unch), commit(),
	)
}

func TestCompositeKey(t *testing.T) {
	f := newFixture(t, "(a int, v text, b text, PRIMARY KEY (b, a))")
	f.start(t)
	f.exec(t, `INSERT INTO t VALUES (1, 'x', 'k')`)
	f.exec(t, `UPDATE t SET v = 'y'`)
	f.exec(t, `UPDATE t SET a = 2`) // one key column changes: the whole old key is sent
	f.exec(t, `DELETE FROM t`)
	f.expect(t,
		ins("1", "x", "k"), commit(),
		upd(vals("1", unch, "k"), vals("1", "y", "k")), commit(),
		upd(vals("1", unch, "k"), vals("2", "y", "k")), commit(),
		del("2", unch, "k"), commit(),
	)
}

// A large value stored out of line (TOAST) that an update leaves alone is
// not sent.
func TestToastedValue(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY, small text, big text)")
	f.start(t)
	// Random hex does not compress below the TOAST threshold.
	f.exec(t, `INSERT INTO t SELECT 1, 's', string_agg(md5(random()::text), '') FROM generate_series(1, 4000)`)
	var big string
	if err := f.db.QueryRow("SELECT big FROM t").Scan(&big); err != nil {
		t.Fatal(err)
	}
	if len(big) != 4000*32 {
		t.Fatalf("big is %d bytes", len(big))
	}
	f.exec(t, `UPDATE t SET small = 'changed'`)
	f.exec(t, `UPDATE t SET big = big || 'x'`)
	f.exec(t, `UPDATE t SET id = 2, small = NULL`) // key change with big unchanged
	f.expect(t,
		ins("1", "s", big), commit(),
		upd(vals("1", unch, unch), vals("1", "changed", unch)), commit(),
		upd(vals("1", unch, unch), vals("1", "changed", big+"x")), commit(),
		upd(vals("1", unch, unch), vals("2", nil, unch)), commit(),
	)
}

// REPLICA IDENTITY FULL: the whole old row comes as an 'O' tuple, where
// 'n' is NULL.
func TestReplicaIdentityFull(t *testing.T) {
	f := newFixture(t, "(id int, a text, b text)", "ALTER TABLE t REPLICA IDENTITY FULL")
	f.start(t)
	f.exec(t, `INSERT INTO t VALUES (1, NULL, 'b')`)
	f.exec(t, `UPDATE t SET a = 'a', b = NULL`)
	f.exec(t, `DELETE FROM t`)
	f.expect(t,
		ins("1", nil, "b"), commit(),
		upd(vals("1", nil, "b"), vals("1", "a", nil)), commit(),
		del("1", "a", nil), commit(),
	)
}

// A non-transactional marker emitted between two transactions arrives
// between their commits; transactional ones arrive in place; other
// prefixes are ignored.
func TestMarkers(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	f.start(t)
	f.exec(t, `INSERT INTO t VALUES (1)`)
	f.exec(t, `SELECT pg_logical_emit_message(false, 'osc', 'ready:shadow t_new')`)
	f.exec(t, `SELECT pg_logical_emit_message(false, 'other', 'ready:x')`)
	f.exec(t, `SELECT pg_logical_emit_message(false, 'osc2', 'ready:x')`)
	f.exec(t, `INSERT INTO t VALUES (2)`)
	f.tx(t,
		`INSERT INTO t VALUES (3)`,
		`SELECT pg_logical_emit_message(true, 'osc', 'fence:1')`,
		`INSERT INTO t VALUES (4)`)
	f.exec(t, `SELECT pg_logical_emit_message(false, 'osc', 'heartbeat:2024-01-02 03:04:05+00')`)
	f.expect(t,
		ins("1"), commit(),
		marker("ready", "shadow t_new"),
		ins("2"), commit(),
		ins("3"), marker("fence", "1"), ins("4"), commit(),
		marker("heartbeat", "2024-01-02 03:04:05+00"),
	)
}

// A non-transactional marker emitted while another transaction is open
// arrives before that transaction, which is sent at its commit.
func TestMarkerDuringTransaction(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	f.start(t)
	tx, err := f.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	f.exec(t, `SELECT pg_logical_emit_message(false, 'osc', 'fence:a')`)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	f.expect(t, marker("fence", "a"), ins("1"), commit())
}

func TestAddColumnFails(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY, v text)")
	f.start(t)
	f.exec(t, `INSERT INTO t VALUES (1, 'a')`)
	f.expect(t, ins("1", "a"), commit())
	f.exec(t, `ALTER TABLE t ADD COLUMN w int`)
	f.exec(t, `INSERT INTO t VALUES (2, 'b', 3)`)
	err := f.expectError(t)
	if !errors.Is(err, ErrTableChanged) || !strings.Contains(err.Error(), "must abort") {
		t.Fatalf("want ErrTableChanged, got %v", err)
	}
	t.Log(err)
}

func TestTruncateFails(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	f.start(t)
	f.exec(t, `INSERT INTO t VALUES (1)`)
	f.exec(t, `TRUNCATE t`)
	f.expect(t, ins("1"), commit())
	err := f.expectError(t)
	if !errors.Is(err, ErrTableChanged) || !strings.Contains(err.Error(), "TRUNCATE") {
		t.Fatalf("want ErrTableChanged for TRUNCATE, got %v", err)
	}
}

// The catalog read by the engine must match the stream's first Relation
// message.
func TestColumnsMismatchFails(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY, v text)")
	f.cfg.Columns[1].TypeOID = 1043 // varchar
	f.start(t)
	f.exec(t, `INSERT INTO t VALUES (1, 'a')`)
	err := f.expectError(t)
	if !errors.Is(err, ErrTableChanged) || !strings.Contains(err.Error(), `"v"`) {
		t.Fatalf("want ErrTableChanged naming v, got %v", err)
	}
}

// slot returns the slot's row in pg_replication_slots.
func (f *fixture) slot(t *testing.T) (found, temporary, active bool, confirmed uint64) {
	t.Helper()
	var lsn sql.NullString
	err := f.db.QueryRow(`SELECT temporary, active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`,
		f.cfg.Slot).Scan(&temporary, &active, &lsn)
	if errors.Is(err, sql.ErrNoRows) {
		return false, false, false, 0
	}
	if err != nil {
		t.Fatal(err)
	}
	if lsn.Valid {
		l, err := pglogrepl.ParseLSN(lsn.String)
		if err != nil {
			t.Fatal(err)
		}
		confirmed = uint64(l)
	}
	return true, temporary, active, confirmed
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAppliedAdvancesSlot(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	f.exec(t, "CREATE TABLE other (id int)")
	r := f.start(t)
	if found, temporary, active, _ := f.slot(t); !found || !temporary || !active {
		t.Fatalf("slot %s: found %v temporary %v active %v", f.cfg.Slot, found, temporary, active)
	}
	if r.ConsistentPoint() == 0 {
		t.Fatal("no consistent point")
	}
	f.exec(t, `INSERT INTO t VALUES (1)`)
	f.exec(t, `INSERT INTO t VALUES (2)`)
	acks := f.expect(t, ins("1"), commit(), ins("2"), commit())

	// Nothing applied: the slot is not confirmed past the first commit,
	// even after a few status updates.
	time.Sleep(2*ackInterval + 500*time.Millisecond)
	if _, _, _, c := f.slot(t); c >= acks[0] {
		t.Fatalf("confirmed_flush_lsn %s before anything was applied (first commit ends at %s)", FormatLSN(c), FormatLSN(acks[0]))
	}

	r.Applied(acks[0])
	waitFor(t, "confirmed_flush_lsn to reach the first commit", func() bool {
		_, _, _, c := f.slot(t)
		return c >= acks[0]
	})
	time.Sleep(2*ackInterval + 500*time.Millisecond)
	if _, _, _, c := f.slot(t); c >= acks[1] {
		t.Fatalf("confirmed_flush_lsn %s beyond what was applied (%s)", FormatLSN(c), FormatLSN(acks[0]))
	}
	r.Applied(acks[0] - 1) // never goes back
	r.Applied(acks[1])
	waitFor(t, "confirmed_flush_lsn to reach the second commit", func() bool {
		_, _, _, c := f.slot(t)
		return c >= acks[1]
	})

	// Everything is applied: WAL written for other tables is confirmed too,
	// from the server's keepalives, so an idle table retains no WAL.
	f.exec(t, `INSERT INTO other SELECT generate_series(1, 1000)`)
	var lsn string
	if err := f.db.QueryRow(`SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	walEnd, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "confirmed_flush_lsn to pass other tables' WAL at "+lsn, func() bool {
		_, _, _, c := f.slot(t)
		return c >= uint64(walEnd)
	})
}

// A consumer that does not read for longer than wal_sender_timeout must
// not lose its connection, whether the reader's queue has room (it keeps
// answering the server's keepalives) or is full (it stops reading and
// sends status updates on its own).
func TestSlowConsumer(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 20s")
	}
	f := newFixture(t, "(id int PRIMARY KEY)")
	// wal_sender_timeout is user-settable (PostgreSQL 12+): set it for this
	// replication connection only, not for the other tests sharing the server.
	f.cfg.Conn = withOptions(t, f.cfg.Conn, "-c wal_sender_timeout=2s")
	// TestWalSenderTimeoutIsEffective shows the setting takes effect.
	r := f.start(t)
	pid := walSenderPID(t, f)

	const rows = 3 * queueSize
	f.exec(t, `INSERT INTO t VALUES (0)`)
	f.exec(t, fmt.Sprintf(`INSERT INTO t SELECT generate_series(1, %d)`, rows))
	time.Sleep(15 * time.Second)
	if got := walSenderPID(t, f); got != pid {
		t.Fatalf("the walsender changed: %d, was %d", got, pid)
	}
	f.expect(t, ins("0"), commit())
	for i := 1; i <= rows; i++ {
		ev := f.next(t)
		if len(ev.Changes) != 1 || ev.Changes[0].After[0] != fmt.Sprint(i) {
			t.Fatalf("row %d: %s", i, describe(ev))
		}
	}
	acks := f.expect(t, commit())
	r.Applied(acks[0])

	// Queue not full: the reader keeps reading and answers keepalives.
	f.exec(t, `INSERT INTO t VALUES (-1)`)
	time.Sleep(5 * time.Second)
	if got := walSenderPID(t, f); got != pid {
		t.Fatalf("the walsender changed: %d, was %d", got, pid)
	}
	f.expect(t, ins("-1"), commit())
}

// TestWalSenderTimeoutIsEffective shows that the setting TestSlowConsumer
// relies on kills a replication connection that does not answer.
func TestWalSenderTimeoutIsEffective(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cfg, err := pgconn.ParseConfig(withOptions(t, f.cfg.Conn, "-c wal_sender_timeout=1s"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := pglogrepl.CreateReplicationSlot(ctx, conn, f.cfg.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, SnapshotAction: "NOEXPORT_SNAPSHOT"}); err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, conn, f.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'osc_pub'"}}); err != nil {
		t.Fatal(err)
	}
	// Never answer: the server ends the connection.
	waitFor(t, "the silent slot to be released", func() bool {
		found, _, active, _ := f.slot(t)
		return !found || !active
	})
}

func withOptions(t *testing.T, dsn, options string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("options", options)
	u.RawQuery = q.Encode()
	return u.String()
}

func walSenderPID(t *testing.T, f *fixture) int {
	t.Helper()
	var pid sql.NullInt64
	err := f.db.QueryRow(`SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, f.cfg.Slot).Scan(&pid)
	if errors.Is(err, sql.ErrNoRows) {
		t.Fatal("the temporary slot is gone: the server ended the replication connection")
	}
	if err != nil {
		t.Fatal(err)
	}
	if !pid.Valid {
		t.Fatal("the slot has no active walsender")
	}
	return int(pid.Int64)
}

func TestNextContext(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	r := f.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := r.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next: %v, want DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := r.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next: %v, want Canceled", err)
	}
	// The stream lives on.
	f.exec(t, `INSERT INTO t VALUES (1)`)
	f.expect(t, ins("1"), commit())
}

func TestCheck(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	var calls atomic.Int32
	limit := errors.New("slot retains 9 GB of WAL, more than --max-slot-wal")
	f.cfg.CheckEvery = 50 * time.Millisecond
	f.cfg.Check = func(ctx context.Context) error {
		if calls.Add(1) >= 5 {
			return limit
		}
		return nil
	}
	f.start(t)
	err := f.expectError(t)
	if !errors.Is(err, limit) {
		t.Fatalf("want the check's error, got %v", err)
	}
}

func TestCloseDropsSlot(t *testing.T) {
	f := newFixture(t, "(id int PRIMARY KEY)")
	r := f.start(t)
	if found, temporary, _, _ := f.slot(t); !found || !temporary {
		t.Fatalf("slot %s: found %v temporary %v", f.cfg.Slot, found, temporary)
	}
	f.exec(t, `INSERT INTO t VALUES (1)`)
	f.expect(t, ins("1"), commit())
	// Leave events queued: Close must not wait for them.
	f.exec(t, `INSERT INTO t SELECT generate_series(2, 10000)`)
	waitFor(t, "the reader to queue events", func() bool { return len(r.events) > 0 })
	done := make(chan error)
	go func() { done <- r.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the temporary slot to disappear", func() bool {
		found, _, _, _ := f.slot(t)
		return !found
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for {
		_, err := r.Next(ctx)
		if err == nil {
			continue // queued before Close
		}
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Next after Close: %v", err)
		}
		break
	}
}

func TestStartErrorsHidePassword(t *testing.T) {
	pg := harness.Postgres(t)
	const secret = "s3cr3t-Pa55"
	for _, conn := range []string{
		fmt.Sprintf("postgres://%s:%s@%s:%d/postgres?sslmode=disable", pg.User, secret, pg.Host, pg.Port),
		fmt.Sprintf("postgres://%s:%s@%s:%d/no_such_database?sslmode=disable", pg.User, secret, pg.Host, pg.Port),
		fmt.Sprintf("postgres://%s:%s@%s:%d/postgres?sslmode=nonsense", pg.User, secret, pg.Host, pg.Port),
		fmt.Sprintf("postgres://%s:%s@%s:%d/post gres?%%zz", pg.User, secret, pg.Host, pg.Port),
		fmt.Sprintf("host=%s port=%d user=%s password = '%s x' sslmode=disable", pg.Host, pg.Port, pg.User, secret),
		fmt.Sprintf("host=%s port=bad user=%s password=%s", pg.Host, pg.User, secret),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		r, err := Start(ctx, Config{Conn: conn, Slot: "osc_test_pw", Publication: "p", Relation: 1,
			Columns: []Column{{"id", 23}}, MarkerPrefix: "osc"})
		cancel()
		if err == nil {
			// A server that trusts TCP connections (the harness's does not).
			r.Close()
			t.Logf("Start succeeded: the server did not check the password")
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows the password: %v", err)
		}
		t.Log(err)
	}
}
