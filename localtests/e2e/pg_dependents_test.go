package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/osc-dev/osc/localtests/harness"
	"github.com/osc-dev/osc/migration"
)

// The PostgreSQL cut-over swaps two tables by name, but much of what
// surrounds a table binds to it by OID: views, foreign keys in both
// directions, sequences (serial and identity), triggers, grants, the
// owner, RLS and its policies, comments, the replica identity and
// publication membership. DESIGN.md §2: the cut-over rebuilds all of it
// on the new table in the swap transaction. These tests check that it
// does, with writers (a superuser and an unprivileged application role)
// running through the cut-over, and that preflight refuses what it cannot
// rebuild without creating anything.

// Roles of the dependents tests (cluster-wide, so created idempotently).
const (
	depOwnerRole  = "dep_owner"  // owns the table: the new table must be owned by it too
	depReaderRole = "dep_reader" // SELECT only, limited by an RLS policy
	depWriterRole = "dep_writer" // SELECT, INSERT, UPDATE, DELETE and the sequences
	depPassword   = "dep-secret"
)

// depEnv is one dependents test's PostgreSQL database.
type depEnv struct {
	t    *testing.T
	pg   *harness.PG
	name string
	db   *sql.DB // superuser, default search_path
	logs *logBuffer
}

// depNewEnv gives the test a fresh database; with roles, it creates the
// test roles first (and drops them again after the database is dropped).
func depNewEnv(t *testing.T, roles bool) *depEnv {
	t.Helper()
	pg := harness.Postgres(t)
	if roles {
		depCreateRoles(t, pg)
	}
	name, db := pg.NewDatabase(t)
	return &depEnv{t: t, pg: pg, name: name, db: db, logs: newLogBuffer(t)}
}

func depCreateRoles(t *testing.T, pg *harness.PG) {
	t.Helper()
	admin := pg.Open(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, r := range []struct{ name, attrs string }{
		{depOwnerRole, "NOLOGIN"},
		{depReaderRole, "LOGIN PASSWORD " + depLit(depPassword)},
		{depWriterRole, "LOGIN PASSWORD " + depLit(depPassword)},
	} {
		stmt := fmt.Sprintf(`DO $$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s; END IF;
			ALTER ROLE %s %s;
		END $$`, depLit(r.name), harness.PGQuoteIdent(r.name), harness.PGQuoteIdent(r.name), r.attrs)
		if _, err := admin.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("creating role %s: %v", r.name, err)
		}
	}
	// Registered before the database's drop, so it runs after it: best
	// effort, a kept database (OSC_TEST_KEEP_DB) keeps the roles too.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, r := range []string{depWriterRole, depReaderRole, depOwnerRole} {
			if _, err := admin.ExecContext(ctx, "DROP ROLE IF EXISTS "+harness.PGQuoteIdent(r)); err != nil {
				t.Logf("dropping role %s: %v", r, err)
			}
		}
	})
}

func depLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// openAs opens the test database logged in as role (over TCP, with its
// password), as an application would.
func (d *depEnv) openAs(role string) *sql.DB {
	d.t.Helper()
	p := *d.pg
	p.User, p.Password = role, depPassword
	return p.Open(d.t, d.name)
}

func (d *depEnv) exec(query string, args ...any) {
	d.t.Helper()
	mustExec(d.t, d.db, query, args...)
}

// str returns the single value of a one-row, one-column query ("<NULL>"
// for NULL).
func (d *depEnv) str(query string, args ...any) string {
	d.t.Helper()
	return queryStringOn(d.t, d.db, query, args...)
}

// expect compares a one-value query with want.
func (d *depEnv) expect(what, query, want string, args ...any) {
	d.t.Helper()
	if got := d.str(query, args...); got != want {
		d.t.Errorf("%s: got %q, want %q\n(query: %s)", what, got, want, abbrev(query))
	}
}

// expectSQLState runs a statement that must fail with the given SQLSTATE.
func depExpectSQLState(t *testing.T, db execer, what, code, query string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := db.ExecContext(ctx, query, args...)
	var pe *pgconn.PgError
	switch {
	case err == nil:
		t.Errorf("%s: %s succeeded, want SQLSTATE %s", what, abbrev(query), code)
	case !errors.As(err, &pe) || pe.Code != code:
		t.Errorf("%s: %s failed with %v, want SQLSTATE %s", what, abbrev(query), err, code)
	}
}

func (d *depEnv) options(alter string) migration.Options {
	return migration.Options{
		Driver: "postgres", Host: d.pg.Host, Port: d.pg.Port, User: d.pg.User, Password: d.pg.Password,
		Database: d.name, Schema: "public", Table: "accounts", Alter: alter, Execute: true,
		Logger: d.logs.logger,
	}
}

// depSchema is the table and everything around it. Every statement runs
// as the superuser; the table is handed to dep_owner at the end.
var depSchema = []string{
	`CREATE TABLE parents (id int PRIMARY KEY, name text NOT NULL)`,
	`INSERT INTO parents SELECT g, 'parent ' || g FROM generate_series(1, 20) g`,
	`CREATE TABLE accounts (
		id serial PRIMARY KEY,
		seq_no bigint GENERATED ALWAYS AS IDENTITY (START WITH 1000 INCREMENT BY 5),
		parent_id int NOT NULL CONSTRAINT accounts_parent_fk REFERENCES parents (id),
		email text NOT NULL,
		region text NOT NULL,
		balance numeric(12, 2) NOT NULL DEFAULT 0,
		updated_at timestamptz NOT NULL DEFAULT now(),
		CONSTRAINT accounts_balance_nonneg CHECK (balance >= 0),
		CONSTRAINT accounts_email_uniq UNIQUE (email)
	)`,
	`CREATE INDEX accounts_by_region ON accounts (region, id)`,
	`CREATE TABLE account_audit (id bigserial PRIMARY KEY, account_id int NOT NULL, op text NOT NULL,
		at timestamptz NOT NULL DEFAULT clock_timestamp())`,
	`CREATE FUNCTION dep_touch() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$`,
	`CREATE FUNCTION dep_audit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN INSERT INTO public.account_audit (account_id, op) VALUES (NEW.id, TG_OP); RETURN NULL; END $$`,
	`CREATE FUNCTION dep_never() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'the disabled trigger accounts_never fired'; END $$`,
	`CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION dep_touch()`,
	`CREATE TRIGGER accounts_audit AFTER INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION dep_audit()`,
	`CREATE TRIGGER accounts_never BEFORE INSERT OR UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION dep_never()`,
	`ALTER TABLE accounts DISABLE TRIGGER accounts_never`,
	`INSERT INTO accounts (parent_id, email, region, balance)
		SELECT 1 + g % 20, 'user' || g || '@example.com', CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, g % 100
		FROM generate_series(1, 3000) g`,
	`CREATE TABLE account_notes (id serial PRIMARY KEY,
		account_id int NOT NULL CONSTRAINT account_notes_account_fk REFERENCES accounts (id) ON DELETE CASCADE,
		body text NOT NULL)`,
	`INSERT INTO account_notes (account_id, body) SELECT id, 'note ' || id FROM accounts WHERE id % 10 = 0`,
	`CREATE VIEW eu_accounts WITH (security_barrier) AS
		SELECT id, seq_no, email, region, balance FROM accounts WHERE region = 'eu'`,
	`CREATE VIEW eu_account_emails AS SELECT id, email FROM eu_accounts`,
	`COMMENT ON TABLE accounts IS 'customer accounts'`,
	`COMMENT ON COLUMN accounts.email IS 'login email, unique'`,
	`ALTER TABLE accounts REPLICA IDENTITY FULL`,
	`CREATE PUBLICATION dep_pub FOR TABLE accounts`,
	`ALTER TABLE accounts ENABLE ROW LEVEL SECURITY`,
	`CREATE POLICY accounts_reader_eu ON accounts FOR SELECT TO dep_reader USING (region = 'eu')`,
	`CREATE POLICY accounts_writer_all ON accounts FOR ALL TO dep_writer USING (true) WITH CHECK (balance < 1000000)`,
	`GRANT SELECT ON accounts, eu_accounts, eu_account_emails TO dep_reader`,
	`GRANT UPDATE (balance) ON accounts TO dep_reader`,
	`GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO dep_writer`,
	`GRANT USAGE ON SEQUENCE accounts_id_seq, accounts_seq_no_seq TO dep_writer`,
	`GRANT SELECT, INSERT, DELETE ON account_notes TO dep_writer`,
	`GRANT USAGE ON SEQUENCE account_notes_id_seq TO dep_writer`,
	`GRANT INSERT ON account_audit TO dep_writer`,
	`GRANT USAGE ON SEQUENCE account_audit_id_seq TO dep_writer`,
	`GRANT SELECT ON eu_accounts, eu_account_emails TO dep_writer`,
	`ALTER TABLE accounts OWNER TO dep_owner`,
}

// depCatalog are properties of public.accounts that the cut-over must
// carry over unchanged: read before the run (on the original) and after
// (by name, so on the new table).
var depCatalog = []struct{ what, query string }{
	{"owner", `SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.accounts'::regclass`},
	{"table comment", `SELECT obj_description('public.accounts'::regclass, 'pg_class')`},
	{"column comments", `SELECT string_agg(attname || ': ' || col_description(attrelid, attnum), '; ' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'public.accounts'::regclass AND attnum > 0 AND col_description(attrelid, attnum) IS NOT NULL`},
	{"replica identity, RLS", `SELECT relreplident::text || ' rls=' || relrowsecurity || ' force=' || relforcerowsecurity
		FROM pg_class WHERE oid = 'public.accounts'::regclass`},
	{"indexes", `SELECT string_agg(indexname || ': ' || indexdef, E'\n' ORDER BY indexname)
		FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'accounts'`},
	{"constraints", `SELECT string_agg(conname || ' ' || contype::text || ' validated=' || convalidated || ': ' || pg_get_constraintdef(oid), E'\n' ORDER BY conname)
		FROM pg_constraint WHERE conrelid = 'public.accounts'::regclass`},
	{"child foreign keys", `SELECT string_agg(conrelid::regclass::text || '.' || conname || ' validated=' || convalidated || ': ' || pg_get_constraintdef(oid), E'\n' ORDER BY conname)
		FROM pg_constraint WHERE confrelid = 'public.accounts'::regclass AND contype = 'f'`},
	{"triggers", `SELECT string_agg(tgname || ' enabled=' || tgenabled::text || ': ' || pg_get_triggerdef(oid), E'\n' ORDER BY tgname)
		FROM pg_trigger WHERE tgrelid = 'public.accounts'::regclass AND NOT tgisinternal`},
	{"policies", `SELECT string_agg(policyname || ' ' || permissive || ' ' || cmd || ' ' || roles::text || ' using ' || coalesce(qual, '-') || ' check ' || coalesce(with_check, '-'), E'\n' ORDER BY policyname)
		FROM pg_policies WHERE schemaname = 'public' AND tablename = 'accounts'`},
	{"table privileges", `SELECT string_agg(a.grantor::regrole::text || '>' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END || ':' || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END, ', ' ORDER BY 1)
		FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = 'public.accounts'::regclass`},
	{"column privileges", `SELECT string_agg(attname || ' ' || attacl::text, '; ' ORDER BY attname)
		FROM pg_attribute WHERE attrelid = 'public.accounts'::regclass AND attacl IS NOT NULL AND NOT attisdropped`},
	{"sequences", `SELECT string_agg(c || ': ' || s::text || ' owner=' || pg_get_userbyid(sc.relowner) || ' acl=' || coalesce(sc.relacl::text, '-') ||
			' increment=' || sq.seqincrement || ' start=' || sq.seqstart || ' cache=' || sq.seqcache, E'\n' ORDER BY c)
		FROM (VALUES ('id'), ('seq_no')) v(c), pg_get_serial_sequence('public.accounts', c) s
		JOIN pg_class sc ON sc.oid = s::regclass JOIN pg_sequence sq ON sq.seqrelid = sc.oid`},
	{"publications", `SELECT string_agg(pubname || ' ' || schemaname || '.' || tablename, ', ' ORDER BY 1) FROM pg_publication_tables WHERE pubname NOT LIKE 'osc\_%'`},
	{"views", `SELECT string_agg(c.relname || ' ' || coalesce(c.reloptions::text, '-') || ' ' || coalesce(c.relacl::text, '-') || ': ' || pg_get_viewdef(c.oid), E'\n' ORDER BY c.relname)
		FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'`},
}

func (d *depEnv) catalog() map[string]string {
	d.t.Helper()
	m := map[string]string{}
	for _, c := range depCatalog {
		m[c.what] = d.str(c.query)
	}
	return m
}

// depWriter is an application session writing to accounts: inserts and
// balance updates in autocommit, until stopped.
type depWriter struct {
	name   string
	db     *sql.DB
	maxID  *atomic.Int64 // highest id known to exist
	emails *atomic.Int64 // unique e-mail counter, shared by the writers
	ops    atomic.Int64
	mu     sync.Mutex
	errs   []string
	wg     sync.WaitGroup
}

func (w *depWriter) start(ctx context.Context, seed uint64) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		rng := rand.New(rand.NewPCG(seed, seed))
		for ctx.Err() == nil {
			var err error
			if rng.IntN(3) == 0 {
				var id int64
				n := w.emails.Add(1)
				region := []string{"eu", "us"}[rng.IntN(2)]
				err = w.db.QueryRowContext(ctx, `INSERT INTO accounts (parent_id, email, region, balance) VALUES ($1, $2, $3, $4) RETURNING id`,
					1+rng.IntN(20), fmt.Sprintf("%s-%d@example.com", w.name, n), region, rng.IntN(500)).Scan(&id)
				if err == nil {
					for cur := w.maxID.Load(); id > cur && !w.maxID.CompareAndSwap(cur, id); cur = w.maxID.Load() {
					}
				}
			} else {
				_, err = w.db.ExecContext(ctx, `UPDATE accounts SET balance = balance + 1 WHERE id = $1`, 1+rng.Int64N(w.maxID.Load()))
			}
			if err != nil {
				if ctx.Err() == nil {
					w.mu.Lock()
					w.errs = append(w.errs, err.Error())
					w.mu.Unlock()
				}
				continue
			}
			w.ops.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
}

func (w *depWriter) failures() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.errs...)
}

// TestDependentsSurvive runs an ALTER on a table with every kind of
// dependent object while two writers (a superuser and the unprivileged
// dep_writer, subject to grants and RLS) write through the cut-over, then
// checks each dependent on the new table, by catalog and by behavior.
func TestDependentsSurvive(t *testing.T) {
	d := depNewEnv(t, true)
	for _, s := range depSchema {
		d.exec(s)
	}
	before := d.catalog()
	oldOID := d.str(`SELECT 'public.accounts'::regclass::oid::text`)
	if got := before["owner"]; got != depOwnerRole {
		t.Fatalf("test setup: owner %q", got)
	}

	var maxID, emails atomic.Int64
	maxID.Store(3000)
	writers := []*depWriter{
		{name: "super", db: d.db, maxID: &maxID, emails: &emails},
		{name: "app", db: d.openAs(depWriterRole), maxID: &maxID, emails: &emails},
	}
	wctx, stopWriters := context.WithCancel(context.Background())
	defer stopWriters()
	for i, w := range writers {
		w.start(wctx, uint64(i+1))
	}
	time.Sleep(200 * time.Millisecond)

	o := d.options(`ADD COLUMN note text NOT NULL DEFAULT ''`)
	o.ChunkSize = 200
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	r := <-runAsync(ctx, o)
	took := time.Since(began)
	atCutOver := make([]int64, len(writers))
	for i, w := range writers {
		atCutOver[i] = w.ops.Load()
	}
	time.Sleep(300 * time.Millisecond) // the writers go on, on the new table
	stopWriters()
	for _, w := range writers {
		w.wg.Wait()
	}
	if r.err != nil {
		t.Fatalf("migration.Run failed (exit code %d) after %v: %v", migration.ExitCode(r.err), took, r.err)
	}
	if !r.res.Applied || r.res.OldTable != "_accounts_old" {
		t.Fatalf("result: applied %v, old table %q; want applied, _accounts_old", r.res.Applied, r.res.OldTable)
	}
	if r.res.VerifiedChunks == 0 || r.res.RepairedChunks != 0 {
		t.Errorf("verification compared %d chunks and repaired %d; want some compared and none repaired", r.res.VerifiedChunks, r.res.RepairedChunks)
	}
	for i, w := range writers {
		if errs := w.failures(); len(errs) > 0 {
			t.Errorf("writer %s: %d writes failed, first: %s", w.name, len(errs), errs[0])
		}
		if w.ops.Load() == atCutOver[i] {
			t.Errorf("writer %s wrote nothing after the cut-over", w.name)
		}
	}
	t.Logf("run took %v (copied %d rows, applied %d events); writes: super %d, app %d",
		took, r.res.RowsCopied, r.res.EventsApplied, writers[0].ops.Load(), writers[1].ops.Load())

	newOID := d.str(`SELECT 'public.accounts'::regclass::oid::text`)
	if newOID == oldOID {
		t.Fatalf("public.accounts still has the original's OID %s", oldOID)
	}
	d.expect("the original kept as _accounts_old", `SELECT 'public._accounts_old'::regclass::oid::text`, oldOID)
	d.expect("the new column", `SELECT count(*) FILTER (WHERE note = '') || '/' || count(*) FROM accounts`,
		d.str(`SELECT count(*) || '/' || count(*) FROM accounts`))

	// Everything in depCatalog, read by name, is as it was.
	after := d.catalog()
	for _, c := range depCatalog {
		if before[c.what] != after[c.what] {
			t.Errorf("%s changed by the migration:\nbefore: %s\nafter:  %s", c.what, before[c.what], after[c.what])
		}
	}

	// The rows: every original row is in the new table, unchanged but for
	// the balance (writers update it after the cut-over).
	d.expect("original rows missing from or different in the new table",
		`SELECT count(*) FROM _accounts_old o LEFT JOIN accounts a ON a.id = o.id
		WHERE a.id IS NULL OR (a.seq_no, a.parent_id, a.email, a.region) IS DISTINCT FROM (o.seq_no, o.parent_id, o.email, o.region)`, "0")
	d.expect("rows with a missing or doubled audit row (the AFTER INSERT trigger must fire exactly once per insert, before, during and after the cut-over)",
		`SELECT count(*) FROM accounts a WHERE (SELECT count(*) FROM account_audit u WHERE u.account_id = a.id AND u.op = 'INSERT') <> 1`, "0")
	d.expect("seq_no collisions", `SELECT count(*) - count(DISTINCT seq_no) FROM accounts`, "0")

	// Views: they depend on the new table, not the old one.
	for _, v := range []string{"eu_accounts", "eu_account_emails"} {
		d.expect("relations view "+v+" depends on",
			`SELECT string_agg(DISTINCT d.refobjid::regclass::text, ',') FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
			WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class = $1::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class`,
			map[string]string{"eu_accounts": "accounts", "eu_account_emails": "eu_accounts"}[v], "public."+v)
	}
	d.expect("views on _accounts_old", `SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
		WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = '_accounts_old'::regclass AND r.ev_class <> d.refobjid`, "0")

	// Foreign keys: the children's point at the new table, validated; the
	// table's own moved to the new table.
	d.expect("child FK: referenced table, validated, on delete",
		`SELECT confrelid::regclass::text || ' ' || convalidated || ' ' || confdeltype::text FROM pg_constraint WHERE conname = 'account_notes_account_fk'`,
		"accounts true c")
	d.expect("own FK: table, referenced table, validated",
		`SELECT conrelid::regclass::text || ' ' || confrelid::regclass::text || ' ' || convalidated FROM pg_constraint WHERE conname = 'accounts_parent_fk'`,
		"accounts parents true")
	d.expect("foreign keys left on _accounts_old", `SELECT count(*) FROM pg_constraint WHERE conrelid = '_accounts_old'::regclass AND contype = 'f'`, "0")

	// Sequences: owned by the new table, continuing past every row.
	for _, c := range []string{"id", "seq_no"} {
		d.expect("owner of the sequence of "+c,
			`SELECT string_agg(d.refobjid::regclass::text || ' ' || d.deptype::text, ',') FROM pg_depend d
			WHERE d.classid = 'pg_class'::regclass AND d.objid = pg_get_serial_sequence('public.accounts', $1)::regclass
			AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')`,
			map[string]string{"id": "accounts a", "seq_no": "accounts i"}[c], c)
	}
	maxBefore := d.str(`SELECT max(id) || ' ' || max(seq_no) FROM accounts`)
	var maxIDNow, maxSeqNow int64
	fmt.Sscan(maxBefore, &maxIDNow, &maxSeqNow)

	// As dep_writer, logged in: insert (serial and identity continue; the
	// AFTER INSERT trigger fires), currval of both sequences (needs their
	// privileges), through the views.
	app := d.openAs(depWriterRole)
	conn, err := app.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var id, seqNo int64
	if err := conn.QueryRowContext(ctx, `INSERT INTO accounts (parent_id, email, region) VALUES (3, 'after@example.com', 'eu') RETURNING id, seq_no`).Scan(&id, &seqNo); err != nil {
		t.Fatalf("inserting as %s after the cut-over: %v", depWriterRole, err)
	}
	if id <= maxIDNow || seqNo <= maxSeqNow {
		t.Errorf("after the cut-over an insert got id %d, seq_no %d; want both above every existing row's (%d, %d)", id, seqNo, maxIDNow, maxSeqNow)
	}
	for _, c := range []string{"id", "seq_no"} {
		var cur int64
		if err := conn.QueryRowContext(ctx, `SELECT currval(pg_get_serial_sequence('public.accounts', $1))`, c).Scan(&cur); err != nil {
			t.Errorf("currval of the sequence of %s as %s (granted USAGE on it before the migration): %v", c, depWriterRole, err)
		}
	}
	for _, v := range []string{"eu_accounts", "eu_account_emails"} {
		if got := queryStringOn(t, conn, "SELECT email FROM "+v+" WHERE id = $1", id); got != "after@example.com" {
			t.Errorf("row inserted after the cut-over, through view %s: %q", v, got)
		}
	}
	d.expect("audit rows of the row inserted after the cut-over", `SELECT count(*) FROM account_audit WHERE account_id = $1 AND op = 'INSERT'`, "1", id)

	// Triggers fire: BEFORE UPDATE sets updated_at.
	d.exec(`UPDATE accounts SET updated_at = '2000-01-01', balance = 5 WHERE id = $1`, id)
	d.expect("updated_at set by the BEFORE UPDATE trigger", `SELECT updated_at > '2001-01-01' FROM accounts WHERE id = $1`, "true", id)

	// The child FK is enforced and cascades; the table's own FK is enforced.
	depExpectSQLState(t, conn, "child FK", "23503", `INSERT INTO account_notes (account_id, body) VALUES (-1, 'orphan')`)
	if _, err := conn.ExecContext(ctx, `INSERT INTO account_notes (account_id, body) VALUES ($1, 'child')`, id); err != nil {
		t.Fatalf("inserting a child of the new row: %v", err)
	}
	if _, err := conn.ExecContext(ctx, `DELETE FROM accounts WHERE id = $1`, id); err != nil {
		t.Fatalf("deleting the new row as %s: %v", depWriterRole, err)
	}
	d.expect("children of the deleted row (ON DELETE CASCADE)", `SELECT count(*) FROM account_notes WHERE account_id = $1`, "0", id)
	depExpectSQLState(t, d.db, "own FK, insert", "23503", `INSERT INTO accounts (parent_id, email, region) VALUES (999, 'nobody@example.com', 'us')`)
	depExpectSQLState(t, d.db, "own FK, deleting a referenced parent", "23503", `DELETE FROM parents WHERE id = 1`)

	// Grants and RLS, as dep_reader.
	d.expect("dep_reader privileges",
		`SELECT has_table_privilege('dep_reader', 'public.accounts', 'SELECT') || ' ' || has_table_privilege('dep_reader', 'public.accounts', 'INSERT') || ' ' ||
			has_column_privilege('dep_reader', 'public.accounts', 'balance', 'UPDATE') || ' ' || has_column_privilege('dep_reader', 'public.accounts', 'email', 'UPDATE')`,
		"true false true false")
	d.expect("sequence privileges of dep_writer",
		`SELECT has_sequence_privilege('dep_writer', pg_get_serial_sequence('public.accounts', 'id'), 'USAGE') || ' ' ||
			has_sequence_privilege('dep_writer', pg_get_serial_sequence('public.accounts', 'seq_no'), 'USAGE')`, "true true")
	wantEU := d.str(`SELECT count(*) FROM accounts WHERE region = 'eu'`)
	if wantEU == "0" || wantEU == d.str(`SELECT count(*) FROM accounts`) {
		t.Fatalf("test setup: %s eu rows", wantEU)
	}
	func() {
		tx, err := d.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		mustExec(t, tx, "SET LOCAL ROLE dep_reader")
		if got := queryStringOn(t, tx, `SELECT count(*) || ' ' || count(*) FILTER (WHERE region = 'eu') FROM accounts`); got != wantEU+" "+wantEU {
			t.Errorf("rows dep_reader sees (all, eu) = %s; the policy shows it the %s eu rows only", got, wantEU)
		}
		depExpectSQLState(t, tx, "dep_reader inserting", "42501", `INSERT INTO accounts (parent_id, email, region) VALUES (1, 'reader@example.com', 'eu')`)
	}()

	// No osc leftovers.
	d.expect("the shadow table", `SELECT to_regclass('public._accounts_new') IS NULL`, "true")
	d.expect("osc publications", `SELECT count(*) FROM pg_publication WHERE pubname LIKE 'osc\_%'`, "0")
	d.expect("osc replication slots", `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'osc\_%' AND database = current_database()`, "0")
	d.expect("_accounts_old in publications", `SELECT count(*) FROM pg_publication_rel WHERE prrelid = '_accounts_old'::regclass`, "0")

	// Nothing depends on the old table any more: it drops without
	// CASCADE, and the new table works on without it.
	d.exec(`DROP TABLE _accounts_old`)
	if err := conn.QueryRowContext(ctx, `INSERT INTO accounts (parent_id, email, region) VALUES (4, 'last@example.com', 'eu') RETURNING id, seq_no`).Scan(&id, &seqNo); err != nil {
		t.Fatalf("inserting after dropping _accounts_old: %v", err)
	}
	if id <= maxIDNow || seqNo <= maxSeqNow {
		t.Errorf("after dropping _accounts_old an insert got id %d, seq_no %d", id, seqNo)
	}
	d.expect("the last row through the views", `SELECT count(*) FROM eu_account_emails WHERE id = $1`, "1", id)
}

// TestDependentsRefused: what the cut-over could not carry over is
// refused before anything is created.
func TestDependentsRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup []string
		alter string
		exit  int
		want  string // in the error
	}{
		{
			name:  "materialized_view",
			setup: []string{`CREATE MATERIALIZED VIEW account_regions AS SELECT region, count(*) AS n FROM accounts GROUP BY region`},
			alter: `ADD COLUMN note text`, exit: migration.ExitRefused, want: "materialized view public.account_regions",
		},
		{
			name:  "rule",
			setup: []string{`CREATE RULE accounts_keep AS ON DELETE TO accounts DO INSTEAD NOTHING`},
			alter: `ADD COLUMN note text`, exit: migration.ExitRefused, want: "rule accounts_keep",
		},
		{
			name:  "drop_column_a_view_uses",
			setup: []string{`CREATE VIEW account_emails AS SELECT id, email FROM accounts`},
			alter: `DROP COLUMN email`, exit: migration.ExitRefused, want: "view public.account_emails",
		},
		{
			name:  "drop_primary_key_by_name",
			alter: `DROP CONSTRAINT accounts_pkey`, exit: migration.ExitUsage, want: "with a plain ALTER TABLE",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := depNewEnv(t, false)
			d.exec(`CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL, region text NOT NULL)`)
			d.exec(`INSERT INTO accounts (email, region) SELECT 'u' || g, 'eu' FROM generate_series(1, 100) g`)
			for _, s := range tc.setup {
				d.exec(s)
			}
			state := `SELECT (SELECT string_agg(relname || ':' || relkind::text, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace) || ' | ' ||
				(SELECT count(*) FROM pg_publication) || ' publications | ' ||
				(SELECT count(*) FROM pg_replication_slots WHERE database = current_database()) || ' slots | ' ||
				(SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'public.accounts'::regclass AND attnum > 0 AND NOT attisdropped) || ' | ' ||
				(SELECT count(*) FROM accounts)`
			before := d.str(state)

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			began := time.Now()
			res, err := migration.Run(ctx, d.options(tc.alter))
			took := time.Since(began)
			if got := migration.ExitCode(err); got != tc.exit || res == nil || res.Applied {
				t.Fatalf("ALTER %q: exit code %d (want %d), result %+v, error: %v", tc.alter, got, tc.exit, res, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not name %q: %v", tc.want, err)
			}
			if after := d.str(state); after != before {
				t.Errorf("the refused run changed the database:\nbefore: %s\nafter:  %s", before, after)
			}
			t.Logf("refused in %v: %v", took, err)
		})
	}
}
