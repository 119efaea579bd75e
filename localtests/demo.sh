#!/usr/bin/env bash
# Runs real demo migrations on a fresh machine: installs MariaDB and
# PostgreSQL 15 if needed, starts throwaway servers (MariaDB primary +
# replica, PostgreSQL primary + standby), loads a 200,000-row table in each,
# and runs osc --execute on it while a load generator writes to the table.
# Prints osc's progress, then the final table. Stops everything it started.
#
#   bash localtests/demo.sh [ROWS]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
SERVERS="$ROOT/localtests/servers.sh"
ROWS=${1:-200000}
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

echo "==> installing MariaDB and PostgreSQL (if missing)"
bash "$SERVERS" install
DIR=$(mktemp -d "${TMPDIR:-/tmp}/osc-demo.XXXXXX")
LOADPID=
cleanup() {
	[ -n "$LOADPID" ] && kill "$LOADPID" 2>/dev/null || true
	echo "==> stopping the demo servers"
	bash "$SERVERS" stop "$DIR" || true
}
trap cleanup EXIT

echo "==> building osc"
go build -o "$DIR/osc" ./cmd/osc
go build -o "$DIR/demoload" ./localtests/demoload
echo "==> starting MariaDB primary + replica, PostgreSQL primary + standby"
OSC_SERVERS_WATCH_PID=$$ bash "$SERVERS" start "$DIR"
set -a
. "$DIR/env"
set +a
CLIENT=$(command -v mariadb || command -v mysql)
sql() { "$CLIENT" -h127.0.0.1 -P"$OSC_TEST_MYSQL_PORT" -u"$OSC_TEST_MYSQL_USER" -p"$OSC_TEST_MYSQL_PASSWORD" "$@"; }

echo "==> loading demo.orders with $ROWS rows"
sql -e "CREATE DATABASE demo"
sql demo -e "CREATE TABLE orders (
	id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
	customer_id INT NOT NULL,
	amount INT NOT NULL,
	status VARCHAR(16) NOT NULL,
	created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB"
sql demo -e "INSERT INTO orders (customer_id, amount, status)
	SELECT seq % 10000, seq % 100000, ELT(1 + seq % 3, 'new', 'paid', 'shipped') FROM seq_1_to_${ROWS}; ANALYZE TABLE orders" >/dev/null
sql demo -e "SHOW CREATE TABLE orders\G"

echo "==> starting a load generator (random inserts, updates, deletes)"
"$DIR/demoload" -driver mysql -dsn "$OSC_TEST_MYSQL_USER:$OSC_TEST_MYSQL_PASSWORD@tcp(127.0.0.1:$OSC_TEST_MYSQL_PORT)/demo" -table orders -rate 200 &
LOADPID=$!

ALTER="ADD COLUMN note VARCHAR(64) NOT NULL DEFAULT '', MODIFY amount BIGINT NOT NULL, ADD INDEX idx_customer (customer_id)"
echo "==> dry run: osc --alter \"$ALTER\""
OSC_PASSWORD=$OSC_TEST_MYSQL_PASSWORD "$DIR/osc" --host 127.0.0.1 --port "$OSC_TEST_MYSQL_PORT" --user "$OSC_TEST_MYSQL_USER" \
	--database demo --table orders --alter "$ALTER"
echo "==> osc --execute"
OSC_PASSWORD=$OSC_TEST_MYSQL_PASSWORD "$DIR/osc" --host 127.0.0.1 --port "$OSC_TEST_MYSQL_PORT" --user "$OSC_TEST_MYSQL_USER" \
	--database demo --table orders --alter "$ALTER" --execute --chunk-size 2000 --status-interval 300ms
kill "$LOADPID" && wait "$LOADPID" || true
LOADPID=

echo "==> the final table"
sql demo -e "SHOW CREATE TABLE orders\G"
sql demo -e "SELECT COUNT(*) AS rows_now FROM orders; SELECT * FROM orders ORDER BY id DESC LIMIT 5; SHOW TABLES"

echo
echo "==> PostgreSQL: loading demo.public.orders with $ROWS rows"
PSQL=$(command -v psql || echo /usr/lib/postgresql/15/bin/psql)
psql_() { PGPASSWORD=$OSC_TEST_PG_PASSWORD "$PSQL" -X -q -h 127.0.0.1 -p "$OSC_TEST_PG_PORT" -U "$OSC_TEST_PG_USER" "$@"; }
psql_ -d postgres -c "CREATE DATABASE demo"
psql_ -d demo -c "CREATE TABLE orders (
	id bigserial PRIMARY KEY,
	customer_id int NOT NULL,
	amount int NOT NULL,
	status text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
)" -c "CREATE VIEW paid_orders AS SELECT id, amount FROM orders WHERE status = 'paid'" \
	-c "INSERT INTO orders (customer_id, amount, status)
	SELECT g % 10000, g % 100000, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3] FROM generate_series(1, ${ROWS}) g" -c "ANALYZE orders"
psql_ -d demo -c "\d orders"

echo "==> starting a load generator on PostgreSQL"
"$DIR/demoload" -driver postgres -dsn "postgres://$OSC_TEST_PG_USER:$OSC_TEST_PG_PASSWORD@127.0.0.1:$OSC_TEST_PG_PORT/demo?sslmode=disable" -table orders -rate 200 &
LOADPID=$!

PGALTER="ADD COLUMN note text NOT NULL DEFAULT '', ALTER COLUMN amount TYPE bigint, ADD CONSTRAINT amount_positive CHECK (amount >= 0)"
echo "==> dry run: osc --driver postgres --alter \"$PGALTER\""
OSC_PASSWORD=$OSC_TEST_PG_PASSWORD "$DIR/osc" --driver postgres --host 127.0.0.1 --port "$OSC_TEST_PG_PORT" --user "$OSC_TEST_PG_USER" \
	--database demo --table orders --alter "$PGALTER"
echo "==> osc --driver postgres --execute"
OSC_PASSWORD=$OSC_TEST_PG_PASSWORD "$DIR/osc" --driver postgres --host 127.0.0.1 --port "$OSC_TEST_PG_PORT" --user "$OSC_TEST_PG_USER" \
	--database demo --table orders --alter "$PGALTER" --execute --chunk-size 5000 --status-interval 300ms
kill "$LOADPID" && wait "$LOADPID" || true
LOADPID=

echo "==> the final table"
psql_ -d demo -c "\d orders" -c "SELECT count(*) AS rows_now FROM orders" -c "SELECT * FROM paid_orders ORDER BY id DESC LIMIT 3" -c "\dt"
